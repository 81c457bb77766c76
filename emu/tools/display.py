"""How emu objects look in a terminal and in Jupyter: decoded text and small HTML tables.

``Trace``, ``Vm``, ``Vcpu``, exits and register sets call into here from their
``_repr_html_`` / ``_repr_pretty_``; every row shows decoded names and return codes, e.g.
``PSCI_CPU_ON64(target=0x1, entry=0x40080100, ctx=0x2a) -> SUCCESS``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

from emu import rendering
from emu.abi.exits import ExitReason, FaultExit, HypercallExit, StopExit, SystemEventExit
from emu.abi.trace import (
    Event,
    ExceptionEvent,
    HypercallEvent,
    InterruptEvent,
    PowerEvent,
    PsciEvent,
    Trace,
    VmEvent,
)
from emu.arm.exceptions import EC_NAMES
from emu.arm.regs import Registers
from emu.kvm.vcpu import Vcpu
from emu.kvm.vm import Vm
from emu.smccc.decode import describe_call, describe_result

MAX_ROWS = 500


def event_summary(event: Event) -> tuple[str, str, str]:
    """(vCPU, what, outcome) for one event, all decoded."""
    if isinstance(event, HypercallEvent):
        what = f"{event.conduit} #{event.imm:#x}  {describe_call(event.fid, event.args)}"
        if event.exit is not None:
            reason = event.exit.reason
            outcome = f"exit {reason.name if isinstance(reason, ExitReason) else reason}"
            if event.result is not None:
                outcome += f", VMM: {describe_result(event.fid, event.result)}"
        elif event.result is None:
            outcome = "(registers untouched)"
        else:
            outcome = describe_result(event.fid, event.result)
        return str(event.vcpu), what, outcome
    if isinstance(event, PsciEvent):
        changes = ", ".join(f"vCPU {c.vcpu} {c.power.value}" for c in event.changes)
        result = describe_result(event.fid, event.result) if event.result is not None else "-"
        outcome = result + (f"; {changes}" if changes else "")
        return str(event.caller), f"{event.name} [{event.handled}]", outcome
    if isinstance(event, PowerEvent):
        by = "" if event.by is None else f" (by vCPU {event.by})"
        return str(event.vcpu), "power", f"{event.power.value}{by}"
    if isinstance(event, ExceptionEvent):
        ec = EC_NAMES.get(event.ec, f"EC {event.ec:#x}")
        far = "" if event.far is None else f", FAR {event.far:#x}"
        return (
            str(event.vcpu),
            f"exception {ec}",
            f"ESR {event.esr:#x}, ELR {event.elr:#x}{far} -> vector {event.vector:#x}",
        )
    if isinstance(event, VmEvent):
        return ("-" if event.vcpu is None else str(event.vcpu)), event.what, event.detail
    if isinstance(event, InterruptEvent):
        return ("-" if event.vcpu is None else str(event.vcpu)), f"irq {event.what}", f"INTID {event.intid}"
    return str(event.vcpu), f"{event.pc:#x}", event.text


def _time(event: Event) -> str:
    t = getattr(event, "time_ns", None)
    return "" if t is None else f"{t / 1000:.3f}"


def trace_text(trace: Trace, limit: int = MAX_ROWS) -> str:
    lines = [repr(trace)]
    for event in trace.events[:limit]:
        vcpu, what, outcome = event_summary(event)
        lines.append(f"{_time(event):>12} us  [{vcpu}] {what} -> {outcome}")
    if len(trace.events) > limit:
        lines.append(f"... {len(trace.events) - limit} more events")
    return "\n".join(lines)


def html_table(headers: Sequence[str], rows: Iterable[Sequence[str]], caption: str = "") -> str:
    head = "".join(f"<th style='text-align:left'>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td style='text-align:left'><code>{escape(str(c))}</code></td>" for c in row)
        + "</tr>"
        for row in rows
    )
    cap = f"<caption style='text-align:left'><b>{escape(caption)}</b></caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def trace_html(trace: Trace, limit: int = MAX_ROWS) -> str:
    rows = [(_time(e), *event_summary(e)) for e in trace.events[:limit]]
    caption = repr(trace) + (f" (first {limit} shown)" if len(trace.events) > limit else "")
    return html_table(("time (us)", "vCPU", "event", "outcome"), rows, caption)


def registers_text(regs: dict[str, int]) -> str:
    names = list(regs)
    return "\n".join(
        "  ".join(f"{n:>6} {regs[n]:#018x}" for n in names[i : i + 4]) for i in range(0, len(names), 4)
    )


def registers_html(regs: dict[str, int], caption: str = "registers") -> str:
    names = list(regs)
    rows = []
    for i in range(0, len(names), 4):
        row: list[str] = []
        for n in names[i : i + 4]:
            row += [n, f"{regs[n]:#018x}"]
        rows.append(row)
    return html_table(("reg", "value") * 4, rows, caption)


def vcpu_html(vcpu: Vcpu) -> str:
    caption = (
        f"vCPU {vcpu.id}: MPIDR {vcpu.mpidr:#x}, {vcpu.power.value}, "
        f"mp_state {vcpu.mp_state.name}, last ESR {vcpu.esr:#x}"
    )
    return registers_html(vcpu.get_regs(), caption)


def vm_html(vm: Vm) -> str:
    rows = [(str(v.id), f"{v.mpidr:#x}", v.power.value, v.mp_state.name, f"{v.pc:#x}") for v in vm.vcpus]
    caps = ", ".join(c.kvm_name for c in vm.enabled_caps) or "none"
    caption = (
        f"VM: profile {vm.profile.name}, {vm.ram_size >> 20} MiB at {vm.ram_base:#x}, caps {caps}, "
        f"{len(vm.hypercalls)} hypercalls"
    )
    return html_table(("vCPU", "MPIDR", "power", "mp_state", "pc"), rows, caption)


def exit_html(exit_) -> str:
    return html_table(("exit",), [(repr(exit_),)])


def register() -> None:
    """Make traces, register sets, vCPUs, VMs and exits render through this module."""
    rendering.register(Trace, html=trace_html, text=trace_text)
    rendering.register(Registers, html=registers_html, text=registers_text)
    rendering.register(Vcpu, html=vcpu_html)
    rendering.register(Vm, html=vm_html)
    for exit_type in (HypercallExit, SystemEventExit, FaultExit, StopExit):
        rendering.register(exit_type, html=exit_html)
