"""KVM's Vendor-specific Hypervisor service (OEN 6): CALL_UID, KVM FEATURES, PTP_KVM (ref 2.6)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.abi import smccc

if TYPE_CHECKING:
    from emu.smccc.call import Call

ARM_SMCCC_KVM_FUNC_FEATURES = 0
ARM_SMCCC_KVM_FUNC_PTP = 1
# v5.13 reports a fixed bitmap: FEATURES | PTP (the VENDOR_HYP_BMAP register came in 5.19).
KVM_FEATURES_BITMAP = (1 << ARM_SMCCC_KVM_FUNC_FEATURES) | (1 << ARM_SMCCC_KVM_FUNC_PTP)

KVM_PTP_VIRT_COUNTER = 0
KVM_PTP_PHYS_COUNTER = 1


def call_uid(call: Call) -> None:
    call.answer(*smccc.KVM_UID_WORDS)


def kvm_features(call: Call) -> None:
    # VENDOR_HYP_BMAP since 5.19; its reset value is the fixed bitmap of 5.13.
    call.answer(call.vm.fw_bitmaps.vendor_hyp_bmap)


def ptp(call: Call) -> None:
    """PTP_KVM(x1 = counter): host realtime and counter sampled together (ptp_kvm.rst)."""
    clock = call.vm.clock
    if not call.vm.host.arch_counter_clocksource:
        call.answer(smccc.SmcccRet.NOT_SUPPORTED)
        return
    # kvm_ptp_get_time reads x1 into a u32.
    counter = call.args[1] & smccc.MASK32
    if counter == KVM_PTP_VIRT_COUNTER:
        cycles = clock.virtual_counter
    elif counter == KVM_PTP_PHYS_COUNTER:
        cycles = clock.physical_counter
    else:
        call.answer(smccc.SmcccRet.NOT_SUPPORTED)
        return
    real = clock.realtime_ns
    call.answer(real >> 32, real & smccc.MASK32, (cycles >> 32) & smccc.MASK32, cycles & smccc.MASK32)
