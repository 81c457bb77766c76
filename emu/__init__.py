"""emu: run real AArch64 guest code and answer its HVC/SMC hypercalls the way Linux KVM/arm64 would.

Quick start::

    from emu import Vm, Cap
    from emu.abi.exits import HypercallExit, SystemEventExit

    vm = Vm(profile="rfc-2021")
    vm.enable_cap(Cap.ARM_HVC_TO_USER)
    vm.load_asm(SOURCE)
    vcpu = vm.create_vcpu(0)
    vcpu.pc = LOAD_ADDR
    exit_ = vcpu.run()
"""

from emu.kvm.caps import Cap
from emu.abi.exits import FaultExit, HypercallExit, MpState, StopExit, SystemEvent, SystemEventExit
from emu.kvm.host import HostCpu, Mitigation
from emu.kvm.profiles import PROFILES, Profile
from emu.kvm.vcpu import Vcpu
from emu.kvm.vm import DEFAULT_RAM_SIZE, LOAD_ADDR, RAM_BASE, Vm

__version__ = "0.1.0"

__all__ = [
    "Cap", "DEFAULT_RAM_SIZE", "FaultExit", "HostCpu", "HypercallExit", "LOAD_ADDR", "Mitigation",
    "MpState", "PROFILES", "Profile", "RAM_BASE", "StopExit", "SystemEvent", "SystemEventExit",
    "Vcpu", "Vm",
]
