"""PSCI in userspace: the VMM side of the RFC's KVM_CAP_ARM_PSCI_TO_USER (patch 5/5).

With that capability KVM forwards every PSCI call as a KVM_EXIT_HYPERCALL. ``UserPsci``
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

    def snapshot(self) -> dict[str, list[int]]:
        return {"present": sorted(self.present), "refused": list(self.refused)}

    def restore(self, data: dict[str, list[int]]) -> None:
        self.present = set(data["present"])
        self.refused = list(data["refused"])

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

    def handles(self, exit_: HypercallExit) -> bool:
        """True for the calls KVM forwards under PSCI_TO_USER (the PSCI function ranges)."""
        return self.vm.profile.is_psci_fid(exit_.fid)

    def handle(self, vcpu: Vcpu, exit_: HypercallExit) -> SystemEventExit | None:
        """Answer one forwarded PSCI call; a SYSTEM_OFF/RESET comes back as a system event."""
        conduit = Conduit.SMC if exit_.flags & KVM_HYPERCALL_EXIT_SMC else Conduit.HVC
        # The syndrome is the vCPU's last trap; PC is already past the instruction (ref 1.3).
        call = Call(self.vm, vcpu, conduit, vcpu.esr, vcpu.pc - 4, exit_.args)
        system_event = self.psci.call(call)
        if call.ret is not None:
            vcpu.complete_hypercall(*call.ret)
        return system_event
