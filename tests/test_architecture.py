"""The shape of the code: layers, no import cycles, a core free of test and plotting tools,
and the linters and type checker clean. Each check runs the real tool on the real tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.conftest import ROOT

TOOLS_BIN = Path(sys.executable).parent


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = TOOLS_BIN / name
    command = [str(exe)] if exe.exists() else [shutil.which(name) or name]
    return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively: every import cycle as one component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_cycle_finder_finds_a_cycle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_counting_function_level_and_type_checking_imports() -> None:
    graph = grimp.build_graph("emu")
    edges = {
        m: {i for i in graph.find_modules_directly_imported_by(m) if i.startswith("emu")}
        for m in graph.modules
    }
    assert strongly_connected(edges) == []


def test_import_contracts_hold() -> None:
    result = run_tool("lint-imports")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def test_layer_packages_are_what_emu_contains() -> None:
    packages = sorted(p.name for p in (ROOT / "emu").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert packages == ["abi", "arm", "kvm", "smccc", "testing", "tools", "vmm"]


def test_import_emu_loads_no_test_or_plotting_tools() -> None:
    code = (
        "import sys, emu, emu.vmm.boot; "
        "print(sorted(m for m in ('pytest', 'matplotlib', 'IPython', 'hypothesis', 'dask') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


def test_every_module_but_the_pytest_kit_imports_without_pytest() -> None:
    # emu.__main__ runs the command line when imported; emu.testing is the pytest kit.
    modules = sorted(
        m for m in grimp.build_graph("emu").modules if m != "emu.__main__" and not m.startswith("emu.testing")
    )
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\nprint('ok')"
    env_path = str(ROOT / "tests" / "support" / "no_pytest")
    result = subprocess.run(
        [sys.executable, "-c", code, *modules],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": env_path},
        cwd=ROOT,
    )
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize("args", [("check", "."), ("format", "--check", ".")], ids=["check", "format"])
def test_ruff(args: tuple[str, ...]) -> None:
    result = run_tool("ruff", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_mypy() -> None:
    result = run_tool("mypy")
    assert result.returncode == 0, result.stdout[-5000:]
