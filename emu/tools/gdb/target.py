"""What the stub needs from the thing being debugged: :class:`Target`, and :class:`StopEvent`.

Thread numbering: the target speaks in vCPU ids (0, 1, ...); the stub shows them to gdb as
thread ids vCPU id + 1, because gdb reserves 0 ("any") and -1 ("all").

All calls come from one thread (the stub's), one at a time, and only while the target is
stopped, except :meth:`Target.resume` itself, which runs the guest and blocks until it stops.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

BreakpointKind = Literal["sw", "hw", "write", "read", "access"]

#: ``Z``/``z`` packet type digit -> the kind handed to the target.
Z_KINDS: dict[int, BreakpointKind] = {0: "sw", 1: "hw", 2: "write", 3: "read", 4: "access"}

StopReason = Literal[
    "breakpoint",  # a software breakpoint (Z0) at ``address``, the stopped pc
    "hw-breakpoint",  # a hardware breakpoint (Z1) at ``address``
    "watch",  # a write watchpoint (Z2) hit; ``address`` = the data address accessed
    "rwatch",  # a read watchpoint (Z3) hit; ``address`` = the data address
    "awatch",  # an access watchpoint (Z4) hit; ``address`` = the data address
    "step",  # the single step asked for completed
    "interrupt",  # stopped because ``interrupt`` was set (gdb's Ctrl-C): SIGINT
    "signal",  # stopped with ``signal`` (e.g. 11 for a fault the guest cannot take)
    "exited",  # the VM ended with ``exit_status`` (0-255): nothing left to debug
    "terminated",  # the VM was ended by ``signal``: nothing left to debug
]

STOP_REASONS: frozenset[str] = frozenset(StopReason.__args__)  # type: ignore[attr-defined]

#: Stop reasons after which the target is gone.
FINAL_REASONS: frozenset[str] = frozenset({"exited", "terminated"})

SIGINT, SIGTRAP = 2, 5


@dataclass(frozen=True)
class StopEvent:
    """Why :meth:`Target.resume` returned.

    ``tid`` is the vCPU id that stopped (for ``interrupt``, the one gdb should look at: the one
    that was running, or any). It is ignored for ``exited`` / ``terminated``.
    """

    tid: int
    reason: StopReason
    address: int | None = None
    exit_status: int | None = None
    signal: int | None = None

    def __post_init__(self) -> None:
        if self.reason not in STOP_REASONS:
            raise ValueError(f"unknown stop reason {self.reason!r}")
        if self.reason in ("watch", "rwatch", "awatch") and self.address is None:
            raise ValueError(f"a {self.reason} stop needs the data address")
        if self.reason == "signal" and self.signal is None:
            raise ValueError("a signal stop needs the signal number")


@runtime_checkable
class Target(Protocol):
    """The debugged machine, as the stub sees it. Every ``tid`` here is a vCPU id."""

    def threads(self) -> list[int]:
        """The vCPU ids, in order, including powered-off ones."""
        ...

    def thread_info(self, tid: int) -> str:
        """One line for ``info threads``, e.g. ``"vCPU 1, MPIDR 0x80000001, on"``."""
        ...

    def read_registers(self, tid: int) -> list[int]:
        """All registers in description order (see ``target_xml.REGISTERS``), unsigned."""
        ...

    def write_register(self, tid: int, regnum: int, value: int) -> None:
        """Set register ``regnum`` (description order) to the unsigned ``value``."""
        ...

    def read_memory(self, tid: int, va: int, length: int) -> bytes | None:
        """``length`` bytes at virtual address ``va`` through that vCPU's translation.

        ``None`` when ``va`` itself is unmapped; a shorter result when the range runs into an
        unmapped page.
        """
        ...

    def write_memory(self, tid: int, va: int, data: bytes) -> bool:
        """Write ``data`` at ``va`` through that vCPU's translation; False if unmapped."""
        ...

    def add_breakpoint(self, kind: BreakpointKind, addr: int, length: int) -> bool:
        """Insert a breakpoint or watchpoint on every vCPU; False if it cannot be had.

        ``length`` is the instruction size (4) for ``sw``/``hw`` and the watched byte count
        for ``write``/``read``/``access``.
        """
        ...

    def remove_breakpoint(self, kind: BreakpointKind, addr: int, length: int) -> bool:
        """Undo :meth:`add_breakpoint` with the same arguments; False if there was none."""
        ...

    def resume(self, step_tid: int | None, interrupt: threading.Event) -> StopEvent:
        """Run until something stops the machine, and say what.

        ``step_tid is None``: run every vCPU that can run, as the scheduler would. Otherwise
        execute exactly one instruction on ``step_tid`` while every other vCPU stays stopped.
        ``interrupt`` may be set from another thread at any time: stop soon after (at an
        instruction boundary) and return a stop with reason ``"interrupt"``.
        """
        ...

    def monitor(self, command: str) -> str:
        """Answer a ``monitor COMMAND`` line; the text is shown to the user as is."""
        ...

    def kill(self) -> None:
        """The user killed the program: end the VM."""
        ...

    def detach(self) -> None:
        """The debugger let go: the VM carries on by itself. Must not block."""
        ...
