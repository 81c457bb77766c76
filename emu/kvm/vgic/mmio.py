"""Register tables and the MMIO regions that dispatch through them.

As in KVM's vgic-mmio.c, a register block is a table of rows (offset, length, bits per
IRQ, read handler, write handler, allowed access widths). An access finds its row; if
there is none, the width is not allowed, the access is misaligned or names an IRQ past
the last one, it reads as zero and writes are ignored (``dispatch_mmio_read`` and
``check_region`` do the same).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


class Vgic(Protocol):
    """What a region needs of its GIC (``emu.kvm.vgic.core.Vgic``): the IRQ count and the
    line update after a write. A protocol, so this module does not import the core."""

    nr_irqs: int

    def update(self) -> None: ...


# Handlers get (cpu, offset, size[, value]); offset is relative to the block (or to the
# redistributor frame), so per-IRQ handlers recover the INTID with ``intid_at``.
Reader = Callable[[int, int, int], int]
Writer = Callable[[int, int, int, int], None]


def intid_at(offset: int, bits_per_irq: int) -> int:
    """The first INTID an access at ``offset`` covers in a per-IRQ register array.

    Each array spans ``bits_per_irq * 1024 / 8`` bytes and starts on a multiple of its
    span, so the INTID follows from the offset's low bits (KVM's VGIC_ADDR_TO_INTID).
    """
    return ((offset & (bits_per_irq * 128 - 1)) * 8) // bits_per_irq


def raz(cpu: int, offset: int, size: int) -> int:
    """Read as zero."""
    return 0


def rao(cpu: int, offset: int, size: int) -> int:
    """Read as ones."""
    return (1 << (8 * size)) - 1


def wi(cpu: int, offset: int, size: int, value: int) -> None:
    """Write ignored."""


@dataclass(frozen=True)
class Register:
    """One row of a register table: ``length`` bytes from ``offset``."""

    name: str
    offset: int
    length: int
    read: Reader = raz
    write: Writer = wi
    bits_per_irq: int = 0  # > 0: an array with this many bits per INTID
    widths: tuple[int, ...] = (4,)


class RegisterMap:
    """A register table, looked up by offset."""

    def __init__(self, rows: Sequence[Register]) -> None:
        self.rows = sorted(rows, key=lambda r: r.offset)
        self._starts = [r.offset for r in self.rows]
        for a, b in zip(self.rows, self.rows[1:], strict=False):
            if a.offset + a.length > b.offset:
                raise ValueError(f"register {a.name} overlaps {b.name}")

    def find(self, offset: int, size: int, nr_irqs: int) -> Register | None:
        """The row an access hits, or None if the access is not one the row allows."""
        i = bisect_right(self._starts, offset) - 1
        if i < 0:
            return None
        row = self.rows[i]
        if offset + size > row.offset + row.length or size not in row.widths or offset % size:
            return None
        if row.bits_per_irq and intid_at(offset, row.bits_per_irq) >= nr_irqs:
            return None
        return row


class MmioRegion:
    """One guest-physical MMIO window of the GIC; the VMM maps it on every vCPU.

    ``read``/``write`` take the accessing vCPU's index. With ``frame`` set the window is
    a run of per-vCPU frames (GICv3 redistributors): the frame an access falls in picks
    the vCPU whose banked registers it reaches, whoever accesses it.
    """

    def __init__(
        self, vgic: Vgic, name: str, base: int, size: int, regs: RegisterMap, frame: int = 0
    ) -> None:
        self.vgic = vgic
        self.name = name
        self.base = base
        self.size = size
        self.regs = regs
        self.frame = frame

    def _locate(self, cpu: int, offset: int) -> tuple[int, int]:
        if not 0 <= offset < self.size:
            raise ValueError(f"{self.name}: offset {offset:#x} outside the region")
        if self.frame:
            return offset // self.frame, offset % self.frame
        return cpu, offset

    def read(self, cpu: int, offset: int, size: int) -> int:
        """The value a ``size``-byte load at ``base + offset`` by vCPU ``cpu`` returns."""
        bank, offset = self._locate(cpu, offset)
        row = self.regs.find(offset, size, self.vgic.nr_irqs)
        return row.read(bank, offset, size) & ((1 << (8 * size)) - 1) if row else 0

    def write(self, cpu: int, offset: int, size: int, value: int) -> None:
        """A ``size``-byte store at ``base + offset`` by vCPU ``cpu``."""
        bank, offset = self._locate(cpu, offset)
        row = self.regs.find(offset, size, self.vgic.nr_irqs)
        if row:
            row.write(bank, offset, size, value & ((1 << (8 * size)) - 1))
            self.vgic.update()
