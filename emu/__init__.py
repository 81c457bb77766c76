"""emu: run real AArch64 guest code and answer its HVC/SMC hypercalls the way Linux KVM/arm64 would.

Quick start::

    from emu import Vm, Cap, HypercallExit, SystemEventExit, LOAD_ADDR

    vm = Vm(profile="rfc-2021")
    vm.enable_cap(Cap.ARM_HVC_TO_USER)
    vm.load_asm(SOURCE)
    vcpu = vm.create_vcpu(0)
    vcpu.pc = LOAD_ADDR
    exit_ = vcpu.run()

The code is layered, bottom to top: ``emu.arm`` (the CPU), ``emu.abi`` (SMCCC ids, exits,
trace events), ``emu.smccc`` (the firmware services KVM implements), ``emu.trap`` /
``emu.kvm_model`` / ``emu.kvm`` (KVM), ``emu.vmm`` (userspace) and ``emu.tools``.
"""

from emu.abi.exits import FaultExit, HypercallExit, MpState, StopExit, SystemEvent, SystemEventExit
from emu.arm.host import HostCpu, Mitigation
from emu.kvm.caps import Cap
from emu.kvm.filter import KVM_ARM_VM_SMCCC_CTRL, KVM_ARM_VM_SMCCC_FILTER, SmcccFilterAction
from emu.kvm.one_reg import (
    KVM_REG_ARM_CORE_PC,
    KVM_REG_ARM_CORE_PSTATE,
    KVM_REG_ARM_CORE_SP,
    KVM_REG_ARM_CORE_X,
    KVM_REG_ARM_PSCI_VERSION,
    KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1,
    KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2,
    KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_3,
    KVM_REG_ARM_STD_BMAP,
    KVM_REG_ARM_STD_HYP_BMAP,
    KVM_REG_ARM_VENDOR_HYP_BMAP,
)
from emu.kvm.profiles import PROFILES, Profile
from emu.kvm.vcpu import Vcpu
from emu.kvm.vm import DEFAULT_RAM_SIZE, LOAD_ADDR, RAM_BASE, Vm
from emu.tools import display as _display
from emu.tools import timeline as _timeline
from emu.tools.diff import DiffResult, diff
from emu.tools.gdb import vm_target as _gdb
from emu.vmm.boot import Boot, boot

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_RAM_SIZE",
    "KVM_ARM_VM_SMCCC_CTRL",
    "KVM_ARM_VM_SMCCC_FILTER",
    "KVM_REG_ARM_CORE_PC",
    "KVM_REG_ARM_CORE_PSTATE",
    "KVM_REG_ARM_CORE_SP",
    "KVM_REG_ARM_CORE_X",
    "KVM_REG_ARM_PSCI_VERSION",
    "KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1",
    "KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2",
    "KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_3",
    "KVM_REG_ARM_STD_BMAP",
    "KVM_REG_ARM_STD_HYP_BMAP",
    "KVM_REG_ARM_VENDOR_HYP_BMAP",
    "LOAD_ADDR",
    "PROFILES",
    "RAM_BASE",
    "Boot",
    "Cap",
    "DiffResult",
    "FaultExit",
    "HostCpu",
    "HypercallExit",
    "Mitigation",
    "MpState",
    "Profile",
    "SmcccFilterAction",
    "StopExit",
    "SystemEvent",
    "SystemEventExit",
    "Vcpu",
    "Vm",
    "boot",
    "diff",
]

# Rich displays: the low layers ask emu.rendering, the tools layer answers.
_display.register()
_timeline.register()
_gdb.register()
