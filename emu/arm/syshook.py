"""MRS/MSR/SYS instruction hooks that reach Python only for the encodings emu serves.

Once a UC_HOOK_INSN hook for MRS, MSR or SYS exists, Unicorn calls it for every such
instruction; through the Python binding each call costs ~2.5 us, and a Linux boot makes
millions (MRS SP_EL0, DC ZVA, MRS TPIDR_EL1...) for registers the engine implements
itself. An ``ActionTable`` says, per encoding, what the hook does:

* ``PASS``: nothing, the engine executes the instruction (the default);
* ``PYTHON``: call the Python handler (counters, timers, ICC_*, PMU, SCTLR_EL1 writes);
* ``STALE_TLB`` / ``STALE_CODE``: broadcast maintenance (TLBI ...IS, IC IALLUIS, IC IVAU),
  which marks every other vCPU's flag in a shared ``Maintenance`` array and lets the
  engine run the instruction locally.

The callback is C (``emu.arm._syshook``) when the optional extension is built; otherwise
a ctypes callback does the same lookup in Python, still cheaper than the binding's hook.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable

from unicorn import UC_HOOK_BLOCK, UC_HOOK_INSN
from unicorn.unicorn_py3.unicorn import uclib

from emu.arm.regs import rawlib as _rawlib

try:
    from emu.arm import _syshook  # type: ignore[attr-defined]
except ImportError:  # the optional extension was not built
    _syshook = None

PASS = 0
PYTHON = 1
STALE_TLB = 2
STALE_CODE = 3

FLAG_TLB = 1
FLAG_CODE = 2

# The most vCPUs one Maintenance array tracks (KVM's KVM_MAX_VCPUS on arm64 is 512).
MAX_VCPUS = 512

Key = tuple[int, int, int, int, int]
UNLIMITED = (1 << 64) - 1


class CpReg(ctypes.Structure):
    """uc_arm64_cp_reg: what the hook is given (field names as the binding's CpReg)."""

    _fields_ = (
        ("crn", ctypes.c_uint32),
        ("crm", ctypes.c_uint32),
        ("op0", ctypes.c_uint32),
        ("op1", ctypes.c_uint32),
        ("op2", ctypes.c_uint32),
        ("val", ctypes.c_uint64),
    )


_HOOK_CFUNC = ctypes.CFUNCTYPE(
    ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(CpReg), ctypes.c_void_p
)


class _Ctx(ctypes.Structure):
    """hook_ctx in _syshook.c."""

    _fields_ = (
        ("slow", _HOOK_CFUNC),
        ("slow_user", ctypes.c_void_p),
        ("actions", ctypes.c_void_p),
        ("stale", ctypes.c_void_p),
        ("nvcpus", ctypes.c_uint32),
        ("self", ctypes.c_uint32),
        ("calls", ctypes.c_uint64),
        ("slow_calls", ctypes.c_uint64),
    )


def encode(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """The table index of an encoding (Capstone's packing, as MRS/MSR immediates)."""
    return (op0 & 3) << 14 | (op1 & 7) << 11 | (crn & 15) << 7 | (crm & 15) << 3 | (op2 & 7)


class ActionTable:
    """What to do for each of the 65536 (op0, op1, CRn, CRm, op2) encodings."""

    def __init__(self, entries: Iterable[tuple[Key, int]] = ()) -> None:
        self.array = (ctypes.c_uint8 * 65536)()
        for key, action in entries:
            self.array[encode(*key)] = action

    def __getitem__(self, key: Key) -> int:
        return self.array[encode(*key)]


class Maintenance:
    """Per-vCPU "stale TLB / stale translated code" flags, shared by a VM's hooks."""

    def __init__(self) -> None:
        self.flags = (ctypes.c_uint8 * MAX_VCPUS)()

    def broadcast(self, source: int, count: int, flags: int) -> None:
        for i in range(count):
            if i != source:
                self.flags[i] |= flags

    def take(self, index: int) -> int:
        """The flags of vCPU ``index``, cleared."""
        flags = self.flags[index]
        if flags:
            self.flags[index] = 0
        return flags


Handler = Callable[[int, CpReg], int]


class InsnHook:
    """One MRS, MSR or SYS hook on one Unicorn instance."""

    def __init__(
        self,
        uc,
        insn: int,
        table: ActionTable,
        handler: Handler,
        maintenance: Maintenance,
        index: int,
        vcpu_count: Callable[[], int],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.table = table
        self.maintenance = maintenance
        self.vcpu_count = vcpu_count
        self.index = index

        def slow(_uc, reg: int, cp, _user) -> int:
            try:
                return handler(reg, cp.contents)
            except BaseException as err:  # the binding's funnel: stored, re-raised after emu_start
                on_error(err)
                return 0

        self._slow = _HOOK_CFUNC(slow)
        self._ctx: _Ctx | None = None
        if _syshook is not None:
            ctx = _Ctx()
            self._ctx = ctx
            ctx.slow = self._slow
            ctx.actions = ctypes.addressof(table.array)
            ctx.stale = ctypes.addressof(maintenance.flags)
            ctx.self = index
            ctx.nvcpus = vcpu_count()
            callback: object = ctypes.c_void_p(_syshook.hook_address)
            user = ctypes.c_void_p(ctypes.addressof(ctx))
        else:
            actions = table.array

            def filtered(_uc, reg: int, cp, _user) -> int:
                c = cp.contents
                action = actions[
                    (c.op0 & 3) << 14
                    | (c.op1 & 7) << 11
                    | (c.crn & 15) << 7
                    | (c.crm & 15) << 3
                    | (c.op2 & 7)
                ]
                if action == PASS:
                    return 0
                if action == PYTHON:
                    return slow(_uc, reg, cp, _user)
                maintenance.broadcast(index, vcpu_count(), FLAG_TLB if action == STALE_TLB else FLAG_CODE)
                return 0

            self._filtered = _HOOK_CFUNC(filtered)
            callback, user = self._filtered, None
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(
            uc._uch,
            ctypes.byref(handle),
            UC_HOOK_INSN,
            callback,
            user,
            ctypes.c_uint64(1),
            ctypes.c_uint64(0),
            ctypes.c_int(insn),
        )
        if status != 0:
            raise RuntimeError(f"uc_hook_add(UC_HOOK_INSN {insn}) failed: {status}")

    def vcpus_changed(self) -> None:
        """A vCPU was added: broadcasts reach it too."""
        if self._ctx is not None:
            self._ctx.nvcpus = self.vcpu_count()

    @property
    def stats(self) -> tuple[int, int] | None:
        """(hook calls, calls that reached Python), counted by the C front end."""
        ctx = self._ctx
        return None if ctx is None else (ctx.calls, ctx.slow_calls)


def native() -> bool:
    """Is the C front end built?"""
    return _syshook is not None


class _Counter(ctypes.Structure):
    """insn_counter in _syshook.c."""

    _fields_ = (
        ("executed", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("stop", ctypes.c_void_p),
        ("resume", ctypes.c_uint64),
    )


class InsnCounter:
    """Instructions executed by one Unicorn instance, counted per translation block in C.

    ``start(limit)`` before ``emu_start``: the engine stops once ``executed`` reaches
    ``limit`` (at the end of the block that crosses it); ``limit`` may be lowered while
    the slice runs, from a hook. ``resume_block(pc)`` before an ``emu_start`` that goes on
    with a block a hook stopped in the middle (a debugger's stop): entering it at ``pc``
    neither counts nor checks the limit again, so a paused slice counts what it would have
    unpaused. None of this exists without the C extension: emu then counts with Unicorn's
    ``count=`` instead.
    """

    def __init__(self, uc) -> None:
        if _syshook is None:
            raise RuntimeError("the emu.arm._syshook extension is not built")
        self._c = _Counter()
        self._c.stop = ctypes.cast(_rawlib.uc_emu_stop, ctypes.c_void_p).value
        self._c.resume = UNLIMITED
        self.finish()
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(
            uc._uch,
            ctypes.byref(handle),
            UC_HOOK_BLOCK,
            ctypes.c_void_p(_syshook.block_hook_address),
            ctypes.c_void_p(ctypes.addressof(self._c)),
            ctypes.c_uint64(1),
            ctypes.c_uint64(0),
        )
        if status != 0:
            raise RuntimeError(f"uc_hook_add(UC_HOOK_BLOCK) failed: {status}")

    def start(self, limit: int) -> None:
        c = self._c
        c.executed = 0
        c.limit = limit

    def finish(self) -> None:
        """No limit: the slice is over, runs that do not count are not stopped."""
        self._c.limit = UNLIMITED

    @property
    def executed(self) -> int:
        return self._c.executed

    @property
    def limit(self) -> int:
        return self._c.limit

    def lower_limit(self, limit: int) -> None:
        """End the running slice sooner (never later than already set)."""
        c = self._c
        if limit < c.limit:
            c.limit = limit

    def resume_block(self, pc: int) -> None:
        """The next ``emu_start`` resumes at ``pc`` inside a block already counted."""
        self._c.resume = pc

    def drop_resume(self) -> None:
        """No resume pending (the slice ended before it went on)."""
        self._c.resume = UNLIMITED
