"""The userspace side of a run: a minimal VMM loop with a pluggable hypercall policy.

``run_vcpu`` calls ``vcpu.run()`` until the run stops (a system event, a fault or a run
limit) and answers every ``HypercallExit`` with a handler. The default handler answers
NOT_SUPPORTED in x0, like a VMM that implements nothing; ``load_vmm`` loads a user's
``handle_hypercall(vcpu, exit)`` from a Python file (the CLI's ``--vmm``).
"""

from __future__ import annotations

import importlib.util
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emu import smccc
from emu.errors import VmmError
from emu.exits import Exit, HypercallExit, SystemEventExit
from emu.trace import HypercallEvent
from emu.vcpu import Vcpu

HypercallHandler = Callable[[Vcpu, HypercallExit], "int | Sequence[int] | None"]


def not_supported(vcpu: Vcpu, exit_: HypercallExit) -> int:
    """Default policy: the VMM implements nothing, so x0 = SMCCC NOT_SUPPORTED."""
    return smccc.SmcccRet.NOT_SUPPORTED


@dataclass
class RunResult:
    """Everything a run produced, in order."""

    stop: Exit
    exits: list[Exit] = field(default_factory=list)
    # For each HypercallExit in ``exits``: the x0..x3 the VMM wrote (None: left to handler).
    answers: list[tuple[int, ...] | None] = field(default_factory=list)


def run_vcpu(vcpu: Vcpu, handler: HypercallHandler = not_supported,
             on_events: Callable[[list[HypercallEvent]], None] | None = None) -> RunResult:
    """Run ``vcpu`` to its stop, answering hypercall exits with ``handler``.

    ``on_events`` sees the hypercall events recorded since its previous call, each time
    the vCPU comes back to userspace, so callers can stream them.
    """
    events = vcpu.vm.hypercalls
    seen = len(events)
    result_exits: list[Exit] = []
    answers: list[tuple[int, ...] | None] = []
    while True:
        exit_ = vcpu.run()
        if isinstance(exit_, HypercallExit):
            result_exits.append(exit_)
            answer = _apply(handler, vcpu, exit_)
            answers.append(answer)
            _record_answer(events, vcpu, answer)
        if on_events is not None and len(events) > seen:
            on_events(events[seen:])
        seen = len(events)
        if not isinstance(exit_, HypercallExit):
            if isinstance(exit_, SystemEventExit):
                result_exits.append(exit_)
            return RunResult(stop=exit_, exits=result_exits, answers=answers)


def _apply(handler: HypercallHandler, vcpu: Vcpu, exit_: HypercallExit) -> tuple[int, ...] | None:
    try:
        returned = handler(vcpu, exit_)
    except Exception as err:  # the user's code: report where it failed, in one line
        raise VmmError(f"{_where(err)}handle_hypercall raised {type(err).__name__}: {err}") from err
    if returned is None:
        return None
    if isinstance(returned, int):
        values: tuple[int, ...] = (returned & smccc.MASK64,)
    else:
        values = tuple(returned)
        if not 1 <= len(values) <= 4 or not all(isinstance(v, int) for v in values):
            raise VmmError(f"handle_hypercall must return None, an int or up to four ints "
                           f"for x0..x3, not {returned!r}")
        values = tuple(v & smccc.MASK64 for v in values)
    vcpu.regs.write_x(values)
    return values


def _record_answer(events: list[HypercallEvent], vcpu: Vcpu, answer: tuple[int, ...] | None) -> None:
    """The exited call's result is what the guest will see in x0 on resume."""
    event = events[-1] if events else None
    if event is not None and event.vcpu == vcpu.id and event.exit is not None:
        event.result = answer[0] if answer is not None else vcpu.get_reg("x0")


def _where(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno}: "


def load_vmm(path: str | Path) -> HypercallHandler:
    """Load ``handle_hypercall(vcpu, exit)`` from a Python file."""
    path = Path(path)
    if not path.is_file():
        raise VmmError(f"--vmm {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"emu_vmm_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise VmmError(f"--vmm {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise VmmError(f"--vmm {path}: {_where(err)}{type(err).__name__}: {err}") from err
    handler = getattr(module, "handle_hypercall", None)
    if not callable(handler):
        raise VmmError(f"--vmm {path}: defines no handle_hypercall(vcpu, exit) function")
    return handler
