"""PSCI in userspace: the VMM side of the RFC's KVM_CAP_ARM_PSCI_TO_USER (patch 5/5), or of
an upstream SMCCC filter that forwards the PSCI ranges (v6.4+, ref 3.6).

With either, KVM forwards PSCI calls as KVM_EXIT_HYPERCALL. ``UserPsci``
answers them the way KVM would have, through the VMM's own interface to the vCPUs
(KVM_SET_MP_STATE, a vCPU reset, the registers), so the same boot flows behave the same,
except where the VMM's policy decides otherwise. That is the use case the RFC was
written for: vCPU hot-add, where a "not present" CPU must be refused (DENIED) until the
VMM plugs it.

CPU_SUSPEND blocks the caller in the kernel's WFI, which is what the RFC's
KVM_MP_STATE_HALTED (patch 3/5) lets userspace ask for.
"""

from __future__ import annotations

from collections.abc import Iterable

from emu.abi.exits import KVM_HYPERCALL_EXIT_SMC, HypercallExit, SystemEventExit
from emu.kvm.vcpu import Vcpu
from emu.kvm.vm import Vm
from emu.smccc.call import Call, Conduit
from emu.smccc.psci import CpuOnPolicy, Psci, PsciRet


class HotplugPolicy:
    """CPU_ON policy for vCPU hot-add: vCPUs not in ``present`` are refused with DENIED.

    ``plug(vcpu_id)`` makes a vCPU present, as a VMM does when the operator adds a CPU.
    """

    def __init__(self, present: Iterable[int]) -> None:
        self.present = set(present)
        self.refused: list[int] = []

    def plug(self, vcpu_id: int) -> None:
        self.present.add(vcpu_id)

    def __call__(self, caller: Vcpu, target: Vcpu | None) -> int | None:
        if target is not None and target.id not in self.present:
            self.refused.append(target.id)
            return PsciRet.DENIED
        return None


class UserPsci:
    """Answers forwarded PSCI calls for a VM, optionally with a CPU_ON policy."""

    def __init__(self, vm: Vm, cpu_on_policy: CpuOnPolicy | None = None) -> None:
        self.vm = vm
        self.psci = Psci(vm.profile, cpu_on_policy=cpu_on_policy, handled="user")

    def fid_of(self, exit_: HypercallExit) -> int:
        """The forwarded function id: ``nr`` upstream (ref 5.4), x0 in the RFC's args (5.3)."""
        return exit_.nr if self.vm.profile.forwards_with_fid else exit_.fid

    def handles(self, exit_: HypercallExit) -> bool:
        """True for forwarded calls in the PSCI function ranges: under the RFC's
        PSCI_TO_USER, or upstream through a FWD_TO_USER filter over them (ref 3.6)."""
        return self.vm.profile.is_psci_fid(self.fid_of(exit_))

    def handle(self, vcpu: Vcpu, exit_: HypercallExit) -> SystemEventExit | None:
        """Answer one forwarded PSCI call; a SYSTEM_OFF/RESET comes back as a system event."""
        conduit = Conduit.SMC if exit_.flags & KVM_HYPERCALL_EXIT_SMC else Conduit.HVC
        # Upstream zeroes args[], so the arguments are read from the registers, which KVM
        # leaves untouched in both shapes (KVM_GET_ONE_REG in a real VMM).
        args = tuple(vcpu.get_reg(f"x{i}") for i in range(6))
        # The syndrome is the vCPU's last trap; PC is already past the instruction (ref 1.3).
        call = Call(self.vm, vcpu, conduit, vcpu.esr, vcpu.pc - 4, args)
        system_event = self.psci.call(call)
        if call.ret is not None:
            vcpu.complete_hypercall(*call.ret)
        return system_event
