"""KVM's in-kernel interrupt controller (vGIC), GICv2 and GICv3, as pure Python.

``GicV2(nr_cpus)`` / ``GicV3(nr_cpus, mpidrs)`` build one for a VM. The VMM maps each
``(base, size, region)`` of ``regions`` and forwards guest loads and stores as
``region.read(cpu, offset, size)`` / ``region.write(cpu, offset, size, value)``; GICv3
ICC_* accesses go to ``sysreg_read`` / ``sysreg_write``. Devices drive lines with
``set_irq_level``; ``on_line_change(cpu, level)`` says when a vCPU's IRQ input changes.
"""

from emu.kvm.vgic.core import NR_IRQS, CpuInterface, Vgic, affinity, kvm_mpidr
from emu.kvm.vgic.irq import EDGE, LEVEL, SPURIOUS, Irq
from emu.kvm.vgic.mmio import MmioRegion, Register, RegisterMap
from emu.kvm.vgic.v2 import GicV2
from emu.kvm.vgic.v3 import ICC_REGISTERS, GicV3

__all__ = [
    "EDGE",
    "ICC_REGISTERS",
    "LEVEL",
    "NR_IRQS",
    "SPURIOUS",
    "CpuInterface",
    "GicV2",
    "GicV3",
    "Irq",
    "MmioRegion",
    "Register",
    "RegisterMap",
    "Vgic",
    "affinity",
    "kvm_mpidr",
]
