"""What GICv2 and GICv3 share: interrupt state, routing to vCPUs, the CPU interface's
priority logic, the IRQ line of each vCPU, trace events and snapshots.

The model follows KVM's vgic (arch/arm64/kvm/vgic/): KVM_VGIC_IMP_REV_3 (what Linux
5.19 and later report), 5 bits of priority (VGIC_PRI_BITS), the distributor's single
enable bit gating every interrupt, and the default IRQ configuration of vgic-init.c.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Any

from emu.errors import KvmError
from emu.kvm.vgic.irq import EDGE, LEVEL, NR_PRIVATE, NR_SGIS, Irq
from emu.kvm.vgic.mmio import MmioRegion, intid_at

# QEMU virt asks for NUM_IRQS (256) SPIs plus the 32 private IRQs (hw/arm/virt.c,
# create_gic: "num-irq" = NUM_IRQS + 32), so GICD_TYPER.ITLinesNumber reads 8.
NR_IRQS = 288

PRI_BITS = 5  # KVM's VGIC_PRI_BITS
PRIORITY_MASK = (0xFF << (8 - PRI_BITS)) & 0xFF  # 0xF8: unimplemented low bits RAZ/WI
IDLE_PRIORITY = 0xFF
# Minimum binary points for 5 priority bits (IHI 0069 ICC_BPR0_EL1 / ICC_BPR1_EL1,
# IHI 0048B 3.3.3): Group 0 (GICC_BPR) 7 - 5 = 2, Group 1 (GICC_ABPR) one more.
BPR0_MIN = 7 - PRI_BITS
BPR1_MIN = BPR0_MIN + 1

# GICD_IIDR: ProductID 0x4B (PRODUCT_ID_KVM) [31:24], Revision 3 [15:12], Implementer
# 0x43B (Arm) [11:0] (vgic-mmio-v2.c / vgic-mmio-v3.c, vgic_mmio_read_v*_misc).
PRODUCT_ID_KVM = 0x4B
IMPLEMENTER_ARM = 0x43B
IMP_REV = 3
GICD_IIDR_VALUE = (PRODUCT_ID_KVM << 24) | (IMP_REV << 12) | IMPLEMENTER_ARM

LineCallback = Callable[[int, bool], None]
EventCallback = Callable[[str, int, int], None]
SysregKey = tuple[int, int, int, int, int]

# ICC_SRE_EL1 is common: GICv3 reads SRE|DFB|DIB, a GICv2 guest on a GICv3 host reads 0
# (KVM's access_gic_sre returns vgic_sre; writes are ignored).
ICC_SRE_EL1: SysregKey = (3, 0, 12, 12, 5)


def kvm_mpidr(index: int) -> int:
    """The MPIDR_EL1 KVM gives vCPU ``index`` (sys_regs.c, reset_mpidr): 16 per cluster."""
    return (1 << 31) | (((index >> 12) & 0xFF) << 16) | (((index >> 4) & 0xFF) << 8) | (index & 0xF)


def affinity(mpidr: int) -> int:
    """Aff3.Aff2.Aff1.Aff0 of an MPIDR packed into 32 bits (Aff3 from bits [39:32])."""
    return ((mpidr >> 8) & 0xFF00_0000) | (mpidr & 0xFF_FFFF)


@dataclass
class CpuInterface:
    """One vCPU's CPU interface (what KVM keeps in the VMCR and the APRs)."""

    grpen0: bool = False
    grpen1: bool = False
    ackctl: bool = False  # GICv2 GICC_CTLR.AckCtl
    fiqen: bool = False  # GICv2 GICC_CTLR.FIQEn: Group 0 goes to FIQ, not IRQ
    cbpr: bool = False
    eoimode: bool = False  # EOI drops priority only; DIR deactivates
    pmr: int = 0
    bpr0: int = BPR0_MIN
    bpr1: int = BPR1_MIN
    # Active priorities: bit n set = an interrupt of group priority n << 3 is active.
    # 5 priority bits need only APR0 (IHI 0069 ICC_AP1R<n>_EL1). GICv2 uses apr[0] only.
    apr: list[int] = field(default_factory=lambda: [0, 0])


class Vgic:
    """An in-kernel GIC for ``nr_cpus`` vCPUs; see ``GicV2`` and ``GicV3``.

    The VMM maps ``regions`` (base, size, region) and forwards every access with the
    accessing vCPU's index; it sets HCR_EL2.VI from ``on_line_change(cpu, level)`` (or
    polls ``irq_pending``), and devices drive their lines through ``set_irq_level``.
    """

    version: int
    max_cpus: int
    sre: int  # what ICC_SRE_EL1 reads
    regions: list[tuple[int, int, MmioRegion]]

    def __init__(self, nr_cpus: int, mpidrs: list[int] | None = None, nr_irqs: int = NR_IRQS) -> None:
        if nr_cpus < 1:
            raise ValueError(f"a GIC needs at least one vCPU, got {nr_cpus}")
        if nr_cpus > self.max_cpus:
            raise KvmError(
                errno.E2BIG,
                f"GICv{self.version} supports at most {self.max_cpus} vCPUs, the VM has {nr_cpus}",
            )
        # KVM_DEV_ARM_VGIC_GRP_NR_IRQS: a multiple of 32, at least one block of SPIs,
        # below the special INTIDs (vgic-kvm-device.c).
        if nr_irqs % 32 or not 64 <= nr_irqs <= 992:
            raise ValueError(f"nr_irqs must be a multiple of 32 in 64..992, got {nr_irqs}")
        mpidrs = list(mpidrs) if mpidrs is not None else [kvm_mpidr(i) for i in range(nr_cpus)]
        if len(mpidrs) != nr_cpus:
            raise ValueError(f"{len(mpidrs)} MPIDRs given for {nr_cpus} vCPUs")
        self._by_affinity = {affinity(m): i for i, m in enumerate(mpidrs)}
        if len(self._by_affinity) != nr_cpus:
            raise ValueError("two vCPUs share an MPIDR affinity")
        self.nr_cpus = nr_cpus
        self.mpidrs = mpidrs
        self.nr_irqs = nr_irqs
        self.enabled = False
        self.private = [[Irq(i, owner=cpu) for i in range(NR_PRIVATE)] for cpu in range(nr_cpus)]
        self.spis = [Irq(i) for i in range(NR_PRIVATE, nr_irqs)]
        for cpu, bank in enumerate(self.private):
            for irq in bank:
                # vgic-init.c: SGIs enabled and edge, PPIs level and read-only.
                irq.enabled = irq.intid < NR_SGIS
                irq.config = EDGE if irq.intid < NR_SGIS else LEVEL
                self._reset_private(cpu, irq)
        for irq in self.spis:
            self._reset_spi(irq)
        self.cpus = [CpuInterface() for _ in range(nr_cpus)]
        self.on_line_change: LineCallback | None = None
        self.on_event: EventCallback | None = None
        self._lines = [False] * nr_cpus
        self._sysregs: dict[
            SysregKey, tuple[Callable[[int], int] | None, Callable[[int, int], None] | None]
        ] = {
            ICC_SRE_EL1: (lambda cpu: self.sre, lambda cpu, v: None),
        }

    # Version hooks -------------------------------------------------------------------

    def _reset_private(self, cpu: int, irq: Irq) -> None:
        """Set the version's reset group and targeting of a private IRQ."""
        raise NotImplementedError

    def _reset_spi(self, irq: Irq) -> None:
        """Set the version's reset group and targeting of an SPI."""
        raise NotImplementedError

    def route(self, irq: Irq) -> int | None:
        """The vCPU an interrupt is delivered to, or None if it reaches none."""
        raise NotImplementedError

    def _irq_groups(self, cpu: int) -> tuple[int, ...]:
        """The groups the CPU interface signals on the IRQ line (the rest go to FIQ)."""
        raise NotImplementedError

    def _gprio_mask(self, cpu: int, group: int) -> int:
        """The mask that keeps the group-priority bits of a priority (binary point)."""
        raise NotImplementedError

    def _apr_index(self, group: int) -> int:
        """Which active-priority register a group's acknowledged interrupts mark."""
        raise NotImplementedError

    def _ack_value(self, irq: Irq) -> int:
        """Clear what acknowledging takes and return the IAR value (GICv2 adds the source)."""
        irq.pending_latch = False
        return irq.intid

    # Device side ---------------------------------------------------------------------

    def irq(self, cpu: int, intid: int) -> Irq | None:
        """The IRQ ``intid`` as vCPU ``cpu`` sees it (its own bank for SGIs and PPIs)."""
        if intid < NR_PRIVATE:
            return self.private[cpu][intid]
        if intid < self.nr_irqs:
            return self.spis[intid - NR_PRIVATE]
        return None

    def set_irq_level(self, intid: int, level: bool, cpu: int | None = None) -> None:
        """Drive an input: a PPI of vCPU ``cpu`` (timers: 27, 30) or an SPI (``cpu`` None).

        As KVM_IRQ_LINE does (vgic.c, vgic_validate_injection): a level-sensitive IRQ
        follows the line; on an edge-triggered one every assertion latches it pending.
        """
        if not NR_SGIS <= intid < self.nr_irqs:
            raise ValueError(f"INTID {intid} is not a PPI or SPI of this GIC")
        if intid < NR_PRIVATE:
            if cpu is None or not 0 <= cpu < self.nr_cpus:
                raise ValueError(f"PPI {intid} needs the vCPU it belongs to, got {cpu}")
        elif cpu is not None:
            raise ValueError(f"SPI {intid} is not per-vCPU; pass cpu=None")
        irq = self.irq(cpu or 0, intid)
        assert irq is not None
        was = irq.pending
        if irq.config == LEVEL:
            irq.line_level = bool(level)
        elif level:
            irq.pending_latch = True
        self._raised(irq, was)
        self.update()

    def irq_pending(self, cpu: int) -> bool:
        """vCPU ``cpu``'s IRQ line: an interrupt it would take now, past PMR and preemption."""
        return self._lines[cpu]

    # System registers ----------------------------------------------------------------

    def sysreg_read(self, cpu: int, key: SysregKey) -> int | None:
        """Read an ICC_* register by (op0, op1, CRn, CRm, op2); None if there is no such
        readable register (the VMM then treats the access as any unknown one: UNDEF)."""
        entry = self._sysregs.get(tuple(key))  # type: ignore[arg-type]
        if entry is None or entry[0] is None:
            return None
        return entry[0](cpu)

    def sysreg_write(self, cpu: int, key: SysregKey, value: int) -> bool:
        """Write an ICC_* register; False if there is no such writable register."""
        entry = self._sysregs.get(tuple(key))  # type: ignore[arg-type]
        if entry is None or entry[1] is None:
            return False
        entry[1](cpu, value & 0xFFFF_FFFF_FFFF_FFFF)
        self.update()
        return True

    # Signalling ----------------------------------------------------------------------

    def _emit(self, kind: str, cpu: int, intid: int) -> None:
        if self.on_event is not None:
            self.on_event(kind, cpu, intid)

    def _raised(self, irq: Irq, was_pending: bool) -> None:
        """Report ``irq`` becoming pending; cpu is its target, -1 if it has none."""
        if irq.pending and not was_pending:
            target = self.route(irq)
            self._emit("raised", -1 if target is None else target, irq.intid)

    def _latch(self, irq: Irq) -> None:
        was = irq.pending
        irq.pending_latch = True
        self._raised(irq, was)

    def _ready_spis(self) -> dict[int, list[Irq]]:
        """SPIs that are enabled, pending and not active, by the vCPU they route to."""
        ready: dict[int, list[Irq]] = {}
        for irq in self.spis:
            if irq.enabled and not irq.active and irq.pending:
                target = self.route(irq)
                if target is not None:
                    ready.setdefault(target, []).append(irq)
        return ready

    def hppi(
        self, cpu: int, groups: Iterable[int] = (0, 1), ready: dict[int, list[Irq]] | None = None
    ) -> Irq | None:
        """The highest-priority pending interrupt for ``cpu`` among enabled ``groups``.

        Active interrupts (including active-and-pending) are not candidates; equal
        priorities go to the lowest INTID. ``ready`` is ``_ready_spis()`` if known.
        """
        if not self.enabled:
            return None
        c = self.cpus[cpu]
        wanted = {g for g in groups if (c.grpen1 if g else c.grpen0)}
        if not wanted:
            return None
        spis = (self._ready_spis() if ready is None else ready).get(cpu, ())
        best = None
        for irq in chain(self.private[cpu], spis):
            if (
                irq.enabled
                and not irq.active
                and irq.group in wanted
                and irq.pending
                and (best is None or (irq.priority, irq.intid) < (best.priority, best.intid))
            ):
                best = irq
        return best

    def running_priority(self, cpu: int) -> int:
        """The group priority of the highest-priority active interrupt, 0xFF when idle."""
        bits = self.cpus[cpu].apr[0] | self.cpus[cpu].apr[1]
        if not bits:
            return IDLE_PRIORITY
        return ((bits & -bits).bit_length() - 1) << (8 - PRI_BITS)

    def _can_preempt(self, cpu: int, irq: Irq) -> bool:
        """IHI 0069 4.8 / IHI 0048B 3.3: priority above PMR and group priority above RPR."""
        if irq.priority >= self.cpus[cpu].pmr:
            return False
        running = self.running_priority(cpu)
        if running == IDLE_PRIORITY:
            return True
        mask = self._gprio_mask(cpu, irq.group)
        return (irq.priority & mask) < (running & mask)

    def _ack(self, cpu: int, irq: Irq) -> int:
        """Acknowledge: pending -> active (or active-and-pending), set its active priority."""
        value = self._ack_value(irq)
        irq.active = True
        gprio = irq.priority & self._gprio_mask(cpu, irq.group)
        self.cpus[cpu].apr[self._apr_index(irq.group)] |= 1 << (gprio >> (8 - PRI_BITS))
        self._emit("acked", cpu, irq.intid)
        self.update()
        return value

    def _drop_priority(self, cpu: int, group: int) -> None:
        """Clear the highest active priority (IHI 0069 4.8.5: EOI drops it, whatever INTID)."""
        apr = self.cpus[cpu].apr
        bits = apr[0] | apr[1]
        if bits:
            low = bits & -bits
            first = self._apr_index(group)
            index = first if apr[first] & low else 1 - first
            apr[index] &= ~low

    def _deactivate(self, cpu: int, intid: int) -> None:
        irq = self.irq(cpu, intid)
        if irq is not None and irq.active:
            irq.active = False
            self._emit("completed", cpu, intid)

    def _eoi(self, cpu: int, intid: int, group: int) -> None:
        """EOIR: priority drop, and deactivation too unless EOImode is set."""
        if intid >= 1020:  # special INTIDs are ignored (IHI 0069 2.2.1)
            return
        self._drop_priority(cpu, group)
        if not self.cpus[cpu].eoimode:
            self._deactivate(cpu, intid)

    def _send_sgi(
        self, target: int, intid: int, source: int | None = None, group0_only: bool = False
    ) -> None:
        """Make SGI ``intid`` pending on ``target``; GICv2 records the sending vCPU."""
        irq = self.private[target][intid]
        if group0_only and irq.group:
            return
        was = irq.pending
        if source is not None:
            irq.source |= 1 << source
        irq.pending_latch = True
        self._raised(irq, was)

    def update(self) -> None:
        """Recompute every vCPU's IRQ line and report the ones that changed."""
        ready = self._ready_spis()
        old, self._lines = self._lines, [self._line(cpu, ready) for cpu in range(self.nr_cpus)]
        if self.on_line_change is not None:
            for cpu, (was, now) in enumerate(zip(old, self._lines, strict=True)):
                if was != now:
                    self.on_line_change(cpu, now)

    def _line(self, cpu: int, ready: dict[int, list[Irq]]) -> bool:
        best = self.hppi(cpu, self._irq_groups(cpu), ready)
        return best is not None and self._can_preempt(cpu, best)

    # Per-IRQ register arrays (vgic-mmio.c) ---------------------------------------------

    def _read_field(self, cpu: int, offset: int, size: int, bits: int, get: Callable[[Irq], int]) -> int:
        first = intid_at(offset, bits)
        value = 0
        for i in range(size * 8 // bits):
            irq = self.irq(cpu, first + i)
            if irq is not None:
                value |= int(get(irq)) << (i * bits)
        return value

    def _write_field(
        self, cpu: int, offset: int, size: int, value: int, bits: int, put: Callable[[Irq, int], None]
    ) -> None:
        first = intid_at(offset, bits)
        for i in range(size * 8 // bits):
            irq = self.irq(cpu, first + i)
            if irq is not None:
                put(irq, (value >> (i * bits)) & ((1 << bits) - 1))

    def _v2_sgi(self, irq: Irq) -> bool:
        """GICv2 SGIs are pended through GICD_SGIR/SPENDSGIR only: ISPENDR0 bits are WI."""
        return self.version == 2 and irq.intid < NR_SGIS

    def read_group(self, cpu: int, off: int, size: int) -> int:
        return self._read_field(cpu, off, size, 1, lambda i: i.group)

    def write_group(self, cpu: int, off: int, size: int, value: int) -> None:
        def put(irq: Irq, bit: int) -> None:
            irq.group = bit

        self._write_field(cpu, off, size, value, 1, put)

    def read_enable(self, cpu: int, off: int, size: int) -> int:
        return self._read_field(cpu, off, size, 1, lambda i: i.enabled)

    def write_senable(self, cpu: int, off: int, size: int, value: int) -> None:
        def put(irq: Irq, bit: int) -> None:
            irq.enabled |= bool(bit)

        self._write_field(cpu, off, size, value, 1, put)

    def write_cenable(self, cpu: int, off: int, size: int, value: int) -> None:
        def put(irq: Irq, bit: int) -> None:
            irq.enabled &= not bit

        self._write_field(cpu, off, size, value, 1, put)

    def read_pending(self, cpu: int, off: int, size: int) -> int:
        return self._read_field(cpu, off, size, 1, lambda i: i.pending)

    def write_spending(self, cpu: int, off: int, size: int, value: int) -> None:
        def put(irq: Irq, bit: int) -> None:
            if bit and not self._v2_sgi(irq):
                self._latch(irq)

        self._write_field(cpu, off, size, value, 1, put)

    def write_cpending(self, cpu: int, off: int, size: int, value: int) -> None:
        def put(irq: Irq, bit: int) -> None:
            if bit and not self._v2_sgi(irq):
                irq.pending_latch = False  # a level IRQ stays pending while its line is high

        self._write_field(cpu, off, size, value, 1, put)

    def read_active(self, cpu: int, off: int, size: int) -> int:
        return self._read_field(cpu, off, size, 1, lambda i: i.active)

    def write_sactive(self, cpu: int, off: int, size: int, value: int) -> None:
        def put(irq: Irq, bit: int) -> None:
            irq.active |= bool(bit)

        self._write_field(cpu, off, size, value, 1, put)

    def write_cactive(self, cpu: int, off: int, size: int, value: int) -> None:
        def put(irq: Irq, bit: int) -> None:
            irq.active &= not bit

        self._write_field(cpu, off, size, value, 1, put)

    def read_priority(self, cpu: int, off: int, size: int) -> int:
        return self._read_field(cpu, off, size, 8, lambda i: i.priority)

    def write_priority(self, cpu: int, off: int, size: int, value: int) -> None:
        def put(irq: Irq, byte: int) -> None:
            irq.priority = byte & PRIORITY_MASK

        self._write_field(cpu, off, size, value, 8, put)

    def read_config(self, cpu: int, off: int, size: int) -> int:
        # Int_config bit 1 set = edge-triggered (IHI 0048B 4.3.13).
        return self._read_field(cpu, off, size, 2, lambda i: 2 if i.config == EDGE else 0)

    def write_config(self, cpu: int, off: int, size: int, value: int) -> None:
        def put(irq: Irq, bits: int) -> None:
            # SGIs are always edge; KVM keeps PPIs level for the timers (vgic_mmio_write_config).
            if irq.intid >= NR_PRIVATE:
                irq.config = EDGE if bits & 2 else LEVEL

        self._write_field(cpu, off, size, value, 2, put)

    # Snapshots -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain data (JSON-able); ``restore`` takes it back exactly."""
        return {
            "version": self.version,
            "nr_cpus": self.nr_cpus,
            "mpidrs": list(self.mpidrs),
            "nr_irqs": self.nr_irqs,
            "enabled": self.enabled,
            "private": [[irq.state() for irq in bank] for bank in self.private],
            "spis": [irq.state() for irq in self.spis],
            "cpus": [asdict(c) for c in self.cpus],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load a ``snapshot()`` of a GIC of the same shape; lines that change are reported."""
        shape = (self.version, self.nr_cpus, list(self.mpidrs), self.nr_irqs)
        theirs = (state["version"], state["nr_cpus"], list(state["mpidrs"]), state["nr_irqs"])
        if shape != theirs:
            raise ValueError(
                f"snapshot of GICv{theirs[0]} with {theirs[1]} vCPUs and "
                f"{theirs[3]} IRQs does not fit GICv{shape[0]} with "
                f"{shape[1]} vCPUs and {shape[3]} IRQs (or the MPIDRs differ)"
            )
        self.enabled = bool(state["enabled"])
        for bank, saved in zip(self.private, state["private"], strict=True):
            for irq, s in zip(bank, saved, strict=True):
                irq.load(s)
        for irq, s in zip(self.spis, state["spis"], strict=True):
            irq.load(s)
        self.cpus = [CpuInterface(**{**c, "apr": list(c["apr"])}) for c in state["cpus"]]
        self.update()
