"""One-instruction disassembly with capstone, for fault reports and traces."""

from __future__ import annotations

import functools

import capstone


@functools.lru_cache(maxsize=1)
def _engine() -> capstone.Cs:
    return capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)


def disasm_one(code: bytes, address: int) -> str:
    """``mnemonic operands`` for the 4-byte A64 instruction in ``code``, or ``.inst 0x...``."""
    if len(code) < 4:
        return "<unreadable>"
    for insn in _engine().disasm(code[:4], address, count=1):
        return f"{insn.mnemonic} {insn.op_str}".strip()
    return f".inst {int.from_bytes(code[:4], 'little'):#010x}"
