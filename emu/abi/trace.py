"""What a run records, in order: one event model for the CLI, JSON, the pytest kit and notebooks.

Events (each with the VM's virtual time ``time_ns`` where it has one):

* ``HypercallEvent``: a trapped HVC/SMC: vCPU, PC, conduit, ESR, x0..x5, the in-kernel
  result, or the exit it produced and the VMM's answer;
* ``PsciEvent``: a PSCI call with the power-state changes it caused, answered by KVM or by
  the VMM's userspace PSCI;
* ``PowerEvent``: a vCPU's power state changed;
* ``ExceptionEvent``: an exception delivered to the guest's EL1 vectors;
* ``VmEvent``: a system event, a reboot, the stop;
* ``InsnEvent``: one executed instruction (only with instruction tracing on).

``Trace.write_jsonl`` / ``read_jsonl`` round-trip them as JSON Lines. The trap path creates
one ``HypercallEvent`` per HVC/SMC, so events are plain slotted records; names and return
codes are decoded only when shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from emu import rendering
from emu.abi import smccc
from emu.abi.exits import Exit, Power, exit_from_json, exit_to_json
from emu.errors import ImageError, unreadable


@dataclass(slots=True)
class HypercallEvent:
    """One trapped HVC/SMC: where, the syndrome, x0..x5, and what came of it.

    ``result`` is x0 after an in-kernel answer, or the VMM's x0 after an exit (None when
    nothing wrote x0); ``exit`` is the exit the call produced, if any.
    """

    kind: ClassVar[str] = "hypercall"
    vcpu: int
    pc: int
    conduit: str
    esr: int
    args: tuple[int, ...]
    result: int | None
    exit: Exit | None
    time_ns: int = 0

    @property
    def imm(self) -> int:
        return self.esr & 0xFFFF

    @property
    def fid(self) -> int:
        return self.args[0] & smccc.MASK32

    @property
    def name(self) -> str:
        return smccc.name_of(self.fid)

    @property
    def handled(self) -> str:
        return "user" if self.exit is not None else "kernel"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "time_ns": self.time_ns,
            "vcpu": self.vcpu,
            "pc": self.pc,
            "conduit": self.conduit,
            "imm": self.imm,
            "esr": self.esr,
            "fid": self.fid,
            "name": self.name,
            "args": list(self.args),
            "result": self.result,
            "handled": self.handled,
            "exit": exit_to_json(self.exit) if self.exit else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HypercallEvent:
        return cls(
            d["vcpu"],
            d["pc"],
            d["conduit"],
            d["esr"],
            tuple(d["args"]),
            d["result"],
            exit_from_json(d["exit"]) if d["exit"] else None,
            d["time_ns"],
        )


@dataclass(slots=True, frozen=True)
class PowerEvent:
    """A vCPU's power state changed at virtual time ``time_ns``; ``by`` caused it (None: VMM/timer)."""

    kind: ClassVar[str] = "power"
    time_ns: int
    vcpu: int
    power: Power
    by: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "time_ns": self.time_ns,
            "vcpu": self.vcpu,
            "power": self.power.value,
            "by": self.by,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PowerEvent:
        return cls(d["time_ns"], d["vcpu"], Power(d["power"]), d["by"])


@dataclass(slots=True, frozen=True)
class PsciEvent:
    """One PSCI call and its outcome, whether KVM or the VMM's userspace PSCI answered it.

    ``args`` are x1..x3 as the function read them (after SMC32 narrowing); ``result``
    is x0 as the caller sees it; ``changes`` are the power-state changes the call caused.
    """

    kind: ClassVar[str] = "psci"
    time_ns: int
    caller: int
    fid: int
    args: tuple[int, ...]
    result: int | None
    changes: tuple[PowerEvent, ...]
    handled: str = "kernel"

    @property
    def name(self) -> str:
        return smccc.name_of(self.fid)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "time_ns": self.time_ns,
            "caller": self.caller,
            "function": self.name,
            "fid": self.fid,
            "args": list(self.args),
            "result": self.result,
            "handled": self.handled,
            "changes": [c.to_json() for c in self.changes],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PsciEvent:
        return cls(
            d["time_ns"],
            d["caller"],
            d["fid"],
            tuple(d["args"]),
            d["result"],
            tuple(PowerEvent.from_json(c) for c in d["changes"]),
            d["handled"],
        )


_E = TypeVar("_E", bound="_FlatEvent")


class _FlatEvent:
    """JSON for an event whose fields are plain values: ``kind``, then each field in order."""

    __slots__ = ()
    kind: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in fields(self)}}  # type: ignore[arg-type]

    @classmethod
    def from_json(cls: type[_E], d: dict[str, Any]) -> _E:
        return cls(*(d[f.name] for f in fields(cls)))  # type: ignore[arg-type]


@dataclass(slots=True, frozen=True)
class ExceptionEvent(_FlatEvent):
    """A synchronous exception taken to the guest's EL1 vector at ``vector``."""

    kind: ClassVar[str] = "exception"
    time_ns: int
    vcpu: int
    esr: int
    elr: int
    far: int | None
    vector: int

    @property
    def ec(self) -> int:
        return self.esr >> 26

    def to_json(self) -> dict[str, Any]:
        return {**_FlatEvent.to_json(self), "ec": self.ec}


@dataclass(slots=True, frozen=True)
class VmEvent(_FlatEvent):
    """Something that happened to the whole VM: ``what`` is system_event, reboot or stop."""

    kind: ClassVar[str] = "vm"
    time_ns: int
    vcpu: int | None
    what: str
    detail: str


@dataclass(slots=True, frozen=True)
class InterruptEvent(_FlatEvent):
    """The vGIC: INTID ``intid`` was ``raised`` (became pending, for ``vcpu``: its target,
    None if it has none), ``acked`` (taken by ``vcpu``) or ``completed`` (deactivated)."""

    kind: ClassVar[str] = "interrupt"
    time_ns: int
    vcpu: int | None
    what: str
    intid: int


@dataclass(slots=True, frozen=True)
class InsnEvent(_FlatEvent):
    """One executed instruction (``--trace-insns``)."""

    kind: ClassVar[str] = "insn"
    vcpu: int
    pc: int
    text: str


Event = HypercallEvent | PsciEvent | PowerEvent | ExceptionEvent | VmEvent | InterruptEvent | InsnEvent
_KINDS = {
    cls.kind: cls
    for cls in (HypercallEvent, PsciEvent, PowerEvent, ExceptionEvent, VmEvent, InterruptEvent, InsnEvent)
}


@dataclass
class Trace:
    """All events of a run in order, with typed views (the same event objects)."""

    events: list[Event] = field(default_factory=list)
    hypercalls: list[HypercallEvent] = field(default_factory=list)
    psci: list[PsciEvent] = field(default_factory=list)
    power: list[PowerEvent] = field(default_factory=list)
    exceptions: list[ExceptionEvent] = field(default_factory=list)
    vm_events: list[VmEvent] = field(default_factory=list)
    interrupts: list[InterruptEvent] = field(default_factory=list)
    insns: list[InsnEvent] = field(default_factory=list)
    # Power state of every vCPU when the run started (the timeline's first bar).
    initial_power: dict[int, Power] = field(default_factory=dict)
    profile: str = ""

    def add(self, event: Event) -> None:
        self.events.append(event)
        self.view(event.kind).append(event)

    def view(self, kind: str) -> list[Any]:
        """The typed list for an event kind (``"hypercall"``, ``"psci"``, ...)."""
        views: dict[str, list[Any]] = {
            "hypercall": self.hypercalls,
            "psci": self.psci,
            "power": self.power,
            "exception": self.exceptions,
            "vm": self.vm_events,
            "interrupt": self.interrupts,
            "insn": self.insns,
        }
        return views[kind]

    @property
    def vcpus(self) -> list[int]:
        ids = set(self.initial_power)
        ids.update(v for e in self.events if (v := getattr(e, "vcpu", None)) is not None)
        ids.update(e.caller for e in self.psci)
        return sorted(ids)

    @property
    def end_ns(self) -> int:
        return max((e.time_ns for e in self.events if hasattr(e, "time_ns")), default=0)

    # -- snapshots ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything recorded so far, as the JSON the events write."""
        return {
            "profile": self.profile,
            "initial_power": [[k, v.value] for k, v in sorted(self.initial_power.items())],
            "events": [event.to_json() for event in self.events],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Back to the snapshot's events; the lists stay the same objects (hooks append to them)."""
        for kind in _KINDS:
            self.view(kind).clear()
        self.events.clear()
        for record in data["events"]:
            self.add(_KINDS[record["kind"]].from_json(record))
        self.initial_power.clear()
        self.initial_power.update({k: Power(v) for k, v in data["initial_power"]})
        self.profile = data["profile"]

    # -- JSON Lines ------------------------------------------------------------------------------

    def write_jsonl(self, path: str | Path) -> None:
        """One JSON object per line: a header, then every event in order."""
        with open(path, "w") as out:
            header = {
                "kind": "header",
                "profile": self.profile,
                "initial_power": {str(k): v.value for k, v in sorted(self.initial_power.items())},
            }
            out.write(json.dumps(header) + "\n")
            for event in self.events:
                out.write(json.dumps(event.to_json()) + "\n")

    def __repr__(self) -> str:
        counts = ", ".join(f"{len(self.view(k))} {k}" for k in _KINDS if self.view(k))
        return f"Trace({len(self.events)} events: {counts or 'none'})"

    def _repr_pretty_(self, printer: rendering.PrettyPrinter, cycle: bool) -> None:
        printer.text(rendering.text(self))

    def _repr_html_(self) -> str:
        return rendering.html(self)

    def plot(self, path: str | Path | None = None, ax: Any = None) -> Any:
        """A timeline, one lane per vCPU (needs matplotlib: ``pip install 'hvc-emu[plot]'``)."""
        return rendering.plot(self, path=path, ax=ax)


def read_jsonl(path: str | Path) -> Trace:
    """Read a trace written by ``Trace.write_jsonl`` (``emu run --trace FILE``)."""
    trace = Trace()
    try:
        with open(path, encoding="utf-8") as src:
            for number, line in enumerate(src, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    kind = record["kind"]
                    if kind == "header":
                        trace.profile = record.get("profile", "")
                        trace.initial_power = {int(k): Power(v) for k, v in record["initial_power"].items()}
                        continue
                    trace.add(_KINDS[kind].from_json(record))
                except (ValueError, KeyError, TypeError) as err:
                    raise ImageError(f"{path}:{number}: not an emu trace line ({err})") from None
    except OSError as err:
        raise unreadable(str(path), err) from None
    except UnicodeDecodeError:
        raise ImageError(f"{path}: not an emu trace (not UTF-8 text)") from None
    return trace
