"""Regression-test kit for PSCI boot flows, registered as a pytest plugin (``-p emu.testing``
is automatic once emu is installed).

A boot-flow test is a few lines::

    def test_smp_boot(emu_boot, emu_schedule):
        boot = emu_boot("firmware/smp_boot.S", cpus=4, schedule=emu_schedule)
        boot.assert_system_event("SHUTDOWN")
        assert boot.psci_results("PSCI_CPU_ON64") == ["SUCCESS"] * 3 + ["INVALID_PARAMS (-2)"]
        assert boot.u64(0x4010_0000) == 3

``emu_boot`` builds a VM from a program (file or inline source), runs it with emu's VMM
and returns a ``Boot`` to assert on: the stop, the exits, the PSCI events with the power
changes they caused, the hypercalls, guest memory. ``emu_schedule`` parametrizes a test
over round robin and ``--emu-seeds`` seeded random schedules (default 200); a failing
case's id names the seed, and ``emu run PROGRAM --schedule random --seed S`` replays it.
``--emu-coverage`` reports, at the end of the session, which SMCCC functions and return
codes all the session's VMs exercised (``emu.tools.coverage``).
The fixtures wrap ``emu.vmm.boot``, which works without pytest (notebooks use it directly).
"""

from __future__ import annotations

import pytest

from emu.kvm import vm as kvm_vm
from emu.tools import coverage
from emu.vmm.boot import boot, schedules

DEFAULT_SEEDS = 200


# -- pytest plugin -------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--emu-seeds",
        type=int,
        default=DEFAULT_SEEDS,
        help=f"random schedules per emu_schedule test (default {DEFAULT_SEEDS})",
    )
    parser.addoption(
        "--emu-coverage",
        action="store_true",
        help="report which SMCCC functions and return codes the session's VMs exercised",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("emu_coverage"):
        collected = coverage.Coverage()
        kvm_vm.on_vm_created.append(lambda vm: collected.add(vm.trace))
        config._emu_coverage = collected  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    collected = getattr(config, "_emu_coverage", None)
    if collected is not None:
        terminalreporter.section("emu ABI coverage")
        for line in coverage.report_lines(collected.report()):
            terminalreporter.write_line(line)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "emu_schedule" in metafunc.fixturenames:
        seeds = metafunc.config.getoption("emu_seeds")
        metafunc.parametrize("emu_schedule", schedules(seeds), ids=str)


@pytest.fixture
def emu_boot():
    """``emu_boot(program | source=..., cpus=.., caps=.., schedule=.., vmm=..)`` -> ``Boot``."""
    return boot
