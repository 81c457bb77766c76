"""KVM's GICv2 (KVM_DEV_TYPE_ARM_VGIC_V2) at QEMU virt's addresses.

The distributor table follows vgic-mmio-v2.c (vgic_v2_dist_registers); KVM registers
only its first 4 KiB, the rest of QEMU's 64 KiB window reads as zero. The CPU interface
is the GICV frame the hardware provides to a KVM guest (IHI 0048B 4.4, 5.6), with the
values KVM exposes for it (vgic_mmio_read_vcpuif).
"""

from __future__ import annotations

from emu.kvm.vgic.core import (
    BPR0_MIN,
    BPR1_MIN,
    GICD_IIDR_VALUE,
    IMPLEMENTER_ARM,
    NR_IRQS,
    PRIORITY_MASK,
    PRODUCT_ID_KVM,
    Vgic,
)
from emu.kvm.vgic.irq import GROUP1_NOT_ACKED, NR_PRIVATE, NR_SGIS, SPURIOUS, Irq
from emu.kvm.vgic.mmio import MmioRegion, Register, RegisterMap, intid_at

GICD_BASE = 0x0800_0000
GICD_SIZE = 0x1_0000
GICC_BASE = 0x0801_0000
GICC_SIZE = 0x1_0000

# Distributor offsets (IHI 0048B 4.1.2).
GICD_CTLR = 0x000
GICD_TYPER = 0x004
GICD_IIDR = 0x008
GICD_IGROUPR = 0x080
GICD_ISENABLER = 0x100
GICD_ICENABLER = 0x180
GICD_ISPENDR = 0x200
GICD_ICPENDR = 0x280
GICD_ISACTIVER = 0x300
GICD_ICACTIVER = 0x380
GICD_IPRIORITYR = 0x400
GICD_ITARGETSR = 0x800
GICD_ICFGR = 0xC00
GICD_SGIR = 0xF00
GICD_CPENDSGIR = 0xF10
GICD_SPENDSGIR = 0xF20

# CPU interface offsets (IHI 0048B 4.1.3).
GICC_CTLR = 0x00
GICC_PMR = 0x04
GICC_BPR = 0x08
GICC_IAR = 0x0C
GICC_EOIR = 0x10
GICC_RPR = 0x14
GICC_HPPIR = 0x18
GICC_ABPR = 0x1C
GICC_AIAR = 0x20
GICC_AEOIR = 0x24
GICC_AHPPIR = 0x28
GICC_APR0 = 0xD0
GICC_IIDR = 0xFC
GICC_DIR = 0x1000

# GICC_CTLR bits of the virtual CPU interface (IHI 0048B 5.6.1, GICV_CTLR).
CTLR_ENABLE_GRP0 = 1 << 0
CTLR_ENABLE_GRP1 = 1 << 1
CTLR_ACKCTL = 1 << 2
CTLR_FIQEN = 1 << 3
CTLR_CBPR = 1 << 4
CTLR_EOIMODE = 1 << 9

# GICC_IIDR: ProductID KVM, architecture version 2, Arm (vgic_mmio_read_vcpuif).
GICC_IIDR_VALUE = (PRODUCT_ID_KVM << 20) | (2 << 16) | IMPLEMENTER_ARM
SGI_SOURCE_SHIFT = 10  # GICC_IAR.CPUID, bits [12:10]


def _ints(bits: int) -> list[int]:
    return [i for i in range(bits.bit_length()) if bits >> i & 1]


class GicV2(Vgic):
    """GICv2 for up to 8 vCPUs: ``distributor`` and ``cpu_interface`` regions."""

    version = 2
    max_cpus = 8  # VGIC_V2_MAX_CPUS: ITARGETSR has one bit per CPU
    sre = 0

    def __init__(self, nr_cpus: int, mpidrs: list[int] | None = None, nr_irqs: int = NR_IRQS) -> None:
        super().__init__(nr_cpus, mpidrs, nr_irqs)
        self.distributor = MmioRegion(
            self, "GICv2 distributor", GICD_BASE, GICD_SIZE, RegisterMap(self._dist_registers())
        )
        self.cpu_interface = MmioRegion(
            self, "GICv2 CPU interface", GICC_BASE, GICC_SIZE, RegisterMap(self._cpu_registers())
        )
        self.regions = [(r.base, r.size, r) for r in (self.distributor, self.cpu_interface)]

    def _reset_private(self, cpu: int, irq: Irq) -> None:
        irq.group = 0
        irq.targets = 1 << cpu

    def _reset_spi(self, irq: Irq) -> None:
        # vgic-init.c: targets 0 and group 0; KVM still delivers to vCPU 0 (target_vcpu).
        irq.group = 0
        irq.targets = 0

    def route(self, irq: Irq) -> int | None:
        if irq.owner is not None:
            return irq.owner
        # vgic_mmio_write_target: the lowest target bit wins, vCPU 0 when there is none.
        targets = irq.targets & ((1 << self.nr_cpus) - 1)
        return (targets & -targets).bit_length() - 1 if targets else 0

    def _irq_groups(self, cpu: int) -> tuple[int, ...]:
        return (1,) if self.cpus[cpu].fiqen else (0, 1)

    def _gprio_mask(self, cpu: int, group: int) -> int:
        c = self.cpus[cpu]
        # IHI 0048B 3.3.3: GICC_ABPR splits Group 1 one bit lower than GICC_BPR does.
        shift = c.bpr1 if group == 1 and not c.cbpr else c.bpr0 + 1
        return (0xFF << shift) & 0xFF

    def _apr_index(self, group: int) -> int:
        return 0  # one GICH_APR for both groups

    def _ack_value(self, irq: Irq) -> int:
        if irq.intid >= NR_SGIS:
            return super()._ack_value(irq)
        # One source at a time, lowest first; the SGI stays pending for the others
        # (vgic_v2_populate_lr).
        source = (irq.source & -irq.source).bit_length() - 1 if irq.source else 0
        irq.source &= ~(1 << source)
        irq.pending_latch = bool(irq.source)
        return irq.intid | source << SGI_SOURCE_SHIFT

    # Distributor ---------------------------------------------------------------------

    def _dist_registers(self) -> list[Register]:
        per_irq = [
            ("GICD_IGROUPR", GICD_IGROUPR, 1, self.read_group, self.write_group, (4,)),
            ("GICD_ISENABLER", GICD_ISENABLER, 1, self.read_enable, self.write_senable, (4,)),
            ("GICD_ICENABLER", GICD_ICENABLER, 1, self.read_enable, self.write_cenable, (4,)),
            ("GICD_ISPENDR", GICD_ISPENDR, 1, self.read_pending, self.write_spending, (4,)),
            ("GICD_ICPENDR", GICD_ICPENDR, 1, self.read_pending, self.write_cpending, (4,)),
            ("GICD_ISACTIVER", GICD_ISACTIVER, 1, self.read_active, self.write_sactive, (4,)),
            ("GICD_ICACTIVER", GICD_ICACTIVER, 1, self.read_active, self.write_cactive, (4,)),
            ("GICD_IPRIORITYR", GICD_IPRIORITYR, 8, self.read_priority, self.write_priority, (1, 4)),
            ("GICD_ITARGETSR", GICD_ITARGETSR, 8, self._read_target, self._write_target, (1, 4)),
            ("GICD_ICFGR", GICD_ICFGR, 2, self.read_config, self.write_config, (4,)),
        ]
        return [
            Register("GICD_CTLR/TYPER/IIDR", GICD_CTLR, 12, self._read_misc, self._write_misc),
            *(
                Register(name, off, bits * 1024 // 8, rd, wr, bits, widths)
                for name, off, bits, rd, wr, widths in per_irq
            ),
            Register("GICD_SGIR", GICD_SGIR, 4, write=self._write_sgir),
            Register(
                "GICD_CPENDSGIR", GICD_CPENDSGIR, 16, self._read_sgipend, self._write_sgipendc, widths=(1, 4)
            ),
            Register(
                "GICD_SPENDSGIR", GICD_SPENDSGIR, 16, self._read_sgipend, self._write_sgipends, widths=(1, 4)
            ),
        ]

    def _read_misc(self, cpu: int, off: int, size: int) -> int:
        if off == GICD_CTLR:
            return int(self.enabled)
        if off == GICD_TYPER:
            # ITLinesNumber [4:0], CPUNumber [7:5] (IHI 0048B 4.3.2).
            return (self.nr_irqs // 32 - 1) | (self.nr_cpus - 1) << 5
        return GICD_IIDR_VALUE

    def _write_misc(self, cpu: int, off: int, size: int, value: int) -> None:
        if off == GICD_CTLR:
            self.enabled = bool(value & 1)  # KVM keeps one enable bit (GICD_ENABLE)

    def _read_target(self, cpu: int, off: int, size: int) -> int:
        return self._read_field(cpu, off, size, 8, lambda i: i.targets)

    def _write_target(self, cpu: int, off: int, size: int, value: int) -> None:
        if intid_at(off, 8) < NR_PRIVATE:
            return  # GICD_ITARGETSR0-7 are read-only

        def put(irq: Irq, byte: int) -> None:
            irq.targets = byte & ((1 << self.nr_cpus) - 1)

        self._write_field(cpu, off, size, value, 8, put)

    def _write_sgir(self, cpu: int, off: int, size: int, value: int) -> None:
        intid = value & 0xF
        mode = (value >> 24) & 3  # TargetListFilter (IHI 0048B 4.3.15)
        if mode == 0:
            targets = (value >> 16) & 0xFF
        elif mode == 1:
            targets = ((1 << self.nr_cpus) - 1) & ~(1 << cpu)
        elif mode == 2:
            targets = 1 << cpu
        else:
            return  # reserved
        for target in _ints(targets & ((1 << self.nr_cpus) - 1)):
            self._send_sgi(target, intid, source=cpu)

    def _read_sgipend(self, cpu: int, off: int, size: int) -> int:
        first = off & 0xF
        return sum(self.private[cpu][first + i].source << (8 * i) for i in range(size))

    def _write_sgipends(self, cpu: int, off: int, size: int, value: int) -> None:
        for i in range(size):
            irq = self.private[cpu][(off & 0xF) + i]
            was = irq.pending
            irq.source |= (value >> (8 * i)) & 0xFF
            if irq.source:
                irq.pending_latch = True
                self._raised(irq, was)

    def _write_sgipendc(self, cpu: int, off: int, size: int, value: int) -> None:
        for i in range(size):
            irq = self.private[cpu][(off & 0xF) + i]
            irq.source &= ~(value >> (8 * i)) & 0xFF
            if not irq.source:
                irq.pending_latch = False

    # CPU interface -------------------------------------------------------------------

    def _cpu_registers(self) -> list[Register]:
        return [
            Register("GICC_CTLR", GICC_CTLR, 4, self._read_ctlr, self._write_ctlr),
            Register("GICC_PMR", GICC_PMR, 4, lambda c, o, s: self.cpus[c].pmr, self._write_pmr),
            Register("GICC_BPR", GICC_BPR, 4, lambda c, o, s: self.cpus[c].bpr0, self._write_bpr),
            Register("GICC_IAR", GICC_IAR, 4, lambda c, o, s: self._iar(c, alias=False)),
            Register("GICC_EOIR", GICC_EOIR, 4, write=self._write_eoir),
            Register("GICC_RPR", GICC_RPR, 4, lambda c, o, s: self.running_priority(c)),
            Register("GICC_HPPIR", GICC_HPPIR, 4, lambda c, o, s: self._hppir(c, alias=False)),
            Register("GICC_ABPR", GICC_ABPR, 4, lambda c, o, s: self.cpus[c].bpr1, self._write_abpr),
            Register("GICC_AIAR", GICC_AIAR, 4, lambda c, o, s: self._iar(c, alias=True)),
            Register("GICC_AEOIR", GICC_AEOIR, 4, write=self._write_eoir),
            Register("GICC_AHPPIR", GICC_AHPPIR, 4, lambda c, o, s: self._hppir(c, alias=True)),
            # 5 priority bits: only GICC_APR0 is implemented, APR1-3 RAZ/WI.
            Register("GICC_APR0", GICC_APR0, 4, lambda c, o, s: self.cpus[c].apr[0], self._write_apr),
            Register("GICC_IIDR", GICC_IIDR, 4, lambda c, o, s: GICC_IIDR_VALUE),
            Register("GICC_DIR", GICC_DIR, 4, write=self._write_dir),
        ]

    def _read_ctlr(self, cpu: int, off: int, size: int) -> int:
        c = self.cpus[cpu]
        return (
            c.grpen0 * CTLR_ENABLE_GRP0
            | c.grpen1 * CTLR_ENABLE_GRP1
            | c.ackctl * CTLR_ACKCTL
            | c.fiqen * CTLR_FIQEN
            | c.cbpr * CTLR_CBPR
            | c.eoimode * CTLR_EOIMODE
        )

    def _write_ctlr(self, cpu: int, off: int, size: int, value: int) -> None:
        c = self.cpus[cpu]
        c.grpen0 = bool(value & CTLR_ENABLE_GRP0)
        c.grpen1 = bool(value & CTLR_ENABLE_GRP1)
        c.ackctl = bool(value & CTLR_ACKCTL)
        c.fiqen = bool(value & CTLR_FIQEN)
        c.cbpr = bool(value & CTLR_CBPR)
        c.eoimode = bool(value & CTLR_EOIMODE)

    def _write_pmr(self, cpu: int, off: int, size: int, value: int) -> None:
        self.cpus[cpu].pmr = value & PRIORITY_MASK

    def _write_bpr(self, cpu: int, off: int, size: int, value: int) -> None:
        self.cpus[cpu].bpr0 = max(value & 7, BPR0_MIN)

    def _write_abpr(self, cpu: int, off: int, size: int, value: int) -> None:
        self.cpus[cpu].bpr1 = max(value & 7, BPR1_MIN)

    def _write_apr(self, cpu: int, off: int, size: int, value: int) -> None:
        self.cpus[cpu].apr[0] = value

    def _iar(self, cpu: int, alias: bool) -> int:
        """GICC_IAR / GICC_AIAR (IHI 0048B 4.4.4, 4.4.10)."""
        irq = self.hppi(cpu)
        if irq is None or not self._can_preempt(cpu, irq):
            return SPURIOUS
        if alias and irq.group == 0:
            return SPURIOUS
        if not alias and irq.group == 1 and not self.cpus[cpu].ackctl:
            return GROUP1_NOT_ACKED
        return self._ack(cpu, irq)

    def _hppir(self, cpu: int, alias: bool) -> int:
        """GICC_HPPIR / GICC_AHPPIR: like IAR without acknowledging or the priority checks."""
        irq = self.hppi(cpu)
        if irq is None or (alias and irq.group == 0):
            return SPURIOUS
        if not alias and irq.group == 1 and not self.cpus[cpu].ackctl:
            return GROUP1_NOT_ACKED
        if irq.intid < NR_SGIS and irq.source:
            return irq.intid | ((irq.source & -irq.source).bit_length() - 1) << SGI_SOURCE_SHIFT
        return irq.intid

    def _write_eoir(self, cpu: int, off: int, size: int, value: int) -> None:
        self._eoi(cpu, value & 0x3FF, group=0)

    def _write_dir(self, cpu: int, off: int, size: int, value: int) -> None:
        intid = value & 0x3FF
        if intid < 1020:
            self._deactivate(cpu, intid)
