"""What changes between kernels: ``emu profiles`` (the profiles side by side) and ``emu diff``.

``profile_rows`` derives every row from the ``Profile`` objects, never from prose, so the
table cannot drift from the model. ``diff`` runs one program under several profiles with
the same schedule and seed, pairs the hypercalls by position and reports each profile's
answer; ``DiffResult`` prints as text and renders as an HTML table in a notebook.
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emu.abi import smccc
from emu.abi.exits import HypercallExit, SystemEventExit
from emu.abi.trace import HypercallEvent
from emu.kvm import one_reg
from emu.kvm.caps import Cap, parse_cap
from emu.kvm.filter import SmcccFilterAction
from emu.kvm.profiles import ALIASES, DEFAULT_PROFILE, PROFILES, STRATEGY_LABELS, Profile, get_profile
from emu.kvm.vm import Vm
from emu.smccc import psci
from emu.smccc.decode import describe_call, describe_result
from emu.tools.report import stop_line
from emu.vmm.loader import Program, load_program
from emu.vmm.machine import Machine, RunResult, Vmm

# ``emu diff``: the profiles answered differently (documented with the other exit codes).
EXIT_PROFILES_DIFFER = 8


def _version(v: int) -> str:
    return f"{v >> 16}.{v & 0xFFFF}"


def profile_rows(profiles: Sequence[Profile]) -> list[tuple[str, list[str]]]:
    """(what, one cell per profile), derived from the profile data."""

    def row(what: str, cell) -> tuple[str, list[str]]:
        return what, [cell(p) for p in profiles]

    def events(p: Profile) -> str:
        out = ["SHUTDOWN", "RESET"]
        if psci.PSCI_1_1 in p.psci_versions:
            out.append("RESET data[0]=1 (RESET2)")
        if Cap.ARM_SYSTEM_SUSPEND in p.enableable_caps:
            out.append("SUSPEND (cap)")
        if psci.PSCI_1_3 in p.psci_versions:
            out.append("SHUTDOWN data[0]=1 (OFF2)")
        return ", ".join(out) + ("; ndata=1" if p.system_event_has_ndata else "; ndata=0")

    def unhandled(p: Profile) -> str:
        text = STRATEGY_LABELS[p.route_unhandled]
        if p.smccc_filter:
            text += "; FWD_TO_USER: EXIT_HYPERCALL nr=fid, args=0, flags"
        return text

    return [
        row("SMCCC", lambda p: _version(p.smccc_version)),
        row("PSCI default", lambda p: _version(p.psci_default_version)),
        row("PSCI accepted", lambda p: ", ".join(["0.1 (no PSCI_0_2)", *map(_version, p.psci_versions)])),
        row("SMC from EL1", lambda p: STRATEGY_LABELS[p.handle_smc]),
        row("unhandled calls", unhandled),
        row("EL2 fast path", lambda p: ", ".join(smccc.name_of(f) for f in sorted(p.hvc_fast_path))),
        row(
            "reserved affinity bits",
            lambda p: "INVALID_PARAMS" if p.psci_reject_reserved_affinity else "masked",
        ),
        row("caps", lambda p: ", ".join(f"{c.name}={p.cap_numbers[c]}" for c in p.caps)),
        row("enable_cap", lambda p: ", ".join(c.name for c in sorted(p.enableable_caps)) or "-"),
        row("SMCCC filter", lambda p: "yes (VM attr 0/0)" if p.smccc_filter else "no (ENXIO)"),
        row("bitmap gate", lambda p: "yes" if p.bitmap_gate else "no"),
        row(
            "firmware registers", lambda p: ", ".join(one_reg.FIRMWARE_REG_NAMES[r] for r in p.firmware_regs)
        ),
        row("system events", events),
        row("SET_MP_STATE", lambda p: ", ".join(s.name for s in p.settable_mp_states)),
        row("handler errors", lambda p: "KVM_RUN fails" if p.hvc_errors_to_user else "x0 = -1, resume"),
    ]


def profile_lines() -> list[str]:
    """``emu profiles``: the profiles, then a table of every row where they differ."""
    profiles = list(PROFILES.values())
    lines = []
    for p in profiles:
        tags = [t for t, on in (("default", p.name == DEFAULT_PROFILE),) if on]
        tags += [f"alias {a}" for a, n in ALIASES.items() if n == p.name]
        lines.append(f"{p.name}{' (' + ', '.join(tags) + ')' if tags else ''}: {p.summary}")
    lines.append("Each profile is the mainline .0 release; stable backports are not modelled.")
    lines.append("")
    lines.append("What differs (each value, then the profiles that have it):")
    width = len(", ".join(p.name for p in profiles[-3:]))
    for what, cells in profile_rows(profiles):
        if len(set(cells)) == 1:
            continue
        lines.append(f"  {what}")
        groups: dict[str, list[str]] = {}
        for p, cell in zip(profiles, cells, strict=True):
            groups.setdefault(cell, []).append(p.name)
        for cell, names in groups.items():
            lines.append(f"    {', '.join(names):<{width}}  {cell}")
    return lines


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r).rstrip() for r in rows]
    return out


# -- emu diff ---------------------------------------------------------------------------------


def _answer(event: HypercallEvent) -> str:
    exit_ = event.exit
    if isinstance(exit_, HypercallExit):
        text = f"exit HYPERCALL nr={exit_.nr:#x} flags={exit_.flags:#x}"
        if event.result is not None:
            text += f", VMM: {describe_result(event.fid, event.result)}"
        return text
    if isinstance(exit_, SystemEventExit):
        data = ",".join(hex(d) for d in exit_.data)
        return f"exit SYSTEM_EVENT {exit_.type.name} ndata={exit_.ndata} data=[{data}]"
    if event.result is None:
        return "(registers untouched)"
    return describe_result(event.fid, event.result)


def _call(event: HypercallEvent) -> str:
    return f"{event.conduit} #{event.imm:#x} {describe_call(event.fid, event.args)}"


@dataclass
class DiffRow:
    """One call position: the call (as the first profile made it) and each profile's answer."""

    index: int
    vcpu: int | None
    call: str
    answers: list[str | None]
    # Each profile's call at this position (they differ when the guest took another path).
    calls: list[str | None] = field(default_factory=list)

    @property
    def differs(self) -> bool:
        return len(set(self.answers)) > 1 or len(set(self.calls)) > 1

    def cells(self) -> list[str]:
        out = []
        for call, answer in zip(self.calls, self.answers, strict=True):
            if answer is None:
                out.append("-")
            elif call != self.call:
                out.append(f"{call} -> {answer}")
            else:
                out.append(answer)
        return out


@dataclass
class DiffResult:
    """``emu diff``: per-position rows, then each profile's stop and system events."""

    profiles: list[str]
    rows: list[DiffRow]
    stops: list[str]
    system_events: list[list[str]]
    notes: list[list[str]]

    @property
    def same(self) -> bool:
        return (
            not any(r.differs for r in self.rows)
            and len(set(self.stops)) == 1
            and len({tuple(e) for e in self.system_events}) == 1
        )

    @property
    def differing(self) -> list[DiffRow]:
        return [r for r in self.rows if r.differs]

    def lines(self) -> list[str]:
        header = ["", "#", "call", *self.profiles]
        body = [["*" if r.differs else "", str(r.index), r.call, *r.cells()] for r in self.rows]
        out = _table(header, body)
        out.append("")
        if len(set(self.stops)) > 1 or len({tuple(e) for e in self.system_events}) > 1:
            out.append("stops and system events differ:")
        for name, stop, events, notes in zip(
            self.profiles, self.stops, self.system_events, self.notes, strict=True
        ):
            out.append(f"  {name}: {stop}")
            out += [f"      {e}" for e in events]
            out += [f"      note: {n}" for n in notes]
        verdict = (
            "the profiles agree" if self.same else f"{len(self.differing)} of {len(self.rows)} calls differ"
        )
        out.append(verdict)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "profiles": self.profiles,
            "same": self.same,
            "rows": [
                {
                    "index": r.index,
                    "vcpu": r.vcpu,
                    "call": r.call,
                    "calls": r.calls,
                    "answers": r.answers,
                    "differs": r.differs,
                }
                for r in self.rows
            ],
            "stops": self.stops,
            "system_events": self.system_events,
            "notes": self.notes,
        }

    def __repr__(self) -> str:
        return "\n".join(self.lines())

    def _repr_html_(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(h)}</th>" for h in ["#", "call", *self.profiles])
        body = []
        for r in self.rows:
            style = ' style="background:#fde2e2"' if r.differs else ""
            cells = "".join(f"<td>{esc(c)}</td>" for c in [str(r.index), r.call, *r.cells()])
            body.append(f"<tr{style}>{cells}</tr>")
        stops = "".join(f"<td>{esc(s)}</td>" for s in self.stops)
        body.append(f"<tr><td></td><td><b>stop</b></td>{stops}</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def diff_runs(
    runs: Iterable[tuple[str, Vm, RunResult]], notes: Sequence[list[str]] | None = None
) -> DiffResult:
    """Align the hypercalls of finished runs by position and compare the answers."""
    runs = list(runs)
    names = [name for name, _, _ in runs]
    calls = [list(vm.hypercalls) for _, vm, _ in runs]
    rows = []
    for i in range(max((len(c) for c in calls), default=0)):
        events = [c[i] if i < len(c) else None for c in calls]
        first = next(e for e in events if e is not None)
        rows.append(
            DiffRow(
                index=i,
                vcpu=first.vcpu,
                call=_call(first),
                answers=[None if e is None else _answer(e) for e in events],
                calls=[None if e is None else _call(e) for e in events],
            )
        )
    stops = [stop_line(result.stop) for _, _, result in runs]
    system_events = [
        [
            f"{e.type.name} ndata={e.ndata} data=[{','.join(hex(d) for d in e.data)}]"
            for e in result.exits
            if isinstance(e, SystemEventExit)
        ]
        for _, _, result in runs
    ]
    return DiffResult(names, rows, stops, system_events, list(notes) if notes else [[] for _ in runs])


def configure_for(
    vm: Vm,
    caps: Iterable[Cap | str] = (),
    filters: Iterable[tuple[int, int, int]] = (),
    regs: Iterable[tuple[int, int]] = (),
) -> list[str]:
    """Apply what the profile supports; return a note for each setting it has no place for."""
    notes = []
    profile = vm.profile
    for cap in caps:
        cap = parse_cap(cap) if isinstance(cap, str) else cap
        if cap in profile.enableable_caps:
            vm.enable_cap(cap)
        else:
            notes.append(f"{cap.kvm_name} not available")
    for base, nr, action in filters:
        if profile.smccc_filter:
            vm.set_smccc_filter(base, nr, action)
        else:
            notes.append(f"no SMCCC filter for {base:#x}:{nr:#x}:{SmcccFilterAction(action).flag_name}")
    if not vm.vcpus:
        vm.create_vcpu(0)
    for reg, value in regs:
        if reg in vm.vcpus[0].get_reg_list():
            for vcpu in vm.vcpus:
                vcpu.set_one_reg(reg, value)
        else:
            notes.append(f"no register {one_reg.reg_name(reg)}")
    return notes


def diff(
    program: str | Path | Program,
    profiles: Sequence[str] | str,
    *,
    cpus: int = 1,
    caps: Iterable[Cap | str] = (),
    filters: Iterable[tuple[int, int, int]] = (),
    regs: Iterable[tuple[int, int]] = (),
    seed: int = 0,
    schedule: str = "rr",
    vmm: Vmm | None = None,
    reboots: int = 0,
    timeout: float = 10.0,
) -> DiffResult:
    """Run ``program`` (a path or a loaded ``Program``) under each profile and compare.

    Settings a profile lacks (a capability, the filter, a register) are skipped for that
    profile and listed in ``DiffResult.notes``.
    """
    names = [n.strip() for n in profiles.split(",")] if isinstance(profiles, str) else list(profiles)
    image = program if isinstance(program, Program) else load_program(program)
    caps, filters, regs = list(caps), list(filters), list(regs)
    runs, notes = [], []
    for name in names:
        profile = get_profile(name)
        vm = Vm(profile, cpus=cpus, seed=seed, schedule=schedule, timeout=timeout)
        with contextlib.closing(vm):
            notes.append(configure_for(vm, caps, filters, regs))
            machine = Machine(vm, image, vmm=vmm, reboots=reboots)
            runs.append((profile.name, vm, machine.run()))
    return diff_runs(runs, notes)
