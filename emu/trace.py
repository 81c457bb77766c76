"""Events a run records, in order: trapped hypercalls and vCPU power-state changes.

These are what the CLI prints, what ``--json`` serialises and what tests assert on. The
trap path creates one ``HypercallEvent`` per HVC/SMC, so it stays a plain slotted record;
names and return codes are decoded only when the event is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu import smccc
from emu.exits import Exit, MpState


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
    """A vCPU's mp_state changed, and which vCPU caused it (None: userspace)."""

    vcpu: int
    state: MpState
    by: int | None
