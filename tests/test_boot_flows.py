"""The PSCI boot flows in firmware/, under round robin and --emu-seeds random schedules.

Each test uses the emu.testing kit the way a user's regression test would.
"""

from __future__ import annotations

import pytest

from emu.vmm.boot import Schedule
from tests.conftest import FIRMWARE

SHARED = 0x4010_0000


@pytest.mark.parametrize("cpus", [1, 2, 4, 8])
def test_smp_boot(emu_boot, emu_schedule: Schedule, cpus: int) -> None:
    boot = emu_boot(FIRMWARE / "smp_boot.S", cpus=cpus, schedule=emu_schedule)
    boot.assert_system_event("SHUTDOWN")
    assert boot.psci_results("PSCI_CPU_ON64") == ["SUCCESS"] * (cpus - 1) + ["INVALID_PARAMS (-2)"]
    assert boot.psci_results("PSCI_CPU_OFF") == ["SUCCESS"] * (cpus - 1)
    assert boot.u64(SHARED, 2) == [cpus - 1, cpus - 1]
    assert boot.u64(SHARED + 0x1000, cpus)[1:] == [0x100 + i for i in range(1, cpus)]
    assert boot.u64(SHARED + 0x2000, cpus)[1:] == [0x8000_0000 | i for i in range(1, cpus)]
    assert boot.power() == ["off"] * cpus
    # Every secondary was powered on by vCPU 0 and off by itself.
    ons = [c for e in boot.psci if e.name == "PSCI_CPU_ON64" for c in e.changes]
    assert [(c.vcpu, c.power.value, c.by) for c in ons] == [(i, "on", 0) for i in range(1, cpus)]


def test_hotplug_cycles(emu_boot, emu_schedule: Schedule) -> None:
    boot = emu_boot(FIRMWARE / "hotplug.S", cpus=2, schedule=emu_schedule)
    boot.assert_system_event("SHUTDOWN")
    assert boot.psci_results("PSCI_CPU_ON64") == ["SUCCESS", "ALREADY_ON (-4)"] * 4
    assert boot.psci_results("PSCI_CPU_OFF", caller=1) == ["SUCCESS"] * 4
    assert boot.psci_results("PSCI_AFFINITY_INFO64")[-1] == "OFF"
    assert boot.u64(SHARED) == 4


@pytest.mark.parametrize("cpus", [2, 4, 8])
def test_cpu_on_race_has_exactly_one_winner(emu_boot, emu_schedule: Schedule, cpus: int) -> None:
    boot = emu_boot(FIRMWARE / "cpu_on_race.S", cpus=cpus, schedule=emu_schedule)
    boot.assert_system_event("SHUTDOWN")
    target = cpus - 1
    race = [e for e in boot.psci if e.name == "PSCI_CPU_ON64" and e.args[0] == target]
    results = sorted(boot.u64(SHARED + 0x100, cpus - 1))
    assert results == [0] + [2**64 - 4] * (cpus - 2)
    assert sorted(e.result for e in race) == results
    assert boot.u64(SHARED + 0x10) == 1  # the target started once


def test_system_reset_reboots_the_guest(emu_boot, emu_schedule: Schedule) -> None:
    boot = emu_boot(FIRMWARE / "system_reset.S", cpus=2, reboots=2, schedule=emu_schedule)
    boot.assert_system_event("SHUTDOWN")
    assert boot.result.reboots == 2
    assert boot.u64(SHARED, 2) == [3, 3]  # three boots, vCPU 1 started on each
    assert boot.psci_results("PSCI_CPU_ON64") == ["SUCCESS"] * 3
    assert [e.type.name for e in boot.exits] == ["RESET", "RESET", "SHUTDOWN"]


def test_system_reset_reboots_a_single_vcpu(emu_boot) -> None:
    boot = emu_boot(FIRMWARE / "system_reset.S", reboots=2)
    boot.assert_system_event("SHUTDOWN")
    assert boot.u64(SHARED) == 3
    assert boot.psci_results("PSCI_CPU_ON64") == ["INVALID_PARAMS (-2)"] * 3


def test_system_reset_without_reboots_ends_the_run(emu_boot) -> None:
    boot = emu_boot(FIRMWARE / "system_reset.S", cpus=2)
    boot.assert_system_event("RESET")
    assert boot.power() == ["off", "off"]


def test_hotadd_with_userspace_psci(emu_boot, emu_schedule: Schedule) -> None:
    boot = emu_boot(
        FIRMWARE / "hotadd.S",
        cpus=3,
        caps=["hvc-to-user", "psci-to-user"],
        vmm=FIRMWARE / "hotadd_vmm.py",
        schedule=emu_schedule,
    )
    boot.assert_system_event("SHUTDOWN")
    assert boot.psci_results("PSCI_CPU_ON64") == ["DENIED (-3)", "SUCCESS"]
    assert {e.handled for e in boot.psci} == {"user"}
    assert all(e.exit is not None for e in boot.hypercalls)  # every PSCI call went to userspace
    assert boot.u64(SHARED) == 0x2A


def test_hotadd_guest_notices_a_missing_refusal(emu_boot) -> None:
    # Without the VMM's policy the first CPU_ON succeeds and the guest reports it (brk #2):
    # the firmware really checks the DENIED it expects.
    boot = emu_boot(FIRMWARE / "hotadd.S", cpus=3, caps=["hvc-to-user", "psci-to-user"])
    boot.assert_fault("brk #2")


def test_cpu_suspend_and_wfi_wake_on_the_virtual_timer(emu_boot) -> None:
    boot = emu_boot(FIRMWARE / "cpu_suspend.S")
    boot.assert_system_event("SHUTDOWN")
    assert boot.psci_results("PSCI_CPU_SUSPEND64") == ["SUCCESS"]
    suspended = [c.power.value for e in boot.psci if e.name == "PSCI_CPU_SUSPEND64" for c in e.changes]
    assert suspended == ["suspended"]
    powers = [(p.vcpu, p.power.value) for p in boot.vm.power_events]
    assert powers[:4] == [(0, "suspended"), (0, "on"), (0, "halted"), (0, "on")]
