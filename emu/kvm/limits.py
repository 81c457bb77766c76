"""Run limits for a VM: an instruction budget and a wall-clock timeout, so no guest can hang emu.

The budget is counted with Unicorn's ``count=`` (a C instruction-counting hook, about 4x
slower, engine notes 0.5), so it costs nothing unless asked for. Unicorn cannot say how
many instructions ran before a hook stopped it, so a slice cut short by an exit, a halt
or a fault is charged one instruction: the budget is exact for a guest that never
leaves the CPU and a lower bound otherwise. Every slice that runs to its end is charged
in full, so a runaway loop stops after exactly ``max_insns`` instructions.

The timeout is enforced by a watchdog thread that keeps calling ``uc_emu_stop`` on the
running vCPU once the deadline has passed (a single stop can be lost, engine notes 0.6).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Iterator

from emu.abi.exits import StopReason
from emu.arm.regs import rawlib

_emu_stop = rawlib.uc_emu_stop

_POLL_S = 0.05
_RESTOP_S = 0.001
_LINGER_S = 1.0


class RunLimits:
    """The budget and deadline shared by all runs of one VM."""

    def __init__(
        self, max_insns: int | None = None, timeout: float | None = None, slice_insns: int = 1 << 20
    ) -> None:
        if max_insns is not None and max_insns <= 0:
            raise ValueError("max_insns must be positive")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        self.max_insns = max_insns
        self.timeout = timeout
        self.slice_insns = slice_insns
        self.charged = 0
        # The engine handle of the vCPU inside emu_start, for the watchdog to stop.
        self.watched: ctypes.c_void_p | None = None
        self.started = False
        self._deadline: float | None = None
        self._held = 0

    def start(self) -> None:
        """Start the clock on the first run; later calls keep the original deadline."""
        if self.started:
            return
        self.started = True
        if self.timeout is not None:
            self._deadline = time.monotonic() + self.timeout
            threading.Thread(target=self._watch, name="emu-watchdog", daemon=True).start()

    def reached(self) -> tuple[StopReason, str] | None:
        """The limit that ends the run now, if any, with a message for the user."""
        deadline = self._deadline
        if deadline is not None and time.monotonic() >= deadline:
            return StopReason.TIMEOUT, f"timeout: wall-clock limit of {self.timeout:g} s reached"
        if self.max_insns is not None and self.charged >= self.max_insns:
            return StopReason.BUDGET, f"instruction budget of {self.max_insns} exhausted"
        return None

    # -- budget --------------------------------------------------------------------------

    def slice(self) -> int:
        """``count=`` for the next emu_start: 0 means unlimited (no budget set)."""
        if self.max_insns is None:
            return 0
        return min(self.max_insns - self.charged, self.slice_insns)

    def charge(self, insns: int) -> None:
        self.charged += insns

    # -- timeout ----------------------------------------------------------------------------

    def _watch(self) -> None:
        while True:
            deadline = self._deadline
            if deadline is None:
                return
            remaining = deadline - time.monotonic()
            if remaining > 0:
                time.sleep(min(remaining, _POLL_S))
                continue
            target = self.watched
            if target is None:
                # Past the deadline no new slice starts (``reached`` says TIMEOUT first), so
                # once nothing has been running for a while there is nothing left to stop.
                if -remaining > _LINGER_S and not self._held:
                    return
                time.sleep(_POLL_S)
                continue
            _emu_stop(target)
            time.sleep(_RESTOP_S)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Time spent inside (e.g. stopped in a debugger) does not count against the timeout."""
        start = time.monotonic()
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            if self._deadline is not None:
                self._deadline += time.monotonic() - start

    def interrupt(self) -> None:
        """Stop the vCPU that is running now, from any thread (e.g. on Ctrl-C).

        Stops are repeated for a while because one can be lost (engine notes 0.6).
        """
        for _ in range(100):
            target = self.watched
            if target is not None:
                _emu_stop(target)
            time.sleep(_RESTOP_S)

    def close(self) -> None:
        """End the watchdog thread."""
        self._deadline = None
