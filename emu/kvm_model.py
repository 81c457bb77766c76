"""The modelled KVM: what happens after a guest HVC or SMC has trapped to EL2.

``trap.py`` turns Unicorn's interrupt into a ``Call`` carrying the ESR_EL2 syndrome and
the guest's x0..x5. ``KvmModel.handle_hvc`` / ``handle_smc`` then follow
arch/arm64/kvm/handle_exit.c and hypercalls.c for the selected profile: either they
answer in-kernel (``call.ret`` holds the values for x0.. and the guest resumes) or they
return an exit for userspace. Everything that differs between kernels is in
``emu.profiles``; this module is the pipeline they plug into.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from emu.abi import smccc
from emu.abi.exits import KVM_HYPERCALL_EXIT_SMC, Exit, HypercallExit
from emu.smccc.psci import Psci

if TYPE_CHECKING:
    from emu.kvm.vcpu import Vcpu
    from emu.kvm.vm import Vm

# ESR_ELx layout (arch/arm64/include/asm/esr.h, ref 1.1).
ESR_ELx_EC_SHIFT = 26
ESR_ELx_IL = 1 << 25
ESR_ELx_xVC_IMM_MASK = 0xFFFF
ESR_ELx_EC_HVC64 = 0x16
ESR_ELx_EC_SMC64 = 0x17


class Conduit(str, Enum):
    HVC = "hvc"
    SMC = "smc"


_SMC = Conduit.SMC


def esr_for(conduit: Conduit, imm16: int) -> int:
    """The ESR_EL2 an A64 HVC/SMC #imm16 produces: EC | IL (32-bit insn) | ISS = imm16."""
    ec = ESR_ELx_EC_HVC64 if conduit is Conduit.HVC else ESR_ELx_EC_SMC64
    return (ec << ESR_ELx_EC_SHIFT) | ESR_ELx_IL | (imm16 & ESR_ELx_xVC_IMM_MASK)


class Call:
    """One trapped hypercall as KVM's handlers see it.

    ``args`` is the tuple x0..x5 at the trap; handlers read arguments from it and set the answer
    with ``answer``. ``ret`` is the tuple of values for x0, x1, ... that the trap path
    writes back (``None``: registers untouched, as for an exit to userspace).
    """

    __slots__ = ("vm", "vcpu", "conduit", "esr", "pc", "args", "fid", "ret")

    def __init__(self, vm: Vm, vcpu: Vcpu, conduit: Conduit, esr: int, pc: int,
                 args: tuple[int, ...]) -> None:
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


class KvmModel:
    """KVM's HVC/SMC handling for one VM under one profile."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self.profile = vm.profile
        self.psci = Psci(self.profile)
        self._handlers = self.profile.handlers
        self._hvc_fast_path = self.profile.hvc_fast_path

    def handle_hvc(self, call: Call) -> Exit | None:
        """handle_hvc(): the EL2 workaround fast path, then the SMCCC function switch
        (kvm_hvc_call_handler), then the profile's route for what the switch lacks."""
        fid = call.fid
        if fid in self._hvc_fast_path:
            # hyp-entry.S answers before any C handler, filter or bitmap: x0 = 0 and x1,
            # its scratch register, ends up 0 too; x2/x3 untouched (ref 1.4).
            call.ret = (0, 0)
            return None
        handler = self._handlers.get(fid)
        if handler is not None:
            handler(call)
            return None
        return self.profile.route_unhandled(self, call)

    def handle_smc(self, call: Call) -> Exit | None:
        """handle_smc(): a trapped SMC returns past itself (kvm_incr_pc), then profile policy.

        Unicorn already reports the PC after the SMC, which is where KVM's PC increment
        leaves the guest, so nothing is written to PC here.
        """
        return self.profile.handle_smc(self, call)

    # -- building blocks the profiles combine ------------------------------------------

    def deny(self, call: Call) -> None:
        """SMCCC_RET_NOT_SUPPORTED with x1..x3 zeroed."""
        call.answer(smccc.SmcccRet.NOT_SUPPORTED)

    def exit_hypercall(self, call: Call, nr: int, args: tuple[int, ...]) -> HypercallExit:
        """KVM_EXIT_HYPERCALL; registers are left for userspace to fill in."""
        flags = KVM_HYPERCALL_EXIT_SMC if call.conduit is _SMC else 0
        return HypercallExit(call.vcpu.id, nr, args, 0, flags)
