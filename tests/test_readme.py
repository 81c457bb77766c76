"""The README's promises: two set-up commands, CI runs the test one, the Python example works."""

from __future__ import annotations

import re

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def setup_commands() -> list[str]:
    return [line for line in README.splitlines() if line.startswith("python3 -m venv .venv && ")]


def test_two_setup_commands_demo_and_tests() -> None:
    demo, tests = setup_commands()
    assert demo.endswith("emu run firmware/psci_boot_check.S")
    assert "'.[test]'" in tests and tests.endswith("pytest -q")


def test_ci_runs_the_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup_commands()[1] in script


def test_python_example_runs(capsys) -> None:
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "SystemEventExit" in out and "VENDOR_HYP64:0x0040" in out
