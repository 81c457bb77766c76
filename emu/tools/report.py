"""Turning a run into what the user reads: one line per hypercall, the stop, registers, or JSON.

The JSON form is a stable, deterministic document (integers as unsigned JSON numbers,
no timestamps), so two runs with the same program, flags and seed compare byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

from emu.abi.exits import Exit, FaultExit, HypercallExit, StopExit, SystemEventExit, exit_to_json
from emu.abi.trace import HypercallEvent
from emu.kvm.vm import Vm
from emu.smccc.decode import describe_call, describe_result
from emu.vmm.machine import Machine, RunResult

# Exit status of ``emu run`` per stop reason; only a system event is a success.
EXIT_STATUS = {"system_event": 0, "fault": 3, "budget": 4, "timeout": 5, "idle": 6, "killed": 10}


def stop_reason(stop: Exit) -> str:
    if isinstance(stop, SystemEventExit):
        return "system_event"
    if isinstance(stop, FaultExit):
        return "fault"
    if isinstance(stop, StopExit):
        return stop.reason.value
    raise TypeError(f"not a stop: {stop!r}")


# -- human -----------------------------------------------------------------------------------


def event_line(event: HypercallEvent, with_vcpu: bool = False) -> str:
    """``hvc #0x0  PSCI_VERSION() -> 0x10000``, prefixed ``[vCPU n]`` when there are several."""
    call = describe_call(event.fid, event.args)
    head = f"{event.conduit} #{event.imm:#x}  {call}"
    if with_vcpu:
        head = f"[{event.vcpu}] {head}"
    exit_ = event.exit
    if isinstance(exit_, HypercallExit):
        tail = f"exit HYPERCALL nr={exit_.nr:#x}"
        if exit_.flags:
            tail += f" flags={exit_.flags:#x}"
        if event.result is not None:
            tail += f", VMM answered {describe_result(event.fid, event.result)}"
        return f"{head} -> {tail}"
    if isinstance(exit_, SystemEventExit):
        return f"{head} -> exit SYSTEM_EVENT {exit_.type.name}"
    if event.result is None:
        return f"{head} -> (registers untouched)"
    return f"{head} -> {describe_result(event.fid, event.result)}"


def stop_line(stop: Exit) -> str:
    if isinstance(stop, SystemEventExit):
        data = ", ".join(hex(d) for d in stop.data)
        return (
            f"stop: system event {stop.type.name} ({int(stop.type)}) from vCPU {stop.vcpu}, "
            f"ndata={stop.ndata}, data=[{data}]"
        )
    if isinstance(stop, (FaultExit, StopExit)):
        return f"stop: {stop.describe()}"
    raise TypeError(f"not a stop: {stop!r}")


def register_lines(vm: Vm) -> list[str]:
    lines = []
    for vcpu in vm.vcpus:
        regs = vcpu.get_regs()
        lines.append(
            f"vCPU {vcpu.id} (mpidr {vcpu.mpidr:#x}, {vcpu.power.value}, mp_state {vcpu.mp_state.name}):"
        )
        names = list(regs)
        for i in range(0, len(names), 4):
            lines.append("  " + "  ".join(f"{n:>6} {regs[n]:#018x}" for n in names[i : i + 4]))
    return lines


# -- JSON -------------------------------------------------------------------------------------


def stop_json(stop: Exit) -> dict[str, Any]:
    reason = stop_reason(stop)
    if isinstance(stop, SystemEventExit):
        return {**exit_to_json(stop), "reason": reason}
    if isinstance(stop, FaultExit):
        return {
            "reason": reason,
            "vcpu": stop.vcpu,
            "pc": stop.pc,
            "insn": stop.insn,
            "cause": stop.cause,
            "address": stop.address,
        }
    assert isinstance(stop, StopExit)
    return {"reason": reason, "vcpu": stop.vcpu, "detail": stop.detail}


def _without_kind(record: dict[str, Any]) -> dict[str, Any]:
    record.pop("kind", None)
    return record


def interrupts_json(vm: Vm) -> dict[str, Any] | None:
    """The vGIC's version and, per INTID, how many times it was raised, taken and completed."""
    chip = vm.irqchip
    if chip is None:
        return None
    counts: dict[int, dict[str, int]] = {}
    for (what, intid), n in sorted(chip.counts.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        counts.setdefault(intid, {"intid": intid, "raised": 0, "acked": 0, "completed": 0})[what] = n
    return {"gic": f"v{chip.version}", "counts": list(counts.values())}


def run_json(machine: Machine, result: RunResult, program: str | None = None) -> dict[str, Any]:
    vm = machine.vm
    answers = iter(result.answers)
    exits = []
    for exit_ in result.exits:
        entry = exit_to_json(exit_)
        if isinstance(exit_, HypercallExit):
            answer = next(answers)
            entry["answer"] = list(answer) if answer is not None else None
        exits.append(entry)
    return {
        "program": program,
        "profile": vm.profile.name,
        "caps": [c.kvm_name for c in vm.enabled_caps],
        "filter": vm.smccc_filter.to_json(),
        "seed": vm.seed,
        "schedule": vm.scheduler.name,
        "stop": stop_json(result.stop),
        "reboots": result.reboots,
        "exits": exits,
        "hypercalls": [_without_kind(e.to_json()) for e in vm.hypercalls],
        "psci": [_without_kind(e.to_json()) for e in vm.psci_events],
        "exceptions": [_without_kind(e.to_json()) for e in vm.trace.exceptions],
        "console": machine.console.decode(errors="replace"),
        "interrupts": interrupts_json(vm),
        "vcpus": [
            {
                "id": v.id,
                "mpidr": v.mpidr,
                "power": v.power.value,
                "mp_state": v.mp_state.name,
                "regs": v.get_regs(),
            }
            for v in vm.vcpus
        ],
    }


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2)
