"""The in-kernel irqchip of a VM: KVM_CREATE_DEVICE(KVM_DEV_TYPE_ARM_VGIC_V2/V3), wired up.

``emu.kvm.vgic`` is the interrupt controller as data and rules; this module connects it to
the VM the way KVM does:

* the distributor, CPU interface (GICv2) and redistributors (GICv3) are mapped on every
  vCPU at QEMU virt's addresses, each access naming the vCPU that made it;
* GICv3's ICC_* system registers, which Unicorn does not implement, are served from the
  trap path (``sysreg_read`` / ``sysreg_write``);
* a vCPU's IRQ line drives HCR_EL2.VI of its Unicorn instance (with IMO set), so the
  engine itself takes the interrupt at VBAR_EL1 + 0x280 / 0x480 as soon as PSTATE.I is
  clear, and a line going high wakes a vCPU blocked in WFI;
* each vCPU's generic timers drive their PPIs (CNTV 27, CNTP 30), level-triggered from
  ENABLE && !IMASK && ISTATUS on the VM's virtual clock; an expired timer also ends a
  WFI by itself, as KVM's pending-timer check does;
* ``irq_line`` is KVM_IRQ_LINE for SPIs (and PPIs) raised by the VMM's devices.

Like KVM, the vGIC is sized when it is initialised, at the first KVM_RUN: vCPUs created
after that are refused.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from typing import Protocol

from emu.abi.trace import InterruptEvent, Trace
from emu.arm.clock import VirtualClock
from emu.arm.timer import GenericTimers
from emu.errors import KvmError
from emu.kvm.vgic import GicV2, GicV3, Vgic
from emu.kvm.vgic import v2 as gic_v2
from emu.kvm.vgic import v3 as gic_v3

# KVM_DEV_TYPE_ARM_VGIC_V2 / _V3 (include/uapi/linux/kvm.h).
KVM_DEV_TYPE_ARM_VGIC_V2 = 5
KVM_DEV_TYPE_ARM_VGIC_V3 = 7
VERSIONS = {2: KVM_DEV_TYPE_ARM_VGIC_V2, 3: KVM_DEV_TYPE_ARM_VGIC_V3}

# PPIs of the generic timers as QEMU virt wires them (INTID = 16 + PPI number).
PPI_BASE = 16
TIMER_PPIS = {"sec_phys": 13, "phys": 14, "virt": 11, "hyp": 10}
CNTV_INTID = PPI_BASE + TIMER_PPIS["virt"]  # 27
CNTP_INTID = PPI_BASE + TIMER_PPIS["phys"]  # 30
SPI_BASE = 32

# KVM_IRQ_LINE's irq field (arch/arm64/include/uapi/asm/kvm.h).
KVM_ARM_IRQ_TYPE_SHIFT = 24
KVM_ARM_IRQ_VCPU_SHIFT = 16
KVM_ARM_IRQ_TYPE_CPU = 0
KVM_ARM_IRQ_TYPE_SPI = 1
KVM_ARM_IRQ_TYPE_PPI = 2

# GICv3 redistributors: QEMU virt's first region runs up to the UART at 0x09000000.
GICR_REGION_END = 0x0900_0000


def kvm_irq(intid: int, vcpu_index: int = 0) -> int:
    """The KVM_IRQ_LINE ``irq`` for an SPI (INTID >= 32) or a PPI of ``vcpu_index``."""
    if intid >= SPI_BASE:
        return KVM_ARM_IRQ_TYPE_SPI << KVM_ARM_IRQ_TYPE_SHIFT | intid
    return KVM_ARM_IRQ_TYPE_PPI << KVM_ARM_IRQ_TYPE_SHIFT | vcpu_index << KVM_ARM_IRQ_VCPU_SHIFT | intid


class IrqVcpu(Protocol):
    """What the irqchip needs of a vCPU (``emu.kvm.vcpu.Vcpu``)."""

    id: int
    mpidr: int
    timers: GenericTimers

    def set_virq(self, level: bool) -> None: ...

    def interrupt_wake(self) -> None: ...

    def sync_clock(self) -> None: ...


class IrqVm(Protocol):
    """What the irqchip needs of its VM (``emu.kvm.vm.Vm``)."""

    clock: VirtualClock
    trace: Trace

    @property
    def vcpus(self) -> Sequence[IrqVcpu]: ...


class CpuRegion:
    """One GIC MMIO window as one vCPU's Unicorn instance maps it (``MmioDevice``)."""

    def __init__(self, chip: Irqchip, index: int, base: int, size: int, vcpu: IrqVcpu) -> None:
        self.chip = chip
        self.index = index
        self.base = base
        self.size = size
        self.vcpu = vcpu

    def read(self, offset: int, size: int) -> int:
        self.vcpu.sync_clock()
        region, cpu = self.chip.region_for(self.index, self.vcpu)
        if offset + size > region.size:
            return 0  # a redistributor frame of a vCPU the VM does not have
        return region.read(cpu, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.vcpu.sync_clock()
        region, cpu = self.chip.region_for(self.index, self.vcpu)
        if offset + size <= region.size:
            region.write(cpu, offset, size, value)


class Irqchip:
    """A VM's vGIC (``version`` 2 or 3), created by ``vm.create_gic(version)``."""

    def __init__(self, vm: IrqVm, version: int) -> None:
        if version not in VERSIONS:
            raise KvmError(errno.ENODEV, f"KVM_CREATE_DEVICE: no vGIC version {version} (2 or 3)")
        self.vm = vm
        self.version = version
        self.model: Vgic | None = None
        self._index: dict[int, int] = {}
        self._vcpus: list[IrqVcpu] = []
        self._timer_levels: dict[int, tuple[bool, bool]] = {}
        self.check_vcpus(len(vm.vcpus))
        # Counts by (kind, INTID): how many interrupts were raised, taken and completed.
        self.counts: dict[tuple[str, int], int] = {}
        self.on_interrupt: Callable[[InterruptEvent], None] | None = None

    @property
    def max_vcpus(self) -> int:
        return GicV2.max_cpus if self.version == 2 else GicV3.max_cpus

    def check_vcpus(self, count: int) -> None:
        if count > self.max_vcpus:
            raise KvmError(
                errno.E2BIG, f"GICv{self.version} supports at most {self.max_vcpus} vCPUs, not {count}"
            )

    # -- layout -------------------------------------------------------------------------

    def windows(self) -> list[tuple[int, int]]:
        """(base, size) of every MMIO window, as the guest's device tree describes them."""
        n = max(len(self.vm.vcpus), 1)
        if self.version == 2:
            return [(gic_v2.GICD_BASE, gic_v2.GICD_SIZE), (gic_v2.GICC_BASE, gic_v2.GICC_SIZE)]
        return [(gic_v3.GICD_BASE, gic_v3.GICD_SIZE), (gic_v3.GICR_BASE, n * gic_v3.GICR_FRAME)]

    def mappings(self, vcpu: IrqVcpu) -> list[CpuRegion]:
        """The windows one vCPU maps; the redistributor window spans QEMU's whole region,
        so vCPUs created later (before initialisation) need no new mapping."""
        if self.version == 2:
            spans = self.windows()
        else:
            spans = [self.windows()[0], (gic_v3.GICR_BASE, GICR_REGION_END - gic_v3.GICR_BASE)]
        return [CpuRegion(self, i, base, size, vcpu) for i, (base, size) in enumerate(spans)]

    # -- initialisation (KVM_DEV_ARM_VGIC_CTRL_INIT, or lazily at the first KVM_RUN) ----------

    @property
    def initialized(self) -> bool:
        return self.model is not None

    def init(self) -> Vgic:
        model = self.model
        if model is not None:
            return model
        vcpus = list(self.vm.vcpus)
        if not vcpus:
            raise KvmError(errno.EBUSY, "vGIC init: the VM has no vCPUs")
        self.check_vcpus(len(vcpus))
        mpidrs = [v.mpidr for v in vcpus]
        model = GicV2(len(vcpus), mpidrs) if self.version == 2 else GicV3(len(vcpus), mpidrs)
        model.on_line_change = self._line_changed
        model.on_event = self._event
        self._vcpus = vcpus
        self._index = {v.id: i for i, v in enumerate(vcpus)}
        self._timer_levels = {v.id: (False, False) for v in vcpus}
        self.model = model
        self.update_timers()
        return model

    def reset(self) -> None:
        """A system reset: the interrupt controller comes back in its reset state."""
        if self.model is not None:
            for vcpu in self._vcpus:
                vcpu.set_virq(False)
            self.model = None
            self.init()

    def region_for(self, index: int, vcpu: IrqVcpu):
        model = self.init()
        return model.regions[index][2], self._index[vcpu.id]

    def index(self, vcpu: IrqVcpu) -> int:
        self.init()
        return self._index[vcpu.id]

    # -- the CPU side ---------------------------------------------------------------------

    def sysreg_read(self, vcpu: IrqVcpu, key: tuple[int, int, int, int, int]) -> int | None:
        model = self.init()
        return model.sysreg_read(self._index[vcpu.id], key)

    def sysreg_write(self, vcpu: IrqVcpu, key: tuple[int, int, int, int, int], value: int) -> bool:
        model = self.init()
        return model.sysreg_write(self._index[vcpu.id], key, value)

    def pending(self, vcpu: IrqVcpu) -> bool:
        """An interrupt the vCPU would take (whatever PSTATE.I): what makes WFI return."""
        model = self.model
        return model is not None and model.irq_pending(self._index[vcpu.id])

    def _line_changed(self, cpu: int, level: bool) -> None:
        vcpu = self._vcpus[cpu]
        vcpu.set_virq(level)
        if level:
            vcpu.interrupt_wake()

    def _event(self, kind: str, cpu: int, intid: int) -> None:
        key = (kind, intid)
        self.counts[key] = self.counts.get(key, 0) + 1
        vcpu = self._vcpus[cpu].id if 0 <= cpu < len(self._vcpus) else None
        event = InterruptEvent(self.vm.clock.ns, vcpu, kind, intid)
        self.vm.trace.add(event)
        if self.on_interrupt is not None:
            self.on_interrupt(event)

    # -- interrupt sources ----------------------------------------------------------------

    def irq_line(self, irq: int, level: bool) -> None:
        """KVM_IRQ_LINE: ``irq`` = type << 24 | vcpu_index << 16 | INTID (SPI or PPI)."""
        kind = (irq >> KVM_ARM_IRQ_TYPE_SHIFT) & 0xF
        vcpu_index = (irq >> KVM_ARM_IRQ_VCPU_SHIFT) & 0xFF
        intid = irq & 0xFFFF
        model = self.init()
        if kind == KVM_ARM_IRQ_TYPE_SPI:
            if not SPI_BASE <= intid < model.nr_irqs:
                raise KvmError(errno.EINVAL, f"KVM_IRQ_LINE: INTID {intid} is not an SPI of this vGIC")
            model.set_irq_level(intid, level)
        elif kind == KVM_ARM_IRQ_TYPE_PPI:
            if not PPI_BASE <= intid < SPI_BASE or vcpu_index >= model.nr_cpus:
                raise KvmError(errno.EINVAL, f"KVM_IRQ_LINE: bad PPI {intid} for vCPU index {vcpu_index}")
            model.set_irq_level(intid, level, vcpu_index)
        else:
            raise KvmError(errno.ENXIO, f"KVM_IRQ_LINE: irq type {kind} is not for an in-kernel vGIC")

    def update_timer(self, vcpu: IrqVcpu) -> None:
        """Drive ``vcpu``'s timer PPIs from its timers' state at the current virtual time."""
        model = self.model
        if model is None:
            return
        levels = vcpu.timers.levels()
        old = self._timer_levels[vcpu.id]
        if levels != old:
            self._timer_levels[vcpu.id] = levels
            cpu = self._index[vcpu.id]
            if levels[0] != old[0]:
                model.set_irq_level(CNTV_INTID, levels[0], cpu)
            if levels[1] != old[1]:
                model.set_irq_level(CNTP_INTID, levels[1], cpu)
            if levels[0] or levels[1]:
                # As KVM's kvm_cpu_has_pending_timer: an expired, unmasked timer ends a
                # WFI even when the vGIC does not forward its PPI (yet).
                vcpu.interrupt_wake()

    def update_timers(self) -> None:
        for vcpu in self._vcpus:
            self.update_timer(vcpu)

    def next_deadline_ns(self, vcpus: Sequence[IrqVcpu] | None = None) -> int | None:
        """The earliest future virtual time at which one of these vCPUs' timers asserts."""
        now = self.vm.clock.ns
        best = None
        for vcpu in self._vcpus if vcpus is None else vcpus:
            when = vcpu.timers.wake_time_ns()
            if when is not None and when > now and (best is None or when < best):
                best = when
        return best
