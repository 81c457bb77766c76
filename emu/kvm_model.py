"""The modelled KVM: what happens after a guest HVC or SMC has trapped to EL2.

``trap.py`` turns Unicorn's interrupt into a ``Call`` carrying the ESR_EL2 syndrome and
the guest's x0..x5. ``KvmModel.handle_hvc`` / ``handle_smc`` then follow
arch/arm64/kvm/handle_exit.c and hypercalls.c for the selected profile: either they
answer in-kernel (``call.ret`` holds the values for x0.. and the guest resumes) or they
return an exit for userspace. Everything that differs between kernels is in
``emu.profiles``; this module is the pipeline they plug into.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emu.abi import smccc
from emu.abi.exits import KVM_HYPERCALL_EXIT_SMC, Exit, HypercallExit
from emu.smccc.call import Call, Conduit
from emu.smccc.psci import Psci

if TYPE_CHECKING:
    from emu.kvm.profiles import ModelVm

_SMC = Conduit.SMC


class KvmModel:
    """KVM's HVC/SMC handling for one VM under one profile."""

    def __init__(self, vm: ModelVm) -> None:
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

    # -- snapshots ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The model's own state (PSCI keeps its state on the vCPUs and the VM)."""
        return {}

    def restore(self, data: dict[str, Any]) -> None:
        pass

    # -- building blocks the profiles combine ------------------------------------------

    def deny(self, call: Call) -> None:
        """SMCCC_RET_NOT_SUPPORTED with x1..x3 zeroed."""
        call.answer(smccc.SmcccRet.NOT_SUPPORTED)

    def exit_hypercall(self, call: Call, nr: int, args: tuple[int, ...]) -> HypercallExit:
        """KVM_EXIT_HYPERCALL; registers are left for userspace to fill in."""
        flags = KVM_HYPERCALL_EXIT_SMC if call.conduit is _SMC else 0
        return HypercallExit(call.vcpu.id, nr, args, 0, flags)
