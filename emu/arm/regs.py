"""Fast access to one vCPU's registers through the Unicorn C library.

The Python binding's ``reg_read`` costs ~2.5 us a call; a direct ``uc_reg_read`` through
ctypes costs ~0.8 us and a batch of seven registers about the same (engine notes 0.8).
A trap therefore reads PC and x0..x5 in one batch and writes x0..x3 in one batch.

The functions come from a second ``CDLL`` handle on the same library without
``argtypes``: every argument is passed as a ready-made ctypes object, which skips the
per-call conversion checks and halves the cost of a call.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Sequence

from unicorn import arm64_const as a64
from unicorn.unicorn_py3.unicorn import uclib

from emu import rendering

X_IDS: tuple[int, ...] = (
    *tuple(a64.UC_ARM64_REG_X0 + i for i in range(29)),
    a64.UC_ARM64_REG_X29,
    a64.UC_ARM64_REG_X30,
)

REG_IDS: dict[str, int] = {f"x{i}": rid for i, rid in enumerate(X_IDS)}
REG_IDS.update(
    {
        "fp": a64.UC_ARM64_REG_X29,
        "lr": a64.UC_ARM64_REG_X30,
        "sp": a64.UC_ARM64_REG_SP,
        "pc": a64.UC_ARM64_REG_PC,
        "pstate": a64.UC_ARM64_REG_PSTATE,
        "nzcv": a64.UC_ARM64_REG_NZCV,
        "sp_el0": a64.UC_ARM64_REG_SP_EL0,
        "sp_el1": a64.UC_ARM64_REG_SP_EL1,
        "elr_el1": a64.UC_ARM64_REG_ELR_EL1,
        "esr_el1": a64.UC_ARM64_REG_ESR_EL1,
        "far_el1": a64.UC_ARM64_REG_FAR_EL1,
        "vbar_el1": a64.UC_ARM64_REG_VBAR_EL1,
        "ttbr0_el1": a64.UC_ARM64_REG_TTBR0_EL1,
        "tpidr_el0": a64.UC_ARM64_REG_TPIDR_EL0,
    }
)

# The registers a snapshot shows, in order (JSON output, ``Vcpu.get_regs``).
SNAPSHOT_NAMES: tuple[str, ...] = (*tuple(f"x{i}" for i in range(31)), "sp", "pc", "pstate")

rawlib = ctypes.CDLL(uclib._name)
_PC_ID = a64.UC_ARM64_REG_PC
_read_batch = read_batch = rawlib.uc_reg_read_batch
_write_batch = rawlib.uc_reg_write_batch
_read = rawlib.uc_reg_read
_write = rawlib.uc_reg_write


class Registers(dict):
    """A register snapshot (name -> value) that prints as a table."""

    def __repr__(self) -> str:
        return rendering.text(self, default=dict.__repr__)

    def _repr_pretty_(self, printer: rendering.PrettyPrinter, cycle: bool) -> None:
        printer.text(repr(self))

    def _repr_html_(self) -> str:
        return rendering.html(self)


class _Batch:
    """A fixed list of register ids with the ctypes buffers to move them in one call."""

    __slots__ = ("count", "ids", "ptrs", "values")

    def __init__(self, ids: Sequence[int]) -> None:
        n = len(ids)
        self.count = n
        self.ids = (ctypes.c_int * n)(*ids)
        self.values = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(self.values)
        self.ptrs = (ctypes.c_void_p * n)(*(base + 8 * i for i in range(n)))


class RegisterFile:
    """Register access for one Unicorn instance, by name or by hot-path batch."""

    def __init__(self, uc) -> None:
        self._h = ctypes.c_void_p(uc._uch.value)
        # Where the guest resumes, when the trap path knows it (the instruction after an
        # HVC/SMC that exited): saves reading PC back. Any write to PC forgets it.
        self.resume_pc: int | None = None
        self._one = ctypes.c_uint64()
        self._one_ref = ctypes.byref(self._one)
        self._trap = _Batch((a64.UC_ARM64_REG_PC, *X_IDS[:6]))
        self._ret = [_Batch(X_IDS[:n]) for n in range(5)]
        self._snapshot = _Batch(tuple(REG_IDS[n] for n in SNAPSHOT_NAMES))

    # -- hot path ---------------------------------------------------------------------

    def trap_batch(self) -> tuple[tuple, ctypes.Array]:
        """Arguments for ``read_batch(*args)`` that fill the returned array with
        [pc, x0, x1, x2, x3, x4, x5] in one library call (the trap path's first step)."""
        b = self._trap
        return (self._h, b.ids, b.ptrs, 7), b.values

    def write_x(self, values: Sequence[int]) -> None:
        """Write ``values`` to x0, x1, ... (at most four) in one library call."""
        n = len(values)
        b = self._ret[n]
        b.values[:n] = list(values)
        _write_batch(self._h, b.ids, b.ptrs, n)

    # -- general access -----------------------------------------------------------------

    def read_id(self, reg_id: int) -> int:
        # Unicorn writes only 32 bits for 32-bit registers (PSTATE, NZCV, FPCR...): clear
        # the buffer first so the top half is not left over from the previous read.
        one = self._one
        one.value = 0
        _read(self._h, reg_id, self._one_ref)
        return one.value

    def write_id(self, reg_id: int, value: int) -> None:
        if reg_id == _PC_ID:
            self.resume_pc = None
        self._one.value = value & 0xFFFF_FFFF_FFFF_FFFF
        _write(self._h, reg_id, self._one_ref)

    def read(self, name: str) -> int:
        return self.read_id(reg_id(name))

    def write(self, name: str, value: int) -> None:
        self.write_id(reg_id(name), value)

    def snapshot(self) -> Registers:
        """x0..x30, sp, pc and pstate in one library call."""
        b = self._snapshot
        _read_batch(self._h, b.ids, b.ptrs, b.count)
        return Registers(zip(SNAPSHOT_NAMES, b.values[:], strict=True))

    def write_many(self, values: Iterable[tuple[str, int]]) -> None:
        for name, value in values:
            self.write(name, value)


def reg_id(name: str) -> int:
    """Unicorn register id for a register name (``x0``..``x30``, ``sp``, ``pc``, ...)."""
    try:
        return REG_IDS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown register {name!r}") from None
