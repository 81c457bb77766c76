"""Stage-1 translation walk (4 KiB granule), to classify the MMU faults Unicorn reports bare.

Unicorn executes the guest's MMU itself but reports a translation failure only as
"prefetch abort" or "data abort" with no FAR and no fault status (engine notes 0.3, 4).
The architecture says which fault it was; this walk of the guest's tables (Arm ARM D8,
VMSAv8-64) recovers the fault status code and level for ESR_EL1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emu.arm.cpu import Cpu

ID_AA64MMFR0_EL1 = (3, 0, 0, 7, 0)
TCR_EL1 = (3, 0, 2, 0, 2)
TTBR0_EL1 = (3, 0, 2, 0, 0)
TTBR1_EL1 = (3, 0, 2, 0, 1)
SCTLR_EL1 = (3, 0, 1, 0, 0)

FSC_ADDRESS_SIZE = 0x00  # + level
FSC_TRANSLATION = 0x04  # + level
FSC_ACCESS_FLAG = 0x08  # + level
FSC_PERMISSION = 0x0C  # + level
FSC_WALK_EXTABT = 0x14  # + level: synchronous external abort on a table walk

_OUTPUT = 0x0000_FFFF_FFFF_F000
# ID_AA64MMFR0_EL1.PARange -> physical address bits (Arm ARM D19, ID_AA64MMFR0_EL1).
_PA_BITS = {0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48, 6: 52}
_TCR_TBI0 = 1 << 37
_TCR_TBI1 = 1 << 38
_TG0_4K = 0b00
_TG1_4K = 0b10


@dataclass(frozen=True)
class Walk:
    """The outcome: a physical address, or a fault status code (None: not a 4 KiB-granule walk)."""

    pa: int | None = None
    fsc: int | None = None


def pa_bits(cpu: Cpu) -> int:
    """The implemented physical address size: 44 bits on Unicorn's Cortex-A72 (PARange 4)."""
    return _PA_BITS.get(cpu.uc.cpr_read(*ID_AA64MMFR0_EL1) & 0xF, 48)


def beyond_pa_range(cpu: Cpu, va: int) -> bool:
    """With stage 1 disabled, is ``va`` outside the physical address range?

    The address is then the output address, and bits above the implemented PA size (up
    to bit 55 when top-byte-ignore applies, bit 63 otherwise) give an Address size fault
    at level 0 (Arm ARM D8.2, "Behavior when stage 1 address translation is disabled";
    AArch64.S1DisabledOutput), FSC 0b000000, as QEMU's get_phys_addr_disabled raises.
    """
    tcr = cpu.uc.cpr_read(*TCR_EL1)
    tbi = tcr & (_TCR_TBI1 if (va >> 55) & 1 else _TCR_TBI0)
    top = 55 if tbi else 63
    return (va & ((1 << (top + 1)) - 1)) >> pa_bits(cpu) != 0


def walk(cpu: Cpu, va: int, *, write: bool = False, fetch: bool = False, el0: bool = False) -> Walk:
    uc = cpu.uc
    if not uc.cpr_read(*SCTLR_EL1) & 1:
        return Walk(pa=va)
    tcr = uc.cpr_read(*TCR_EL1)
    upper = (va >> 55) & 1
    if upper:
        txsz, epd, tg, ttbr = (tcr >> 16) & 0x3F, (tcr >> 23) & 1, (tcr >> 30) & 3, uc.cpr_read(*TTBR1_EL1)
        granule_ok = tg == _TG1_4K
    else:
        txsz, epd, tg, ttbr = tcr & 0x3F, (tcr >> 7) & 1, (tcr >> 14) & 3, uc.cpr_read(*TTBR0_EL1)
        granule_ok = tg == _TG0_4K
    if not granule_ok:
        return Walk()
    va_bits = 64 - txsz
    high = va >> va_bits
    if epd or high != (((1 << txsz) - 1) if upper else 0):
        return Walk(fsc=FSC_TRANSLATION)  # level 0: outside the range or walks disabled
    level = 4 - (va_bits - 12 + 8) // 9
    table = ttbr & _OUTPUT
    while True:
        shift = 12 + 9 * (3 - level)
        index = (va >> shift) & ((1 << min(9, va_bits - shift)) - 1)
        address = table + 8 * index
        if not cpu.memory.in_ram(address):
            return Walk(fsc=FSC_WALK_EXTABT + level)
        (desc,) = struct.unpack("<Q", cpu.memory.read_memory(address, 8))
        kind = desc & 3
        if kind & 1 == 0 or (level == 3 and kind != 3) or (level == 0 and kind == 1):
            return Walk(fsc=FSC_TRANSLATION + level)
        if kind == 3 and level < 3:
            table = desc & _OUTPUT
            level += 1
            continue
        if not desc & (1 << 10):
            return Walk(fsc=FSC_ACCESS_FLAG + level)
        ap = (desc >> 6) & 3  # AP[2:1]: bit 1 = read-only, bit 0 = EL0 access
        uxn, pxn = (desc >> 54) & 1, (desc >> 53) & 1
        # EL1 never executes what EL0 can write (AP = 0b01).
        denied = (el0 and not ap & 1) or (write and ap & 2) or (fetch and (uxn if el0 else pxn or ap == 0b01))
        if denied:
            return Walk(fsc=FSC_PERMISSION + level)
        mask = (1 << shift) - 1
        return Walk(pa=(desc & _OUTPUT & ~mask) | (va & mask))
