"""Run limits for a VM: an instruction budget and a wall-clock timeout, so no guest can hang emu.

The budget is counted with Unicorn's ``count=`` (a C instruction-counting hook, about 4x
slower, engine notes 0.5), so it costs nothing unless asked for. Unicorn cannot say how
many instructions ran before a hook stopped it, so a slice cut short by an exit, a halt
or a fault is charged one instruction, and so is every exception delivered to the
guest: the budget is exact for a guest that never leaves the CPU and a lower bound
otherwise. Every slice that runs to its end is charged
in full, so a runaway loop stops after exactly ``max_insns`` instructions.

The timeout is enforced by a watchdog thread that keeps calling ``uc_emu_stop`` on the
running vCPU once the deadline has passed (a single stop can be lost, engine notes 0.6).

Ctrl-C is latched the same way: ``interrupt()`` (called from any thread) records it and
keeps stopping the running vCPU, and the run loop raises ``KeyboardInterrupt`` before the
next slice. The signal's own exception cannot be relied on while a guest runs: Python
raises it in whatever hook happens to be executing, and a ctypes callback (an MMIO read,
an MRS hook) that raises reports and discards it, so the guest would keep running.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import threading
import time
from collections.abc import Iterator

from emu.abi.exits import StopReason
from emu.arm.regs import rawlib

_emu_stop = rawlib.uc_emu_stop

_POLL_S = 0.05
_RESTOP_S = 0.001
_LINGER_S = 1.0
# How long ``interrupt`` keeps stopping vCPUs, and how long none must run before it is done.
_INTERRUPT_S = 2.0
_INTERRUPT_IDLE_S = 0.05


class RunLimits:
    """The budget and deadline shared by all runs of one VM."""

    def __init__(
        self, max_insns: int | None = None, timeout: float | None = None, slice_insns: int = 1 << 20
    ) -> None:
        if max_insns is not None and max_insns <= 0:
            raise ValueError("max_insns must be positive")
        if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive, finite number of seconds, not {timeout}")
        self.max_insns = max_insns
        self.timeout = timeout
        self.slice_insns = slice_insns
        self.charged = 0
        # The engine handle of the vCPU inside emu_start, for the watchdog to stop.
        self.watched: ctypes.c_void_p | None = None
        self.started = False
        self._deadline: float | None = None
        self._held = 0
        # Set by ``interrupt()``; the run loop turns it into KeyboardInterrupt.
        self.interrupted = False

    def start(self) -> None:
        """Start the clock on the first run; later calls keep the original deadline."""
        if self.started:
            return
        self.started = True
        if self.timeout is not None:
            self._deadline = time.monotonic() + self.timeout
            threading.Thread(target=self._watch, name="emu-watchdog", daemon=True).start()

    def remaining(self) -> float | None:
        """Seconds left before the deadline (starting the clock); None without a timeout."""
        self.start()
        deadline = self._deadline
        return None if deadline is None else deadline - time.monotonic()

    def timeout_stop(self, where: str = "") -> tuple[StopReason, str]:
        """The TIMEOUT stop, optionally saying where the time ran out."""
        return StopReason.TIMEOUT, f"timeout: wall-clock limit of {self.timeout:g} s reached{where}"

    def reached(self) -> tuple[StopReason, str] | None:
        """The limit that ends the run now, if any, with a message for the user.

        Raises ``KeyboardInterrupt`` once ``interrupt()`` was called (Ctrl-C).
        """
        if self.interrupted:
            raise KeyboardInterrupt
        deadline = self._deadline
        if deadline is not None and time.monotonic() >= deadline:
            return self.timeout_stop()
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

    def charge_exception(self) -> bool:
        """An exception delivered to the guest costs one instruction of budget.

        A guest that keeps faulting (vectors in unmapped memory, say) executes no
        instruction Unicorn counts, so without this it would never reach the budget.
        True when the budget is now exhausted and the running slice must stop.
        """
        self.charged += 1
        return self.max_insns is not None and self.charged >= self.max_insns

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
        """Ctrl-C, from any thread: end the run with ``KeyboardInterrupt`` at the next slice.

        The running vCPU is stopped, repeatedly because one stop can be lost (engine notes
        0.6), until no slice has been running for a moment.
        """
        self.interrupted = True
        idle_since = None
        give_up = time.monotonic() + _INTERRUPT_S
        while (now := time.monotonic()) < give_up:
            target = self.watched
            if target is not None:
                _emu_stop(target)
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since > _INTERRUPT_IDLE_S:
                return
            time.sleep(_RESTOP_S)

    def close(self) -> None:
        """End the watchdog thread."""
        self._deadline = None
