"""PSCI (Arm DEN0022) as KVM implements it in arch/arm64/kvm/psci.c.

The functions here decide results and power-state changes; they never touch Unicorn.
They act on a ``Call`` (the trapped hypercall, see ``kvm_model``) and on the VM's vCPU
set through a small interface: ``vcpu.mpidr``, ``vcpu.mp_state``, ``vcpu.power_off()``,
``vcpu.wait_for_interrupt()``, ``vcpu.psci_reset(...)`` and ``vm.vcpus``. The same
class serves the VMM's userspace PSCI (``emu.user_psci``) with a policy that may
refuse CPU_ON. Rule numbers ("ref 4.4") point at the KVM hypercall reference.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Protocol

from emu.abi import smccc
from emu.abi.exits import MpState, SystemEvent, SystemEventExit, Wait
from emu.abi.trace import PsciEvent

if TYPE_CHECKING:
    from emu.smccc.call import Call, ServiceVcpu


class PsciRet(IntEnum):
    """PSCI return codes, DEN0022 5.2.2 / include/uapi/linux/psci.h."""

    SUCCESS = 0
    NOT_SUPPORTED = -1
    INVALID_PARAMS = -2
    DENIED = -3
    ALREADY_ON = -4
    ON_PENDING = -5
    INTERNAL_FAILURE = -6
    NOT_PRESENT = -7
    DISABLED = -8
    INVALID_ADDRESS = -9


class AffinityState(IntEnum):
    """AFFINITY_INFO results (DEN0022 5.8)."""

    ON = 0
    OFF = 1
    ON_PENDING = 2


def version(major: int, minor: int) -> int:
    """PSCI version encoding: major<<16 | minor (ref 4.1)."""
    return (major << 16) | minor


PSCI_0_1 = version(0, 1)
PSCI_0_2 = version(0, 2)
PSCI_1_0 = version(1, 0)
PSCI_1_1 = version(1, 1)
PSCI_1_2 = version(1, 2)
PSCI_1_3 = version(1, 3)

# KVM's private PSCI 0.1 ids (not SMCCC-shaped, ref 2.2).
KVM_PSCI_FN_BASE = 0x95C1_BA5E
KVM_PSCI_CPU_SUSPEND = KVM_PSCI_FN_BASE + 0
KVM_PSCI_CPU_OFF = KVM_PSCI_FN_BASE + 1
KVM_PSCI_CPU_ON = KVM_PSCI_FN_BASE + 2
KVM_PSCI_MIGRATE = KVM_PSCI_FN_BASE + 3


def fn32(n: int) -> int:
    return 0x8400_0000 + n


def fn64(n: int) -> int:
    return 0xC400_0000 + n


PSCI_VERSION = fn32(0x0)
CPU_SUSPEND, CPU_SUSPEND64 = fn32(0x1), fn64(0x1)
CPU_OFF = fn32(0x2)
CPU_ON, CPU_ON64 = fn32(0x3), fn64(0x3)
AFFINITY_INFO, AFFINITY_INFO64 = fn32(0x4), fn64(0x4)
MIGRATE, MIGRATE64 = fn32(0x5), fn64(0x5)
MIGRATE_INFO_TYPE = fn32(0x6)
MIGRATE_INFO_UP_CPU, MIGRATE_INFO_UP_CPU64 = fn32(0x7), fn64(0x7)
SYSTEM_OFF = fn32(0x8)
SYSTEM_RESET = fn32(0x9)
PSCI_FEATURES = fn32(0xA)
CPU_FREEZE = fn32(0xB)
CPU_DEFAULT_SUSPEND, CPU_DEFAULT_SUSPEND64 = fn32(0xC), fn64(0xC)
NODE_HW_STATE, NODE_HW_STATE64 = fn32(0xD), fn64(0xD)
SYSTEM_SUSPEND, SYSTEM_SUSPEND64 = fn32(0xE), fn64(0xE)
PSCI_SET_SUSPEND_MODE = fn32(0xF)
PSCI_STAT_RESIDENCY, PSCI_STAT_RESIDENCY64 = fn32(0x10), fn64(0x10)
PSCI_STAT_COUNT, PSCI_STAT_COUNT64 = fn32(0x11), fn64(0x11)
SYSTEM_RESET2, SYSTEM_RESET2_64 = fn32(0x12), fn64(0x12)
MEM_PROTECT = fn32(0x13)
MEM_PROTECT_CHECK_RANGE, MEM_PROTECT_CHECK_RANGE64 = fn32(0x14), fn64(0x14)
SYSTEM_OFF2, SYSTEM_OFF2_64 = fn32(0x15), fn64(0x15)

# SYSTEM_RESET2 types and SYSTEM_OFF2 types (DEN0022 1.1 / 1.3).
SYSTEM_WARM_RESET = 0
RESET_TYPE_VENDOR_START = 0x8000_0000
HIBERNATE_OFF = 1 << 0
# kvm_run.system_event.data[0] flags (ref 5.5).
RESET_FLAG_PSCI_RESET2 = 1
SHUTDOWN_FLAG_PSCI_OFF2 = 1

# MIGRATE_INFO_TYPE answer: Trusted OS is MP or absent (PSCI_0_2_TOS_MP, ref 4.4).
PSCI_0_2_TOS_MP = 2

# MPIDR affinity fields Aff3[39:32] and Aff2..Aff0[23:0] (MPIDR_HWID_BITMASK, ref 4.4).
MPIDR_HWID_BITMASK = 0xFF_00FF_FFFF

_BASE_NAMES = {
    0x0: "VERSION",
    0x1: "CPU_SUSPEND",
    0x2: "CPU_OFF",
    0x3: "CPU_ON",
    0x4: "AFFINITY_INFO",
    0x5: "MIGRATE",
    0x6: "MIGRATE_INFO_TYPE",
    0x7: "MIGRATE_INFO_UP_CPU",
    0x8: "SYSTEM_OFF",
    0x9: "SYSTEM_RESET",
    0xA: "FEATURES",
    0xB: "CPU_FREEZE",
    0xC: "CPU_DEFAULT_SUSPEND",
    0xD: "NODE_HW_STATE",
    0xE: "SYSTEM_SUSPEND",
    0xF: "SET_SUSPEND_MODE",
    0x10: "STAT_RESIDENCY",
    0x11: "STAT_COUNT",
    0x12: "SYSTEM_RESET2",
    0x13: "MEM_PROTECT",
    0x14: "MEM_PROTECT_CHECK_RANGE",
    0x15: "SYSTEM_OFF2",
}

NAMES: dict[int, str] = {}
for _n, _s in _BASE_NAMES.items():
    NAMES[fn32(_n)] = f"PSCI_{_s}"
    NAMES[fn64(_n)] = f"PSCI_{_s}_64" if _s[-1].isdigit() else f"PSCI_{_s}64"
NAMES.update(
    {
        KVM_PSCI_CPU_SUSPEND: "KVM_PSCI_0_1_CPU_SUSPEND",
        KVM_PSCI_CPU_OFF: "KVM_PSCI_0_1_CPU_OFF",
        KVM_PSCI_CPU_ON: "KVM_PSCI_0_1_CPU_ON",
        KVM_PSCI_MIGRATE: "KVM_PSCI_0_1_MIGRATE",
    }
)
smccc.register_names(NAMES)

# Functions a PSCI 1.0 KVM reports through PSCI_FEATURES (psci.c kvm_psci_1_x_call).
_FEATURES_1_0 = frozenset(
    {
        PSCI_VERSION,
        CPU_SUSPEND,
        CPU_SUSPEND64,
        CPU_OFF,
        CPU_ON,
        CPU_ON64,
        AFFINITY_INFO,
        AFFINITY_INFO64,
        MIGRATE_INFO_TYPE,
        SYSTEM_OFF,
        SYSTEM_RESET,
        PSCI_FEATURES,
        smccc.SMCCC_VERSION,
    }
)

# What KVM's in-kernel PSCI implements: 1.0 (everything PSCI_FEATURES reports but the
# SMCCC call) and, for vCPUs without KVM_ARM_VCPU_PSCI_0_2, the 0.1 ids.
IMPLEMENTED_1_0 = _FEATURES_1_0 - {smccc.SMCCC_VERSION}
IMPLEMENTED_0_1 = frozenset({KVM_PSCI_CPU_OFF, KVM_PSCI_CPU_ON})

NOT_SUPPORTED = smccc.u64(PsciRet.NOT_SUPPORTED)


def affinity_mask(level: int) -> int:
    """Affinity bits compared at ``level`` (psci_affinity_mask); 0 for level > 3."""
    if level > 3:
        return 0
    return MPIDR_HWID_BITMASK & ~((1 << (8 * level)) - 1)


class CpuOnPolicy(Protocol):
    """A VMM's say over CPU_ON: None lets it proceed, a ``PsciRet`` refuses it (e.g. DENIED)."""

    def __call__(self, caller: ServiceVcpu, target: ServiceVcpu | None) -> int | None: ...


class Psci:
    """PSCI as KVM implements it, for one modelled kernel.

    ``profile`` supplies the version-independent knobs (ref 4.4 history): whether
    reserved affinity bits are rejected (v5.15+) or masked (before), and the
    ``system_event`` shape. The negotiated version comes from the calling vCPU's VM.
    ``cpu_on_policy`` and ``handled`` are for the userspace implementation.
    """

    def __init__(self, profile, cpu_on_policy: CpuOnPolicy | None = None, handled: str = "kernel") -> None:
        self.profile = profile
        self.cpu_on_policy = cpu_on_policy
        self.handled = handled

    # -- entry point ---------------------------------------------------------------

    def call(self, call: Call) -> SystemEventExit | None:
        """Handle a PSCI function id for the calling vCPU; return an exit or None.

        Every call is recorded in ``vm.psci_events`` with the power changes it caused.
        """
        vm = call.vm
        mark = len(vm.power_events)
        ver = vm.psci_version_for(call.vcpu)
        exit_ = None
        if ver == PSCI_0_1:
            self._call_0_1(call)
        else:
            exit_ = self._call_0_2_plus(call, ver)
        vm.trace.add(
            PsciEvent(
                vm.clock.ns,
                call.vcpu.id,
                call.fid,
                call.args[1:4],
                call.ret[0] if call.ret else None,
                tuple(vm.power_events[mark:]),
                self.handled,
            )
        )
        return exit_

    # -- PSCI 0.1: KVM-private ids --------------------------------------------------

    def _call_0_1(self, call: Call) -> None:
        fid = call.fid
        if fid == KVM_PSCI_CPU_OFF:
            call.vcpu.power_off()
            call.answer(PsciRet.SUCCESS)
        elif fid == KVM_PSCI_CPU_ON:
            call.answer(self._cpu_on(call, psci_0_1=True))
        else:
            call.answer(PsciRet.NOT_SUPPORTED)
        return None

    # -- PSCI 0.2 and 1.x ------------------------------------------------------------

    def _call_0_2_plus(self, call: Call, ver: int) -> SystemEventExit | None:
        fid = call.fid
        minor = ver & 0xFFFF if ver >= PSCI_1_0 else None
        if fid == PSCI_VERSION:
            call.answer(ver)
        elif fid == PSCI_FEATURES and minor is not None:
            call.answer(self._features(call, minor))
        elif fid in (CPU_SUSPEND, CPU_SUSPEND64):
            # Implemented as WFI; power-down requests are treated as standby (ref 4.4).
            call.answer(PsciRet.SUCCESS)
            if not call.vcpu.timer_fired():
                call.vcpu.wait_for_interrupt(Wait.CPU_SUSPEND)
        elif fid == CPU_OFF:
            call.vcpu.power_off()
            call.answer(PsciRet.SUCCESS)
        elif fid in (CPU_ON, CPU_ON64):
            if fid == CPU_ON:
                call.narrow_args()  # SMC32: upper halves of x1..x3 zeroed (ref 4.5)
            call.answer(self._cpu_on(call, psci_0_1=False))
        elif fid in (AFFINITY_INFO, AFFINITY_INFO64):
            if fid == AFFINITY_INFO:
                call.narrow_args()
            call.answer(self._affinity_info(call))
        elif fid == MIGRATE_INFO_TYPE:
            call.answer(PSCI_0_2_TOS_MP)
        elif fid == SYSTEM_OFF:
            return self._system_event(call, SystemEvent.SHUTDOWN)
        elif fid == SYSTEM_RESET:
            return self._system_event(call, SystemEvent.RESET)
        elif minor is not None and fid in (SYSTEM_SUSPEND, SYSTEM_SUSPEND64):
            if fid == SYSTEM_SUSPEND:
                call.narrow_args()
            if call.vm.system_suspend_enabled:
                # v5.19: straight to userspace, no vCPU state or register changed (ref 4.4).
                return SystemEventExit(vcpu=call.vcpu.id, type=SystemEvent.SUSPEND, ndata=0, data=())
            call.answer(PsciRet.NOT_SUPPORTED)
        elif minor is not None and fid in (SYSTEM_RESET2, SYSTEM_RESET2_64):
            if fid == SYSTEM_RESET2:
                call.narrow_args()
            if minor < 1:
                call.answer(PsciRet.NOT_SUPPORTED)
                return None
            reset_type = call.args[1] & smccc.MASK32
            if reset_type == SYSTEM_WARM_RESET or reset_type >= RESET_TYPE_VENDOR_START:
                # Only x0 is preloaded, so userspace can read reset_type and cookie (ref 8.4).
                return self._system_event(call, SystemEvent.RESET, RESET_FLAG_PSCI_RESET2, only_x0=True)
            call.answer(PsciRet.INVALID_PARAMS)
        elif minor is not None and fid in (SYSTEM_OFF2, SYSTEM_OFF2_64):
            if fid == SYSTEM_OFF2:
                call.narrow_args()
            if minor < 3:
                call.answer(PsciRet.NOT_SUPPORTED)
            elif call.args[1] & smccc.MASK32 not in (0, HIBERNATE_OFF) or call.args[2]:
                # Type 0 is accepted as hibernate too (PSCI 1.3 issue F.b). The type is
                # read into kvm_psci_1_x_call's ``u32 arg``; x2 is compared whole.
                call.answer(PsciRet.INVALID_PARAMS)
            else:
                return self._system_event(call, SystemEvent.SHUTDOWN, SHUTDOWN_FLAG_PSCI_OFF2)
        else:
            call.answer(PsciRet.NOT_SUPPORTED)
        return None

    def _features(self, call: Call, minor: int) -> int:
        """PSCI_FEATURES(fid): what this KVM implements at this minor version (ref 4.4)."""
        feature = call.args[1] & smccc.MASK32
        if feature in _FEATURES_1_0:
            return PsciRet.SUCCESS
        if feature in (SYSTEM_SUSPEND, SYSTEM_SUSPEND64) and call.vm.system_suspend_enabled:
            return PsciRet.SUCCESS
        if feature in (SYSTEM_RESET2, SYSTEM_RESET2_64) and minor >= 1:
            return PsciRet.SUCCESS
        if feature in (SYSTEM_OFF2, SYSTEM_OFF2_64) and minor >= 3:
            return HIBERNATE_OFF  # a bitmask of the supported off types
        return PsciRet.NOT_SUPPORTED

    def _target_affinity(self, call: Call, value: int) -> int | None:
        """Apply the profile's reserved-affinity-bits rule; None means INVALID_PARAMS."""
        if value & ~MPIDR_HWID_BITMASK and self.profile.psci_reject_reserved_affinity:
            return None  # v5.15 "Enforce reserved bits for PSCI target affinities"
        return value & MPIDR_HWID_BITMASK

    def _cpu_on(self, call: Call, *, psci_0_1: bool) -> int:
        target_aff = self._target_affinity(call, call.args[1])
        if target_aff is None:
            return PsciRet.INVALID_PARAMS
        target = call.vm.vcpu_by_affinity(target_aff)
        if self.cpu_on_policy is not None:
            verdict = self.cpu_on_policy(call.vcpu, target)
            if verdict is not None:
                return verdict
        if target is None:
            return PsciRet.INVALID_PARAMS
        if target.mp_state != MpState.STOPPED:
            # A suspended or WFI-blocked target counts as on; ON_PENDING is never used.
            return PsciRet.INVALID_PARAMS if psci_0_1 else PsciRet.ALREADY_ON
        target.psci_reset(
            entry=call.args[2], context_id=call.args[3], big_endian=call.vcpu.is_big_endian(), by=call.vcpu
        )
        return PsciRet.SUCCESS

    def _affinity_info(self, call: Call) -> int:
        mask = affinity_mask(call.args[2])
        if not mask:
            return PsciRet.INVALID_PARAMS
        target = self._target_affinity(call, call.args[1])
        if target is None:
            return PsciRet.INVALID_PARAMS
        target &= mask
        matched = False
        for vcpu in call.vm.vcpus:
            if (vcpu.mpidr & mask) == target:
                matched = True
                if vcpu.mp_state != MpState.STOPPED:
                    return AffinityState.ON
        return AffinityState.OFF if matched else PsciRet.INVALID_PARAMS

    def _system_event(
        self, call: Call, kind: SystemEvent, flags: int = 0, only_x0: bool = False
    ) -> SystemEventExit:
        """SYSTEM_OFF/RESET (and RESET2/OFF2): stop every vCPU, preload x0 =
        INTERNAL_FAILURE (x1..x3 zeroed unless ``only_x0``), exit (ref 4.4)."""
        for vcpu in call.vm.vcpus:
            vcpu.power_off(by=call.vcpu)
        if only_x0:
            call.ret = (smccc.u64(PsciRet.INTERNAL_FAILURE),)
        else:
            call.answer(PsciRet.INTERNAL_FAILURE)
        return self.profile.system_event_exit(call.vcpu.id, kind, flags)
