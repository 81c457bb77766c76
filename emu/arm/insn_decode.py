"""Which address a faulting load or store was accessing, rebuilt from the instruction.

Unicorn reports aborts without FAR (engine notes 0.3), and its unmapped-memory hook
gives the *physical* address, so the virtual address that FAR_EL1 must hold is worked
out from the instruction's addressing mode and the registers, with capstone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import capstone
from capstone import arm64 as cs64

if TYPE_CHECKING:
    from emu.arm.cpu import Cpu

M64 = (1 << 64) - 1
# capstone extend codes for the index register of [Xn, Wm/Xm, <extend> #n].
_SIGNED_EXTENDS = {
    cs64.ARM64_EXT_SXTB: 8,
    cs64.ARM64_EXT_SXTH: 16,
    cs64.ARM64_EXT_SXTW: 32,
    cs64.ARM64_EXT_SXTX: 64,
}
_UNSIGNED_EXTENDS = {
    cs64.ARM64_EXT_UXTB: 8,
    cs64.ARM64_EXT_UXTH: 16,
    cs64.ARM64_EXT_UXTW: 32,
    cs64.ARM64_EXT_UXTX: 64,
}


@dataclass(frozen=True)
class MemoryAccess:
    address: int
    is_write: bool


@functools.lru_cache(maxsize=1)
def _engine() -> capstone.Cs:
    cs = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    cs.detail = True
    return cs


def _reg(cpu: Cpu, name: str) -> int:
    if name in ("xzr", "wzr"):
        return 0
    if name.startswith("w"):
        return cpu.get_reg("x" + name[1:]) & 0xFFFF_FFFF
    return cpu.get_reg(name)


def memory_access(cpu: Cpu, pc: int) -> MemoryAccess | None:
    """The virtual address the load/store at ``pc`` accesses first, or None if it is not one."""
    word = cpu.read_insn(pc)
    if word is None:
        return None
    insn = next(_engine().disasm(word.to_bytes(4, "little"), pc), None)
    if insn is None:
        return None
    mnemonic = insn.mnemonic
    is_write = mnemonic.startswith(("st", "swp", "cas"))
    for op in insn.operands:
        if op.type == cs64.ARM64_OP_MEM:
            address = _reg(cpu, insn.reg_name(op.mem.base)) + op.mem.disp
            if op.mem.index:
                index = _reg(cpu, insn.reg_name(op.mem.index))
                if op.ext in _SIGNED_EXTENDS:
                    bits = _SIGNED_EXTENDS[op.ext]
                    index &= (1 << bits) - 1
                    if index >> (bits - 1):
                        index -= 1 << bits
                elif op.ext in _UNSIGNED_EXTENDS:
                    index &= (1 << _UNSIGNED_EXTENDS[op.ext]) - 1
                if op.shift.type == cs64.ARM64_SFT_LSL:
                    index <<= op.shift.value
                address += index
            return MemoryAccess(address & M64, is_write)
    if mnemonic in ("ldr", "ldrsw", "prfm") and insn.operands and insn.operands[-1].type == cs64.ARM64_OP_IMM:
        return MemoryAccess(insn.operands[-1].imm & M64, False)  # PC-relative literal
    return None
