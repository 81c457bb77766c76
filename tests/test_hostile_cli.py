"""``bench/hostile_cli.py`` in small: a few of its bad inputs and two of its Ctrl-C kinds through
the campaign's own case machinery, and cases planted to break each of its checks, which it
must report."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from types import ModuleType

from tests.conftest import ROOT


def _load_campaign() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hostile_cli", ROOT / "bench" / "hostile_cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


hostile = _load_campaign()
CASES = {case.name: case for case in hostile.all_cases(repeat=1)}

SAMPLE = (
    "program/missing",
    "number/cpus=0",
    "asm/nul-byte",
    "vmm/exit-3-in-handler",
    "restore/state-emptied",
    "closed-stdout/run-text",
    "ctrl-c/tight#1",
    "ctrl-c/vmm-sleeps#1",
)


def test_the_case_table_covers_every_subcommand() -> None:
    inputs = [c for c in CASES.values() if not c.timed]
    assert len(inputs) >= 122
    commands = {c.argv[0] for c in inputs if c.argv}
    assert commands >= {"run", "explore", "fuzz", "diff", "coverage", "dtb", "profiles"}
    assert all(c.status in (0, 1, 2, 3, 5) for c in inputs)
    assert len(set(CASES)) == len(CASES)


def test_a_sample_of_the_campaign_holds() -> None:
    results = hostile.run_cases([CASES[name] for name in SAMPLE], jobs=2)
    assert [hostile.failure_line(r) for r in results if r.verdict != "pass"] == []
    interrupted = [r for r in results if r.case.interrupt_after is not None]
    assert len(interrupted) == 2 and all(r.status == 130 and r.latency < 1.0 for r in interrupted)


def test_the_checker_reports_what_breaks() -> None:
    bad_flag = CASES["number/cpus=0"]
    spin = {"spin.S": "spin: b spin\n"}
    # A --vmm whose import leaves a child in emu's process group, then fails.
    orphan = "import subprocess\nsubprocess.Popen(['sleep', '30'])\nraise RuntimeError('gone')\n"
    planted = {
        "status": (
            dataclasses.replace(bad_flag, name="planted/status", status=1),
            "exit status 2, expected 1",
        ),
        "fragment": (
            dataclasses.replace(bad_flag, name="planted/fragment", fragment="no such words"),
            "error line lacks 'no such words'",
        ),
        "cap": (
            hostile.Case("planted/cap", ("run", "spin.S", "--timeout", "60"), 5, files=spin, cap=2),
            "still running after its 2 s cap (killed)",
        ),
        "orphan": (
            hostile.Case(
                "planted/orphan", ("run", "spin.S", "--vmm", "vmm.py"), 1, files={**spin, "vmm.py": orphan}
            ),
            "left running: ",
        ),
        "partial-output": (
            hostile.Case("planted/output", ("dtb", "-o", "x.dtb"), 0, expect="quiet", absent=("x.dtb",)),
            "left x.dtb behind",
        ),
        "latency": (
            dataclasses.replace(CASES["ctrl-c/tight#1"], name="planted/latency", within=0.0),
            "to stop after SIGINT (limit 0 s)",
        ),
    }
    results = {r.case.name: r for r in hostile.run_cases([case for case, _ in planted.values()], jobs=2)}
    for case, words in planted.values():
        result = results[case.name]
        assert result.verdict == "fail", (case.name, result.problems)
        assert any(words in problem for problem in result.problems), (case.name, result.problems)
    # The campaign's exit status follows.
    assert hostile.summary(list(results.values()), 1.0)["failed"] == len(planted)
