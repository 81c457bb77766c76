"""Arm Architecture calls (OEN 0) that KVM answers in C: SMCCC_VERSION, SMCCC_ARCH_FEATURES.

ARCH_WORKAROUND_1/2/3 over HVC never get here: KVM answers them in its EL2 vector
before any C code runs (ref 1.4), see ``KvmModel.handle_hvc``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.abi import smccc
from emu.arm.host import Mitigation

if TYPE_CHECKING:
    from emu.smccc.call import Call

RET_NOT_SUPPORTED = smccc.SmcccRet.NOT_SUPPORTED
RET_NOT_REQUIRED = smccc.SmcccRet.NOT_REQUIRED


def smccc_version(call: Call) -> None:
    call.answer(call.vm.profile.smccc_version)


def arch_features(call: Call) -> None:
    """SMCCC_ARCH_FEATURES(x1): which arch calls and workarounds exist (ref 3.4)."""
    # kvm_hvc_call_handler reads x1 into a ``u32 feature``: the upper half is ignored.
    feature = call.args[1] & smccc.MASK32
    host = call.vm.host
    profile = call.vm.profile
    if feature == smccc.SMCCC_ARCH_WORKAROUND_1:
        call.answer(_workaround_1_or_3(host.spectre_v2))
    elif feature == smccc.SMCCC_ARCH_WORKAROUND_2:
        call.answer(_workaround_2(host.spectre_v4, host.ssbs))
    elif feature == smccc.SMCCC_ARCH_WORKAROUND_3 and profile.has_workaround_3:
        call.answer(_workaround_1_or_3(host.spectre_bhb))
    elif feature == smccc.PV_TIME_FEATURES and profile.has_pvtime and call.vm.fw_bitmaps.std_hyp_bmap & 1:
        # Gated by STD_HYP_BMAP bit PV_TIME since 5.19 (always set before, ref 3.4).
        call.answer(smccc.SmcccRet.SUCCESS)
    else:
        call.answer(RET_NOT_SUPPORTED)


def _workaround_1_or_3(state: Mitigation) -> int:
    if state is Mitigation.MITIGATED:
        return smccc.SmcccRet.SUCCESS
    if state is Mitigation.UNAFFECTED:
        return smccc.SMCCC_ARCH_WORKAROUND_RET_UNAFFECTED
    return RET_NOT_SUPPORTED


def _workaround_2(state: Mitigation, ssbs: bool) -> int:
    # Mitigated with SSBS everywhere: no firmware call, the guest uses SSBS (hypercalls.c).
    if state is Mitigation.UNAFFECTED or (state is Mitigation.MITIGATED and not ssbs):
        return RET_NOT_REQUIRED
    return RET_NOT_SUPPORTED
