"""Every test program behaves the same whatever interrupt controller the machine has.

The machine creates a GICv3 by default (``--gic v3``); ``v2`` and ``none`` must not change
what a program that never takes an interrupt does: the same hypercalls, the same stop.
"""

from __future__ import annotations

import pytest

from emu.vmm.boot import boot
from emu.vmm.machine import BootOptions
from tests.conftest import FIRMWARE, run_cli

# (program, keyword arguments of emu.vmm.boot.boot): the flags each header gives.
PROGRAMS = [
    ("psci_boot_check.S", {}),
    ("cpu_suspend.S", {}),
    ("exceptions.S", {}),
    ("smc_conduit.S", {}),
    ("trng.S", {}),
    ("cpu_on_race.S", {"cpus": 4}),
    ("smp_boot.S", {"cpus": 8}),
    ("hotplug.S", {"cpus": 2}),
    ("system_reset.S", {"cpus": 2, "reboots": 2}),
    ("hotadd.S", {"cpus": 3, "caps": ["hvc-to-user", "psci-to-user"], "vmm": FIRMWARE / "hotadd_vmm.py"}),
    ("vendor_call.S", {"caps": ["hvc-to-user"], "vmm": FIRMWARE / "vendor_call_vmm.py"}),
]


def outcome(name: str, kwargs: dict, gic: str) -> tuple:
    result = boot(FIRMWARE / name, boot_options=BootOptions(gic=gic), **kwargs)
    stop = result.stop
    return (
        type(stop).__name__,
        getattr(getattr(stop, "type", None), "name", None),
        [(e.vcpu, e.name, e.result) for e in result.hypercalls],
        result.power(),
        result.console,
    )


@pytest.mark.parametrize(("name", "kwargs"), PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_same_outcome_with_gic_v2_v3_and_none(name: str, kwargs: dict) -> None:
    none = outcome(name, kwargs, "none")
    assert outcome(name, kwargs, "v3") == none
    assert outcome(name, kwargs, "v2") == none


def test_gicv2_refuses_more_than_eight_vcpus() -> None:
    result = run_cli("run", FIRMWARE / "smp_boot.S", "--cpus", "9", "--gic", "v2")
    assert result.status == 1
    assert result.stderr.strip() == "emu: error: GICv2 supports at most 8 vCPUs, not 9: use --gic v3 for more"
    assert run_cli("run", FIRMWARE / "smp_boot.S", "--cpus", "9", "--gic", "v3").status == 0
