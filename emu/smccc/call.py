"""One trapped SMCCC call as the firmware services see it, and what they may touch.

The trap path (``emu.trap``) builds a ``Call`` from the ESR_EL2 syndrome and x0..x5; the
KVM model routes it to a service (``psci``, ``trng``, ...), which reads its arguments and
sets the answer. Services reach the VM and its vCPUs only through the ``ServiceVm`` and
``ServiceVcpu`` interfaces below, which the KVM layer implements: this layer knows no
KVM internals.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from enum import Enum
from typing import Protocol

from emu.abi import smccc
from emu.abi.exits import MpState, SystemEvent, SystemEventExit, Wait
from emu.abi.trace import PowerEvent, Trace
from emu.arm.clock import VirtualClock
from emu.arm.exceptions import (
    ESR_ELx_EC_HVC64,
    ESR_ELx_EC_SHIFT,
    ESR_ELx_EC_SMC64,
    ESR_ELx_IL,
    ESR_ELx_xVC_IMM_MASK,
)
from emu.arm.host import HostCpu
from emu.arm.regs import RegisterFile


class Conduit(str, Enum):
    HVC = "hvc"
    SMC = "smc"


def esr_for(conduit: Conduit, imm16: int) -> int:
    """The ESR_EL2 an A64 HVC/SMC #imm16 produces: EC | IL (32-bit insn) | ISS = imm16."""
    ec = ESR_ELx_EC_HVC64 if conduit is Conduit.HVC else ESR_ELx_EC_SMC64
    return (ec << ESR_ELx_EC_SHIFT) | ESR_ELx_IL | (imm16 & ESR_ELx_xVC_IMM_MASK)


class ServiceVcpu(Protocol):
    """The calling vCPU, or the target of a PSCI call."""

    id: int
    mpidr: int
    regs: RegisterFile
    mp_state: MpState

    @property
    def pvtime_ipa(self) -> int | None: ...

    psci_0_2: bool

    def is_big_endian(self) -> bool: ...

    def power_off(self, by: ServiceVcpu | None = None) -> None: ...

    def psci_reset(
        self, entry: int, context_id: int, big_endian: bool, by: ServiceVcpu | None = None
    ) -> None: ...

    def timer_fired(self) -> bool: ...

    def wait_for_interrupt(self, reason: Wait) -> None: ...


class ServiceProfile(Protocol):
    """The kernel-version knobs services consult."""

    @property
    def smccc_version(self) -> int: ...

    @property
    def has_workaround_3(self) -> bool: ...

    @property
    def has_pvtime(self) -> bool: ...

    @property
    def psci_reject_reserved_affinity(self) -> bool: ...

    def system_event_exit(self, vcpu_id: int, kind: SystemEvent, flags: int = 0) -> SystemEventExit: ...


class ServiceBitmaps(Protocol):
    """The VM's firmware bitmap registers (v5.19+; all supported bits set before)."""

    std_bmap: int
    std_hyp_bmap: int
    vendor_hyp_bmap: int


class ServiceVm(Protocol):
    """The VM a call was made in."""

    host: HostCpu
    clock: VirtualClock
    entropy: random.Random
    trace: Trace

    @property
    def fw_bitmaps(self) -> ServiceBitmaps: ...

    @property
    def system_suspend_enabled(self) -> bool: ...

    @property
    def profile(self) -> ServiceProfile: ...

    @property
    def vcpus(self) -> Sequence[ServiceVcpu]: ...

    @property
    def power_events(self) -> list[PowerEvent]: ...

    def psci_version_for(self, vcpu: ServiceVcpu) -> int: ...

    def vcpu_by_affinity(self, affinity: int) -> ServiceVcpu | None: ...

    def write_memory(self, address: int, data: bytes) -> None: ...


class Call:
    """One trapped hypercall as KVM's handlers see it.

    ``args`` is the tuple x0..x5 at the trap; handlers read arguments from it and set the answer
    with ``answer``. ``ret`` is the tuple of values for x0, x1, ... that the trap path
    writes back (``None``: registers untouched, as for an exit to userspace).
    """

    __slots__ = ("args", "conduit", "esr", "fid", "pc", "ret", "vcpu", "vm")

    def __init__(
        self, vm: ServiceVm, vcpu: ServiceVcpu, conduit: Conduit, esr: int, pc: int, args: tuple[int, ...]
    ) -> None:
        self.vm = vm
        self.vcpu = vcpu
        self.conduit = conduit
        self.esr = esr
        self.pc = pc
        self.args = args
        self.fid = args[0] & smccc.MASK32  # smccc_get_function(): w0 only
        self.ret: tuple[int, ...] | None = None

    @property
    def imm(self) -> int:
        """The immediate, read back from the syndrome as kvm_vcpu_hvc_get_imm() does."""
        return self.esr & ESR_ELx_xVC_IMM_MASK

    def answer(self, x0: int, x1: int = 0, x2: int = 0, x3: int = 0) -> None:
        """smccc_set_retval(): all four result registers, negative codes two's-complemented."""
        m = smccc.MASK64
        self.ret = (x0 & m, x1 & m, x2 & m, x3 & m)

    def narrow_args(self) -> None:
        """kvm_psci_narrow_to_32bit(): zero the upper halves of x1..x3 in the guest too."""
        m = smccc.MASK32
        a = self.args
        self.args = (a[0], a[1] & m, a[2] & m, a[3] & m, a[4], a[5])
        self.vcpu.regs.write_x(self.args[:4])
