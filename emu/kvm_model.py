"""The modelled KVM: what happens after a guest HVC or SMC has trapped to EL2.

``trap.py`` turns Unicorn's interrupt into a ``Call`` carrying the ESR_EL2 syndrome and
the guest's x0..x5. ``KvmModel.handle_hvc`` / ``handle_smc`` then follow
arch/arm64/kvm/handle_exit.c and hypercalls.c for the selected profile: either they
answer in-kernel (``call.ret`` holds the values for x0.. and the guest resumes) or they
return an exit for userspace. Everything that differs between kernels is in
``emu.kvm.profiles``; this module is the pipeline they plug into.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.abi import smccc
from emu.abi.exits import KVM_HYPERCALL_EXIT_16BIT, KVM_HYPERCALL_EXIT_SMC, Exit, HypercallExit
from emu.arm.exceptions import ESR_ELx_IL
from emu.kvm.filter import SmcccFilterAction
from emu.smccc.call import Call, Conduit
from emu.smccc.psci import Psci

if TYPE_CHECKING:
    from emu.kvm.profiles import ModelVm

_SMC = Conduit.SMC
_DENY = SmcccFilterAction.DENY
_FWD = SmcccFilterAction.FWD_TO_USER
_NO_ARGS = (0, 0, 0, 0, 0, 0)

# Bitmap-gated calls (kvm_smccc_test_fw_bmap, ref 3.3): fid -> (bitmap field, bit).
_GATED = {
    smccc.TRNG_VERSION: ("std_bmap", 0),
    smccc.TRNG_FEATURES: ("std_bmap", 0),
    smccc.TRNG_GET_UUID: ("std_bmap", 0),
    smccc.TRNG_RND32: ("std_bmap", 0),
    smccc.TRNG_RND64: ("std_bmap", 0),
    smccc.PV_TIME_FEATURES: ("std_hyp_bmap", 0),
    smccc.PV_TIME_ST: ("std_hyp_bmap", 0),
    smccc.VENDOR_HYP_KVM_FEATURES: ("vendor_hyp_bmap", 0),
    smccc.VENDOR_HYP_CALL_UID: ("vendor_hyp_bmap", 0),
    smccc.VENDOR_HYP_KVM_PTP: ("vendor_hyp_bmap", 1),
}


def default_allowed(fid: int) -> bool:
    """kvm_smccc_default_allowed(): SMCCC_VERSION, ARCH_FEATURES, OEN 4 fn <= 0x1F (any type
    and convention bits) and KVM's PSCI 0.1 ids pass without a bitmap bit (ref 3.1)."""
    if fid in (smccc.SMCCC_VERSION, smccc.SMCCC_ARCH_FEATURES):
        return True
    if (fid >> 24) & 0x3F == smccc.Owner.STD and fid & 0xFFFF <= 0x1F:
        return True
    return 0x95C1_BA5E <= fid <= 0x95C1_BA61


class KvmModel:
    """KVM's HVC/SMC handling for one VM under one profile."""

    def __init__(self, vm: ModelVm) -> None:
        self.vm = vm
        self.profile = vm.profile
        self.psci = Psci(self.profile)
        self._handlers = self.profile.handlers
        self._hvc_fast_path = self.profile.hvc_fast_path
        self._filter = vm.smccc_filter
        self._gate = self.profile.bitmap_gate
        self._bitmaps = vm.fw_bitmaps
        self._fwd_with_fid = self.profile.forwards_with_fid

    def handle_hvc(self, call: Call) -> Exit | None:
        """handle_hvc(): the EL2 workaround fast path, then the SMCCC call handler."""
        if call.fid in self._hvc_fast_path:
            # hyp-entry.S answers before any C handler, filter or bitmap: x0 = 0 and x1,
            # its scratch register, ends up 0 too; x2/x3 untouched (ref 1.4).
            call.ret = (0, 0)
            return None
        return self.smccc_call(call)

    def smccc_call(self, call: Call) -> Exit | None:
        """kvm_smccc_call_handler() (kvm_hvc_call_handler before 6.4): filter, then the
        bitmap gate, then the function switch, then the profile's route for the rest."""
        fid = call.fid
        if self._filter.starts:  # no lookup at all until a range is set (ref 3.1 step 2)
            action = self._filter.lookup(fid)
            if action is _FWD:
                return self.forward(call)
            if action is _DENY:
                self.deny(call)
                return None
        if self._gate and not self.allowed(fid):
            self.deny(call)
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

    def allowed(self, fid: int) -> bool:
        """The bitmap gate (kvm_smccc_test_fw_bmap || kvm_smccc_default_allowed)."""
        gated = _GATED.get(fid)
        if gated is not None:
            return bool(getattr(self._bitmaps, gated[0]) >> gated[1] & 1)
        return default_allowed(fid)

    def deny(self, call: Call) -> None:
        """SMCCC_RET_NOT_SUPPORTED with x1..x3 zeroed."""
        call.answer(smccc.SmcccRet.NOT_SUPPORTED)

    def forward(self, call: Call) -> HypercallExit:
        """FWD_TO_USER: kvm_prepare_hypercall_exit() (ref 5.4): nr = function id, args and
        ret zeroed, flags SMC / 16-bit, registers untouched."""
        flags = KVM_HYPERCALL_EXIT_SMC if call.conduit is _SMC else 0
        if not call.esr & ESR_ELx_IL:
            flags |= KVM_HYPERCALL_EXIT_16BIT
        return HypercallExit(call.vcpu.id, call.fid, _NO_ARGS, 0, flags)

    def exit_hypercall(self, call: Call, nr: int, args: tuple[int, ...]) -> HypercallExit:
        """KVM_EXIT_HYPERCALL; registers are left for userspace to fill in."""
        flags = KVM_HYPERCALL_EXIT_SMC if call.conduit is _SMC else 0
        return HypercallExit(call.vcpu.id, nr, args, 0, flags)
