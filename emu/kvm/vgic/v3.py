"""KVM's GICv3 (KVM_DEV_TYPE_ARM_VGIC_V3, no ITS) at QEMU virt's addresses.

Affinity routing is always on and there is one security state (GICD_CTLR.ARE_NS and DS
read as 1). The distributor and redistributor tables follow vgic-mmio-v3.c
(vgic_v3_dist_registers, vgic_v3_rd_registers); the ICC_* system registers behave as the
virtual CPU interface (ICV_*) a KVM guest reaches, with the ICH_VTR_EL2 of a typical host
(5 priority and preemption bits, 16-bit INTIDs, Aff3 supported).
"""

from __future__ import annotations

from collections.abc import Callable

from emu.kvm.vgic.core import (
    BPR0_MIN,
    BPR1_MIN,
    GICD_IIDR_VALUE,
    ICC_SRE_EL1,
    IMPLEMENTER_ARM,
    NR_IRQS,
    PRI_BITS,
    PRIORITY_MASK,
    PRODUCT_ID_KVM,
    SysregKey,
    Vgic,
)
from emu.kvm.vgic.irq import NR_PRIVATE, SPURIOUS, Irq
from emu.kvm.vgic.mmio import MmioRegion, Reader, Register, RegisterMap, Writer, intid_at, rao

GICD_BASE = 0x0800_0000
GICD_SIZE = 0x1_0000
GICR_BASE = 0x080A_0000
GICR_FRAME = 0x2_0000  # RD_base + SGI_base, 64 KiB each (IHI 0069 9.1)
SGI_BASE = 0x1_0000
# QEMU virt's first redistributor region ends where the UART starts (0x09000000).
GICR_MAX_CPUS = (0x0900_0000 - GICR_BASE) // GICR_FRAME

# Distributor offsets (IHI 0069 12.9).
GICD_CTLR = 0x0000
GICD_TYPER = 0x0004
GICD_IIDR = 0x0008
GICD_TYPER2 = 0x000C
GICD_STATUSR = 0x0010
GICD_IGROUPR = 0x0080
GICD_ISENABLER = 0x0100
GICD_ICENABLER = 0x0180
GICD_ISPENDR = 0x0200
GICD_ICPENDR = 0x0280
GICD_ISACTIVER = 0x0300
GICD_ICACTIVER = 0x0380
GICD_IPRIORITYR = 0x0400
GICD_ITARGETSR = 0x0800
GICD_ICFGR = 0x0C00
GICD_IGRPMODR = 0x0D00
GICD_IROUTER = 0x6000
IDREGS = 0xFFD0
PIDR2 = 0xFFE8

GICD_CTLR_ENABLE_G1 = 1 << 1  # EnableGrp1 in the single-security view
GICD_CTLR_ARE_NS = 1 << 4
GICD_CTLR_DS = 1 << 6
PIDR2_GICV3 = 0x3B  # ArchRev [7:4] = 3 (vgic_mmio_read_v3_idregs)

# Redistributor offsets (IHI 0069 12.10, 12.11).
GICR_CTLR = 0x0000
GICR_IIDR = 0x0004
GICR_TYPER = 0x0008
GICR_STATUSR = 0x0010
GICR_WAKER = 0x0014
GICR_SYNCR = 0x00C0
GICR_IGROUPR0 = SGI_BASE + 0x0080
GICR_ISENABLER0 = SGI_BASE + 0x0100
GICR_ICENABLER0 = SGI_BASE + 0x0180
GICR_ISPENDR0 = SGI_BASE + 0x0200
GICR_ICPENDR0 = SGI_BASE + 0x0280
GICR_ISACTIVER0 = SGI_BASE + 0x0300
GICR_ICACTIVER0 = SGI_BASE + 0x0380
GICR_IPRIORITYR0 = SGI_BASE + 0x0400
GICR_ICFGR0 = SGI_BASE + 0x0C00
GICR_IGRPMODR0 = SGI_BASE + 0x0D00
GICR_NSACR = SGI_BASE + 0x0E00

GICR_CTLR_CES = 1 << 1  # reported from KVM_VGIC_IMP_REV_3 on
GICR_CTLR_IR = 1 << 2
GICR_TYPER_LAST = 1 << 4
GICR_IIDR_VALUE = (PRODUCT_ID_KVM << 24) | IMPLEMENTER_ARM  # vgic_mmio_read_v3r_iidr

# ICC_* system registers as (op0, op1, CRn, CRm, op2) (Arm ARM D19, IHI 0069 12.2).
ICC_PMR_EL1: SysregKey = (3, 0, 4, 6, 0)
ICC_IAR0_EL1: SysregKey = (3, 0, 12, 8, 0)
ICC_EOIR0_EL1: SysregKey = (3, 0, 12, 8, 1)
ICC_HPPIR0_EL1: SysregKey = (3, 0, 12, 8, 2)
ICC_BPR0_EL1: SysregKey = (3, 0, 12, 8, 3)
ICC_AP0R_EL1: tuple[SysregKey, ...] = tuple((3, 0, 12, 8, 4 + n) for n in range(4))
ICC_AP1R_EL1: tuple[SysregKey, ...] = tuple((3, 0, 12, 9, n) for n in range(4))
ICC_DIR_EL1: SysregKey = (3, 0, 12, 11, 1)
ICC_RPR_EL1: SysregKey = (3, 0, 12, 11, 3)
ICC_SGI1R_EL1: SysregKey = (3, 0, 12, 11, 5)
ICC_ASGI1R_EL1: SysregKey = (3, 0, 12, 11, 6)
ICC_SGI0R_EL1: SysregKey = (3, 0, 12, 11, 7)
ICC_IAR1_EL1: SysregKey = (3, 0, 12, 12, 0)
ICC_EOIR1_EL1: SysregKey = (3, 0, 12, 12, 1)
ICC_HPPIR1_EL1: SysregKey = (3, 0, 12, 12, 2)
ICC_BPR1_EL1: SysregKey = (3, 0, 12, 12, 3)
ICC_CTLR_EL1: SysregKey = (3, 0, 12, 12, 4)
ICC_IGRPEN0_EL1: SysregKey = (3, 0, 12, 12, 6)
ICC_IGRPEN1_EL1: SysregKey = (3, 0, 12, 12, 7)
# ICC_SRE_EL1 (3, 0, 12, 12, 5) is shared with GICv2 (emu.kvm.vgic.core).

ICC_SRE_VALUE = 0x7  # SRE | DFB | DIB (vgic-v3.c, vgic_v3_enable)
# ICC_CTLR_EL1 read-only fields (IHI 0069 12.2.6): PRIbits [10:8] = bits - 1,
# IDbits [13:11] = 0 (16-bit), SEIS [14] = 0, A3V [15] = 1.
ICC_CTLR_CBPR = 1 << 0
ICC_CTLR_EOIMODE = 1 << 1
ICC_CTLR_RO = (PRI_BITS - 1) << 8 | 1 << 15
# GICD_TYPER.IDbits [23:19] = 10 - 1 without an ITS (INTERRUPT_ID_BITS_SPIS).
GICD_TYPER_IDBITS = (10 - 1) << 19

SGI1R_IRM = 1 << 40

# Every ICC_* register the GICv3 CPU interface answers, by name.
ICC_REGISTERS: dict[str, SysregKey] = {
    "ICC_PMR_EL1": ICC_PMR_EL1,
    "ICC_IAR0_EL1": ICC_IAR0_EL1,
    "ICC_EOIR0_EL1": ICC_EOIR0_EL1,
    "ICC_HPPIR0_EL1": ICC_HPPIR0_EL1,
    "ICC_BPR0_EL1": ICC_BPR0_EL1,
    **{f"ICC_AP0R{n}_EL1": key for n, key in enumerate(ICC_AP0R_EL1)},
    **{f"ICC_AP1R{n}_EL1": key for n, key in enumerate(ICC_AP1R_EL1)},
    "ICC_DIR_EL1": ICC_DIR_EL1,
    "ICC_RPR_EL1": ICC_RPR_EL1,
    "ICC_SGI1R_EL1": ICC_SGI1R_EL1,
    "ICC_ASGI1R_EL1": ICC_ASGI1R_EL1,
    "ICC_SGI0R_EL1": ICC_SGI0R_EL1,
    "ICC_IAR1_EL1": ICC_IAR1_EL1,
    "ICC_EOIR1_EL1": ICC_EOIR1_EL1,
    "ICC_HPPIR1_EL1": ICC_HPPIR1_EL1,
    "ICC_BPR1_EL1": ICC_BPR1_EL1,
    "ICC_CTLR_EL1": ICC_CTLR_EL1,
    "ICC_SRE_EL1": ICC_SRE_EL1,
    "ICC_IGRPEN0_EL1": ICC_IGRPEN0_EL1,
    "ICC_IGRPEN1_EL1": ICC_IGRPEN1_EL1,
}  # ICC_SGI1R_EL1.IRM: all but self


class GicV3(Vgic):
    """GICv3: ``distributor`` and ``redistributors`` (one 128 KiB frame per vCPU)."""

    version = 3
    max_cpus = GICR_MAX_CPUS  # KVM allows 512; QEMU virt's low region holds 123
    sre = ICC_SRE_VALUE

    def __init__(self, nr_cpus: int, mpidrs: list[int] | None = None, nr_irqs: int = NR_IRQS) -> None:
        super().__init__(nr_cpus, mpidrs, nr_irqs)
        self._by_route = {aff & 0xFF_FFFF: cpu for aff, cpu in self._by_affinity.items() if not aff >> 24}
        self.distributor = MmioRegion(
            self, "GICv3 distributor", GICD_BASE, GICD_SIZE, RegisterMap(self._dist_registers())
        )
        self.redistributors = MmioRegion(
            self,
            "GICv3 redistributors",
            GICR_BASE,
            nr_cpus * GICR_FRAME,
            RegisterMap(self._rd_registers()),
            frame=GICR_FRAME,
        )
        self.regions = [(r.base, r.size, r) for r in (self.distributor, self.redistributors)]
        self._sysregs.update(self._icc_registers())

    def _reset_private(self, cpu: int, irq: Irq) -> None:
        irq.group = 1

    def _reset_spi(self, irq: Irq) -> None:
        irq.group = 1  # vgic-init.c; route 0 = the vCPU with affinity 0.0.0
        irq.route = 0

    def route(self, irq: Irq) -> int | None:
        if irq.owner is not None:
            return irq.owner
        return self._by_route.get(irq.route)

    def _irq_groups(self, cpu: int) -> tuple[int, ...]:
        return (1,)  # Group 0 is signalled as FIQ

    def _gprio_mask(self, cpu: int, group: int) -> int:
        c = self.cpus[cpu]
        # IHI 0069 4.8.3: BPR0 splits at bit BPR0+1, Non-secure BPR1 at bit BPR1;
        # with CBPR, Group 1 uses BPR0.
        shift = c.bpr1 if group == 1 and not c.cbpr else c.bpr0 + 1
        return (0xFF << shift) & 0xFF

    def _apr_index(self, group: int) -> int:
        return group

    # Distributor ---------------------------------------------------------------------

    def _dist_registers(self) -> list[Register]:
        def shared(
            name: str, off: int, bits: int, rd: Reader, wr: Writer, widths: tuple[int, ...] = (4,)
        ) -> list[Register]:
            # Private IRQs live in the redistributors: their part here is RAZ/WI
            # (REGISTER_DESC_WITH_BITS_PER_IRQ_SHARED).
            private = bits * NR_PRIVATE // 8
            return [
                Register(name + " (private)", off, private, bits_per_irq=bits, widths=widths),
                Register(name, off + private, bits * (1024 - NR_PRIVATE) // 8, rd, wr, bits, widths),
            ]

        return [
            Register("GICD_CTLR/TYPER/IIDR/TYPER2", GICD_CTLR, 16, self._read_misc, self._write_misc),
            Register("GICD_STATUSR", GICD_STATUSR, 4, rao),  # as KVM: read as ones
            *shared("GICD_IGROUPR", GICD_IGROUPR, 1, self.read_group, self.write_group),
            *shared("GICD_ISENABLER", GICD_ISENABLER, 1, self.read_enable, self.write_senable),
            *shared("GICD_ICENABLER", GICD_ICENABLER, 1, self.read_enable, self.write_cenable),
            *shared("GICD_ISPENDR", GICD_ISPENDR, 1, self.read_pending, self.write_spending),
            *shared("GICD_ICPENDR", GICD_ICPENDR, 1, self.read_pending, self.write_cpending),
            *shared("GICD_ISACTIVER", GICD_ISACTIVER, 1, self.read_active, self.write_sactive),
            *shared("GICD_ICACTIVER", GICD_ICACTIVER, 1, self.read_active, self.write_cactive),
            *shared("GICD_IPRIORITYR", GICD_IPRIORITYR, 8, self.read_priority, self.write_priority, (1, 4)),
            # ARE=1: ITARGETSR and IGRPMODR are RAZ/WI.
            Register("GICD_ITARGETSR", GICD_ITARGETSR, 0x400, bits_per_irq=8, widths=(1, 4)),
            *shared("GICD_ICFGR", GICD_ICFGR, 2, self.read_config, self.write_config),
            Register("GICD_IGRPMODR", GICD_IGRPMODR, 0x80, bits_per_irq=1),
            *shared("GICD_IROUTER", GICD_IROUTER, 64, self._read_irouter, self._write_irouter, (4, 8)),
            Register("GICD_IDREGS", IDREGS, 48, self._read_idregs),
        ]

    def _read_misc(self, cpu: int, off: int, size: int) -> int:
        if off == GICD_CTLR:  # RWP [31] reads 0: writes take effect at once
            return self.enabled * GICD_CTLR_ENABLE_G1 | GICD_CTLR_ARE_NS | GICD_CTLR_DS
        if off == GICD_TYPER:
            return (self.nr_irqs // 32 - 1) | GICD_TYPER_IDBITS
        if off == GICD_IIDR:
            return GICD_IIDR_VALUE
        return 0  # GICD_TYPER2: no nASSGIcap without GICv4.1

    def _write_misc(self, cpu: int, off: int, size: int, value: int) -> None:
        if off == GICD_CTLR:
            self.enabled = bool(value & GICD_CTLR_ENABLE_G1)

    def _read_irouter(self, cpu: int, off: int, size: int) -> int:
        irq = self.irq(cpu, intid_at(off, 64))
        if irq is None or off & 4:
            return 0  # upper word (Aff3) RAZ: KVM keeps Aff2.Aff1.Aff0 only
        return irq.route

    def _write_irouter(self, cpu: int, off: int, size: int, value: int) -> None:
        irq = self.irq(cpu, intid_at(off, 64))
        if irq is not None and not off & 4:
            irq.route = value & 0xFF_FFFF  # Interrupt_Routing_Mode (1 of N) not kept

    def _read_idregs(self, cpu: int, off: int, size: int) -> int:
        return PIDR2_GICV3 if off & 0xFFFF == PIDR2 else 0

    # Redistributors ------------------------------------------------------------------

    def _rd_registers(self) -> list[Register]:
        return [
            Register("GICR_CTLR", GICR_CTLR, 4, lambda c, o, s: GICR_CTLR_IR | GICR_CTLR_CES),
            Register("GICR_IIDR", GICR_IIDR, 4, lambda c, o, s: GICR_IIDR_VALUE),
            Register("GICR_TYPER", GICR_TYPER, 8, self._read_rd_typer, widths=(4, 8)),
            Register("GICR_STATUSR", GICR_STATUSR, 4),
            # KVM: RAZ/WI. Linux's wake-up (clear ProcessorSleep, poll ChildrenAsleep
            # until 0) finishes at once; a sleep request reads back ProcessorSleep=0,
            # which Linux takes as "no power management here".
            Register("GICR_WAKER", GICR_WAKER, 4),
            Register("GICR_SYNCR", GICR_SYNCR, 4),  # never busy
            Register("GICR_IDREGS", IDREGS, 48, self._read_idregs),
            Register("GICR_IGROUPR0", GICR_IGROUPR0, 4, self.read_group, self.write_group),
            Register("GICR_ISENABLER0", GICR_ISENABLER0, 4, self.read_enable, self.write_senable),
            Register("GICR_ICENABLER0", GICR_ICENABLER0, 4, self.read_enable, self.write_cenable),
            Register("GICR_ISPENDR0", GICR_ISPENDR0, 4, self.read_pending, self.write_spending),
            Register("GICR_ICPENDR0", GICR_ICPENDR0, 4, self.read_pending, self.write_cpending),
            Register("GICR_ISACTIVER0", GICR_ISACTIVER0, 4, self.read_active, self.write_sactive),
            Register("GICR_ICACTIVER0", GICR_ICACTIVER0, 4, self.read_active, self.write_cactive),
            Register(
                "GICR_IPRIORITYR",
                GICR_IPRIORITYR0,
                32,
                self.read_priority,
                self.write_priority,
                widths=(1, 4),
            ),
            Register("GICR_ICFGR0/1", GICR_ICFGR0, 8, self.read_config, self.write_config),
            Register("GICR_IGRPMODR0", GICR_IGRPMODR0, 4),
            Register("GICR_NSACR", GICR_NSACR, 4),
        ]

    def _read_rd_typer(self, cpu: int, off: int, size: int) -> int:
        # Affinity [63:32] without Aff3, Processor_Number [23:8], Last [4]
        # (vgic_mmio_read_v3r_typer).
        value = (self.mpidrs[cpu] & 0xFF_FFFF) << 32 | (cpu & 0xFFFF) << 8
        if cpu == self.nr_cpus - 1:
            value |= GICR_TYPER_LAST
        return value >> (8 * (off & 7))

    # CPU interface (ICC_* system registers) ------------------------------------------

    def _icc_registers(
        self,
    ) -> dict[SysregKey, tuple[Callable[[int], int] | None, Callable[[int, int], None] | None]]:
        regs: dict[SysregKey, tuple[Callable[[int], int] | None, Callable[[int, int], None] | None]] = {
            ICC_PMR_EL1: (lambda c: self.cpus[c].pmr, self._write_pmr),
            ICC_IAR0_EL1: (lambda c: self._iar(c, 0), None),
            ICC_IAR1_EL1: (lambda c: self._iar(c, 1), None),
            ICC_EOIR0_EL1: (None, lambda c, v: self._eoi(c, v & 0xFF_FFFF, 0)),
            ICC_EOIR1_EL1: (None, lambda c, v: self._eoi(c, v & 0xFF_FFFF, 1)),
            ICC_HPPIR0_EL1: (lambda c: self._hppir(c, 0), None),
            ICC_HPPIR1_EL1: (lambda c: self._hppir(c, 1), None),
            ICC_BPR0_EL1: (lambda c: self.cpus[c].bpr0, self._write_bpr0),
            ICC_BPR1_EL1: (self._read_bpr1, self._write_bpr1),
            ICC_DIR_EL1: (None, self._write_dir),
            ICC_RPR_EL1: (self.running_priority, None),
            ICC_SGI1R_EL1: (None, lambda c, v: self._write_sgi(c, v, allow_group1=True)),
            # With DS=1, ASGI1R and SGI0R only raise Group 0 SGIs (sys_regs.c, access_gic_sgi).
            ICC_ASGI1R_EL1: (None, lambda c, v: self._write_sgi(c, v, allow_group1=False)),
            ICC_SGI0R_EL1: (None, lambda c, v: self._write_sgi(c, v, allow_group1=False)),
            ICC_CTLR_EL1: (self._read_ctlr, self._write_ctlr),
            ICC_IGRPEN0_EL1: (lambda c: int(self.cpus[c].grpen0), self._write_igrpen0),
            ICC_IGRPEN1_EL1: (lambda c: int(self.cpus[c].grpen1), self._write_igrpen1),
        }
        for group, keys in ((0, ICC_AP0R_EL1), (1, ICC_AP1R_EL1)):
            # 5 priority bits: APR0 only; APR1-3 RAZ/WI.
            regs[keys[0]] = self._apr_accessors(group)
            for key in keys[1:]:
                regs[key] = (lambda c: 0, lambda c, v: None)
        return regs

    def _apr_accessors(self, group: int) -> tuple[Callable[[int], int], Callable[[int, int], None]]:
        def read(cpu: int) -> int:
            return self.cpus[cpu].apr[group]

        def write(cpu: int, value: int) -> None:
            self._write_apr(cpu, group, value)

        return read, write

    def _write_pmr(self, cpu: int, value: int) -> None:
        self.cpus[cpu].pmr = value & PRIORITY_MASK

    def _write_bpr0(self, cpu: int, value: int) -> None:
        self.cpus[cpu].bpr0 = max(value & 7, BPR0_MIN)

    def _read_bpr1(self, cpu: int) -> int:
        c = self.cpus[cpu]
        return min(c.bpr0 + 1, 7) if c.cbpr else c.bpr1  # IHI 0069 12.2.5

    def _write_bpr1(self, cpu: int, value: int) -> None:
        if not self.cpus[cpu].cbpr:  # with CBPR, writes are ignored
            self.cpus[cpu].bpr1 = max(value & 7, BPR1_MIN)

    def _write_apr(self, cpu: int, group: int, value: int) -> None:
        self.cpus[cpu].apr[group] = value & 0xFFFF_FFFF

    def _read_ctlr(self, cpu: int) -> int:
        c = self.cpus[cpu]
        return ICC_CTLR_RO | c.cbpr * ICC_CTLR_CBPR | c.eoimode * ICC_CTLR_EOIMODE

    def _write_ctlr(self, cpu: int, value: int) -> None:
        self.cpus[cpu].cbpr = bool(value & ICC_CTLR_CBPR)
        self.cpus[cpu].eoimode = bool(value & ICC_CTLR_EOIMODE)

    def _write_igrpen0(self, cpu: int, value: int) -> None:
        self.cpus[cpu].grpen0 = bool(value & 1)

    def _write_igrpen1(self, cpu: int, value: int) -> None:
        self.cpus[cpu].grpen1 = bool(value & 1)

    def _iar(self, cpu: int, group: int) -> int:
        """ICC_IAR0/1_EL1: acknowledge the HPPI if it is of ``group`` and may preempt."""
        irq = self.hppi(cpu)
        if irq is None or irq.group != group or not self._can_preempt(cpu, irq):
            return SPURIOUS
        return self._ack(cpu, irq)

    def _hppir(self, cpu: int, group: int) -> int:
        irq = self.hppi(cpu)
        return SPURIOUS if irq is None or irq.group != group else irq.intid

    def _write_dir(self, cpu: int, value: int) -> None:
        intid = value & 0xFF_FFFF
        if intid < 1020:
            self._deactivate(cpu, intid)

    def _write_sgi(self, cpu: int, value: int, allow_group1: bool) -> None:
        """ICC_SGI1R/ASGI1R/SGI0R_EL1 (IHI 0069 12.2.23): INTID [27:24], TargetList
        [15:0] of Aff0 values under Aff3 [55:48].Aff2 [39:32].Aff1 [23:16], or IRM [40]."""
        intid = (value >> 24) & 0xF
        if value & SGI1R_IRM:
            targets = [t for t in range(self.nr_cpus) if t != cpu]
        else:
            cluster = (
                ((value >> 48) & 0xFF) << 24 | ((value >> 32) & 0xFF) << 16 | ((value >> 16) & 0xFF) << 8
            )
            targets = [
                self._by_affinity[cluster | aff0]
                for aff0 in range(16)
                if value >> aff0 & 1 and cluster | aff0 in self._by_affinity
            ]
        for target in targets:
            self._send_sgi(target, intid, group0_only=not allow_group1)
