"""The load/store decoder that rebuilds FAR: checked against what Unicorn itself accesses."""

from __future__ import annotations

import contextlib
import random
import struct

import pytest
from unicorn import UC_ARCH_ARM64, UC_HOOK_INTR, UC_HOOK_MEM_UNMAPPED, UC_MODE_ARM, Uc, UcError
from unicorn import arm64_const as a64

from emu.arm.insn_decode import PC, SP, XZR, decode, memory_access

CODE = 0x4000_0000
_WRITE_UNMAPPED = 20


def _reg_value(n: int) -> int:
    """Every register points somewhere different in unmapped memory below 2**44."""
    return 0x1000_0000 + n * 0x10_0000


class _Engine:
    """One instruction at a time on a bare Unicorn, recording its first unmapped access."""

    def __init__(self) -> None:
        uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        uc.mem_map(CODE, 0x1000)
        self.accesses: list[tuple[int, int]] = []
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._unmapped)
        uc.hook_add(UC_HOOK_INTR, lambda uc, intno, _: uc.emu_stop())
        self.uc = uc

    def _unmapped(self, uc, access, address, size, value, _user) -> bool:
        self.accesses.append((access, address))
        return False

    def _reset_regs(self) -> None:
        for i in range(31):
            self.uc.reg_write(_X[i], _reg_value(i))
        self.uc.reg_write(a64.UC_ARM64_REG_SP, _reg_value(31))

    def first_access(self, word: int) -> tuple[int, int] | None:
        uc = self.uc
        uc.mem_write(CODE, struct.pack("<I", word))
        uc.ctl_remove_cache(CODE, CODE + 4)
        self._reset_regs()
        self.accesses.clear()
        with contextlib.suppress(UcError):
            uc.emu_start(CODE, CODE + 0x800, count=1)
        self._reset_regs()  # what the trap path sees: registers before the access
        return self.accesses[0] if self.accesses else None

    # The Cpu protocol, as far as memory_access uses it.
    word = 0

    def read_insn(self, va: int) -> int:
        return self.word

    def get_reg(self, name: str) -> int:
        return self.uc.reg_read(a64.UC_ARM64_REG_SP if name == "sp" else _X[int(name[1:])])


_X = [a64.UC_ARM64_REG_X0 + i for i in range(29)] + [a64.UC_ARM64_REG_X29, a64.UC_ARM64_REG_X30]


def test_every_access_unicorn_makes_is_decoded_exactly() -> None:
    # Random words from the Loads and Stores group (and DC ZVA): whenever Unicorn touches
    # unmapped memory, the decoder names the same first address and direction.
    engine = _Engine()
    rnd = random.Random(2024)
    faulted = 0
    for _ in range(6000):
        word = (rnd.getrandbits(32) | 1 << 27) & ~(1 << 25)
        if rnd.random() < 0.03:
            word = 0xD50B_7420 | rnd.getrandbits(5)
        seen = engine.first_access(word)
        if seen is None:
            continue
        faulted += 1
        engine.word = word
        access = memory_access(engine, CODE)
        assert access is not None, f"{word:#010x} not decoded"
        assert (access.address, access.is_write) == (seen[1], seen[0] == _WRITE_UNMAPPED), f"{word:#010x}"
    assert faulted > 2000


@pytest.mark.parametrize(
    "word, base, offset, size, write",
    [
        (0xF9400420, 1, 8, 8, False),  # ldr x0, [x1, #8]
        (0xB81F0C41, 2, -16, 4, True),  # str w1, [x2, #-16]!
        (0xF8408420, 1, 0, 8, False),  # ldr x0, [x1], #8 (post-index: the base itself)
        (0xA9BF7BFD, SP, -16, 16, True),  # stp x29, x30, [sp, #-16]!
        (0x58000040, PC, 8, 8, False),  # ldr x0, #8 (literal)
        (0xC85FFC20, 1, 0, 8, False),  # ldaxr x0, [x1]
        (0xC854E373, 27, 0, 8, False),  # ldaxr x19, [x27] with Rs/Rt2 not all ones
        (0xF8200020, 1, 0, 8, True),  # ldadd x0, x0, [x1]: reads and writes
        (0xD50B7422, 2, 0, 64, True),  # dc zva, x2
        (0xD50B743F, XZR, 0, 64, True),  # dc zva, xzr
        (0x3DC00420, 1, 16, 16, False),  # ldr q0, [x1, #16]
    ],
)
def test_decoded_fields(word, base, offset, size, write) -> None:
    access = decode(word)
    assert access is not None
    assert (access.base, access.offset, access.size, access.is_write) == (base, offset, size, write)


def test_register_offset_extends_the_index() -> None:
    access = decode(0xF862D820)  # ldr x0, [x1, w2, sxtw #3]
    assert access is not None and (access.index, access.extend, access.shift) == (2, 0b110, 3)


@pytest.mark.parametrize("word", [0xD503201F, 0xF9800020, 0x8B020020, 0xD4000002])  # nop, prfm, add, hvc
def test_non_accesses_are_not_decoded(word) -> None:
    assert decode(word) is None
