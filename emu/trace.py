"""Events a run records, in order: trapped hypercalls, PSCI calls and vCPU power-state changes.

These are what the CLI prints, what ``--json`` serialises and what tests assert on. The
trap path creates one ``HypercallEvent`` per HVC/SMC, so it stays a plain slotted record;
names and return codes are decoded only when the event is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu import smccc
from emu.exits import Exit, Power


@dataclass(slots=True)
class HypercallEvent:
    """One trapped HVC/SMC: where, the syndrome, x0..x5, and what came of it.

    ``result`` is x0 after an in-kernel answer (None when the call exited to userspace
    or left x0 untouched); ``exit`` is the exit it produced, if any.
    """

    vcpu: int
    pc: int
    conduit: str
    esr: int
    args: tuple[int, ...]
    result: int | None
    exit: Exit | None

    @property
    def imm(self) -> int:
        return self.esr & 0xFFFF

    @property
    def fid(self) -> int:
        return self.args[0] & smccc.MASK32

    @property
    def name(self) -> str:
        return smccc.name_of(self.fid)


@dataclass(slots=True, frozen=True)
class PowerEvent:
    """A vCPU's power state changed at virtual time ``time_ns``; ``by`` caused it (None: VMM/timer)."""

    time_ns: int
    vcpu: int
    power: Power
    by: int | None


@dataclass(slots=True, frozen=True)
class PsciEvent:
    """One PSCI call and its outcome, whether KVM or the VMM's userspace PSCI answered it.

    ``args`` are x1..x3 as the function read them (after SMC32 narrowing); ``result``
    is x0 as the caller sees it (None while a userspace handler has not answered);
    ``changes`` are the power-state changes the call caused, in order.
    """

    time_ns: int
    caller: int
    fid: int
    args: tuple[int, int, int]
    result: int | None
    changes: tuple[PowerEvent, ...]
    handled: str = "kernel"

    @property
    def name(self) -> str:
        return smccc.name_of(self.fid)
