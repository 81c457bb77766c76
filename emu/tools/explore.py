"""Exploring interleavings: what counts as "the same outcome", and how a search is reported.

``emu explore`` runs one program under many seeded random schedules. Two runs have the
same outcome when they stop the same way, every CPU_ON got the same multiset of return
codes, and every vCPU ends in the same power state. Each distinct outcome is reported
with how often it happened and the first seed that reproduces it
(``emu run PROGRAM --schedule random --seed S``).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from emu.abi.exits import FaultExit, StopExit, SystemEventExit
from emu.kvm.vm import Vm
from emu.smccc import psci
from emu.smccc.decode import describe_result
from emu.tools.campaign import Progress
from emu.vmm.machine import RunResult

__all__ = ["Progress", "explore_json", "explore_lines", "outcome", "outcome_key"]

_CPU_ON = {psci.CPU_ON, psci.CPU_ON64, psci.KVM_PSCI_CPU_ON}


def outcome(vm: Vm, result: RunResult) -> dict[str, Any]:
    """The facts that define an outcome, as plain data."""
    stop = result.stop
    if isinstance(stop, SystemEventExit):
        how = f"system_event {stop.type.name}"
    elif isinstance(stop, FaultExit):
        how = f"fault: {stop.cause} ({stop.insn})"
    else:
        assert isinstance(stop, StopExit)
        how = stop.reason.value
    cpu_on = Counter(
        describe_result(e.fid, e.result) for e in vm.psci_events if e.fid in _CPU_ON and e.result is not None
    )
    return {"stop": how, "cpu_on": dict(sorted(cpu_on.items())), "power": [v.power.value for v in vm.vcpus]}


def outcome_key(vm: Vm, result: RunResult) -> str:
    return json.dumps(outcome(vm, result), sort_keys=True)


def explore_lines(outcomes: dict[str, list[int]], runs: int) -> list[str]:
    lines = [f"{runs} seeds, {len(outcomes)} distinct outcome{'s' if len(outcomes) != 1 else ''}:"]
    for key, seeds in sorted(outcomes.items(), key=lambda kv: (-len(kv[1]), kv[1][0])):
        facts = json.loads(key)
        cpu_on = ", ".join(f"{name} x{count}" for name, count in facts["cpu_on"].items()) or "none"
        lines.append(
            f"  {len(seeds):>5} runs (e.g. --seed {seeds[0]}): stop {facts['stop']}; "
            f"CPU_ON {cpu_on}; power {','.join(facts['power'])}"
        )
    return lines


def explore_json(outcomes: dict[str, list[int]], program: str, runs: int) -> dict[str, Any]:
    return {
        "program": program,
        "runs": runs,
        "outcomes": [
            {**json.loads(key), "count": len(seeds), "seeds": seeds}
            for key, seeds in sorted(outcomes.items(), key=lambda kv: kv[1][0])
        ],
    }
