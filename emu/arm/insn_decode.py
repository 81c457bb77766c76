"""Which address a faulting load or store was accessing, rebuilt from the instruction.

Unicorn reports aborts without FAR (engine notes 0.3), and its unmapped-memory hook
gives the *physical* address, so the virtual address that FAR_EL1 must hold is worked
out from the instruction's addressing mode and the registers.

``decode`` is a small decoder for the A64 "Loads and Stores" encoding group (Arm ARM
DDI 0487, C4.1 "A64 instruction set encoding", Loads and Stores, and the per-class
tables that follow it), plus DC ZVA, the one system instruction that writes memory. It
extracts only what a fault report needs: the base register and offset, the access
size, whether it writes, and whether alignment is checked before translation. It
follows the bit fields the way the hardware (and QEMU) does, so it accepts encodings a
disassembler rejects, such as an LDAXR whose should-be-one Rs/Rt2 fields are not all
ones (0xc854e373), which Unicorn executes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emu.arm.cpu import Cpu

M64 = (1 << 64) - 1

# Base "registers" beyond X0..X30.
SP = 31  # Rn = 31 in a load/store is the stack pointer
PC = 32  # PC-relative literal
XZR = 33  # Rt = 31 in DC ZVA is the zero register

# DC ZVA Xt: SYS #3, C7, C4, #1, Xt.
_DC_ZVA_MASK, _DC_ZVA_BITS = 0xFFFF_FFE0, 0xD50B_7420
# DCZID_EL0.BS = 4 on Unicorn's CPUs: blocks of 4 << 4 = 64 bytes.
DC_ZVA_BLOCK = 64


@dataclass(frozen=True)
class LoadStore:
    """The addressing of one load/store encoding, before register values are known.

    The first byte accessed is ``base + offset`` (+ the extended, shifted index register
    when ``index`` is set); post-indexed forms access ``base`` itself (offset 0).
    """

    base: int  # 0..30 = Xn, or SP, PC, XZR
    offset: int = 0
    index: int | None = None  # Rm (31 = XZR)
    extend: int = 0b011  # option field: 010 UXTW, 011 LSL, 110 SXTW, 111 SXTX
    shift: int = 0
    size: int = 8  # bytes of the first access
    is_write: bool = False
    # Exclusive, acquire/release and atomic accesses: unaligned ones fault on alignment
    # before translation (Arm ARM B2.5.2, "Alignment of data accesses").
    checked: bool = False


@dataclass(frozen=True)
class MemoryAccess:
    address: int
    is_write: bool
    size: int = 8
    checked: bool = False


def _sext(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


def decode(word: int) -> LoadStore | None:
    """Decode a load/store (or DC ZVA); None for anything else, including prefetches."""
    if word & _DC_ZVA_MASK == _DC_ZVA_BITS:
        rt = word & 31
        return LoadStore(XZR if rt == 31 else rt, size=DC_ZVA_BLOCK, is_write=True)
    if (word >> 25) & 0b0101 != 0b0100:  # op0 bits 27 = 1 and 25 = 0: Loads and Stores
        return None
    rt = word & 31
    rn = (word >> 5) & 31
    size = word >> 30
    vector = (word >> 26) & 1
    b29_27 = (word >> 27) & 0b111
    b25_24 = (word >> 24) & 0b11

    if (word >> 23) & 0x7F == 0b0011000 or (word >> 23) & 0x7F == 0b0011001:
        # Advanced SIMD load/store multiple structures (post-indexed: bit 23).
        if word >> 31:
            return None
        return LoadStore(rn, size=8 << ((word >> 30) & 1), is_write=not (word >> 22) & 1)
    if (word >> 23) & 0x7F in (0b0011010, 0b0011011):
        # Advanced SIMD load/store single structure (post-indexed: bit 23).
        if word >> 31:
            return None
        opcode = (word >> 13) & 0b111
        element = 1 << min(opcode >> 1, 3) if opcode < 6 else 1 << ((word >> 10) & 3)
        return LoadStore(rn, size=element, is_write=not (word >> 22) & 1)

    if b29_27 == 0b001 and vector == 0 and b25_24 == 0b00:
        # Load/store exclusive, ordered, compare-and-swap: size 001000 o2 L o1 Rs o0 Rt2 Rn Rt.
        o2, load, o1 = (word >> 23) & 1, (word >> 22) & 1, (word >> 21) & 1
        if o1 and not o2:
            if size >= 2:  # LDXP/STXP and the acquire/release forms
                return LoadStore(rn, size=2 * (4 << (size & 1)), is_write=not load, checked=True)
            return LoadStore(rn, size=2 * (4 << (size & 1)), is_write=True, checked=True)  # CASP
        if o1 and o2:  # CAS: reads and writes
            return LoadStore(rn, size=1 << size, is_write=True, checked=True)
        return LoadStore(rn, size=1 << size, is_write=not load, checked=True)

    if b29_27 == 0b011 and b25_24 == 0b01 and vector == 0:
        # LDAPUR/STLUR (RCpc, unscaled): size 011001 opc 0 imm9 00 Rn Rt. Bit 21 set is MTE.
        if (word >> 21) & 1 or (word >> 10) & 3:
            return None
        opc = (word >> 22) & 3
        imm9 = _sext((word >> 12) & 0x1FF, 9)
        return LoadStore(rn, imm9, size=1 << size, is_write=opc == 0, checked=True)

    if b29_27 == 0b011 and b25_24 == 0b00:
        # Load register (literal): opc 011 V 00 imm19 Rt, relative to the instruction.
        opc = size
        if vector:
            if opc == 3:
                return None
            width = 4 << opc
        elif opc == 3:
            return None  # PRFM (literal): a hint, never faults
        else:
            width = (4, 8, 4)[opc]
        return LoadStore(PC, _sext((word >> 5) & 0x7FFFF, 19) * 4, size=width)

    if b29_27 == 0b101:
        # Load/store pair: opc 101 V 0 idx L imm7 Rt2 Rn Rt (idx 00 no-allocate, 01 post,
        # 10 offset, 11 pre).
        opc, load = size, (word >> 22) & 1
        if vector:
            if opc == 3:
                return None
            scale = 4 << opc
        elif opc == 0:
            scale = 4
        elif opc == 1 and load:
            scale = 4  # LDPSW
        elif opc == 2:
            scale = 8
        else:
            return None  # STGP (memory tagging) or unallocated
        post = (word >> 23) & 3 == 0b01
        offset = 0 if post else _sext((word >> 15) & 0x7F, 7) * scale
        return LoadStore(rn, offset, size=2 * scale, is_write=not load)

    if b29_27 != 0b111:
        return None
    if b25_24 == 0b00 and (word >> 21) & 1 and (word >> 10) & 1:
        # LDRAA/LDRAB: 11 111 0 00 M S 1 imm9 W 1 Rn Rt, offset S:imm9 scaled by 8.
        if vector or size != 3:
            return None
        imm10 = (((word >> 22) & 1) << 9) | ((word >> 12) & 0x1FF)
        return LoadStore(rn, _sext(imm10, 10) * 8, size=8)
    if b25_24 == 0b00 and (word >> 21) & 1 and not (word >> 10) & 3:
        # Atomic memory operations: size 111 V 00 A R 1 Rs o3 opc 00 Rn Rt. They read and
        # write (the ST<op> aliases too), and fault as writes, as on QEMU; LDAPR only reads.
        if vector:
            return None
        ldapr = (word >> 15) & 1 and (word >> 12) & 7 == 0b100
        return LoadStore(rn, size=1 << size, is_write=not ldapr, checked=True)
    opc = (word >> 22) & 3
    if vector:
        scale = ((opc >> 1) << 2) | size
        if scale > 4:
            return None
        width, is_write = 1 << scale, not opc & 1
    else:
        if size == 3 and opc == 2:
            return None  # PRFM / PRFUM: hints, never fault
        if opc == 3 and size >= 2:
            return None
        width, is_write = 1 << size, opc == 0

    if b25_24 == 0b01:
        # Load/store register (unsigned immediate): size 111 V 01 opc imm12 Rn Rt.
        return LoadStore(rn, ((word >> 10) & 0xFFF) * width, size=width, is_write=is_write)
    if b25_24 != 0b00:
        return None
    op4 = (word >> 10) & 3
    if not (word >> 21) & 1:
        # Unscaled (00), post-indexed (01), unprivileged (10), pre-indexed (11): imm9.
        imm9 = _sext((word >> 12) & 0x1FF, 9)
        return LoadStore(rn, 0 if op4 == 0b01 else imm9, size=width, is_write=is_write)
    # Register offset (op4 = 10): size 111 V 00 opc 1 Rm option S 10 Rn Rt.
    option = (word >> 13) & 7
    if not option & 0b010:
        return None
    shift = width.bit_length() - 1 if (word >> 12) & 1 else 0
    return LoadStore(rn, index=(word >> 16) & 31, extend=option, shift=shift, size=width, is_write=is_write)


def _xreg(cpu: Cpu, n: int) -> int:
    return cpu.get_reg(f"x{n}")


def _index(cpu: Cpu, access: LoadStore) -> int:
    assert access.index is not None
    value = 0 if access.index == 31 else _xreg(cpu, access.index)
    option = access.extend
    if option & 0b011 == 0b010:  # UXTW / SXTW: the W register
        value &= 0xFFFF_FFFF
        if option & 0b100:
            value = _sext(value, 32)
    return value << access.shift


def memory_access(cpu: Cpu, pc: int) -> MemoryAccess | None:
    """The virtual address the load/store at ``pc`` accesses first, or None if it is not one."""
    word = cpu.read_insn(pc)
    if word is None:
        return None
    access = decode(word)
    if access is None:
        return None
    base = access.base
    if base == PC:
        address = pc
    elif base == XZR:
        address = 0
    elif base == SP:
        address = cpu.get_reg("sp")
    else:
        address = _xreg(cpu, base)
    address += access.offset
    if access.index is not None:
        address += _index(cpu, access)
    return MemoryAccess(address & M64, access.is_write, access.size, access.checked)
