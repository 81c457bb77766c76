"""Paravirtualised stolen time, DEN0057A (Standard Hypervisor service, OEN 5).

A vCPU gets a stolen-time structure once userspace sets its IPA (vCPU attribute
KVM_ARM_VCPU_PVTIME_IPA). emu runs vCPUs on one host thread and never preempts a vCPU
behind its back, so stolen time stays 0; the structure is still laid out as KVM does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.abi import smccc

if TYPE_CHECKING:
    from emu.smccc.call import Call

# struct pvclock_vcpu_stolen_time: u32 revision, u32 attributes, u64 stolen_time, pad to 64.
STRUCT_SIZE = 64
IPA_ALIGN = 64


def features(call: Call) -> None:
    """PV_TIME_FEATURES(x1): SUCCESS for the two PV-time calls once an IPA is set (ref 3.2)."""
    feature = call.args[1] & smccc.MASK32  # kvm_hypercall_pv_features reads a u32
    ok = feature in (smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST) and call.vcpu.pvtime_ipa is not None
    call.answer(smccc.SmcccRet.SUCCESS if ok else smccc.SmcccRet.NOT_SUPPORTED)


def stolen_time(call: Call) -> None:
    """PV_TIME_ST: x0 = IPA of this vCPU's structure (zeroed, revision 0), or NOT_SUPPORTED."""
    ipa = call.vcpu.pvtime_ipa
    if ipa is None:
        call.answer(smccc.SmcccRet.NOT_SUPPORTED)
        return
    call.vm.write_memory(ipa, bytes(STRUCT_SIZE))
    call.answer(ipa)
