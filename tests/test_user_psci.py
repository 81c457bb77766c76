"""Userspace PSCI (PSCI_TO_USER): same boot flows as in-kernel PSCI unless the policy objects."""

from __future__ import annotations

import pytest

from emu import Cap, Vm
from emu.smccc.psci import PsciRet
from emu.vmm.boot import Schedule, boot
from emu.vmm.user_psci import HotplugPolicy
from tests.conftest import FIRMWARE

USER = ["hvc-to-user", "psci-to-user"]


@pytest.mark.parametrize(
    "program, cpus",
    [("smp_boot.S", 4), ("hotplug.S", 2), ("cpu_on_race.S", 4), ("system_reset.S", 2), ("cpu_suspend.S", 1)],
)
@pytest.mark.parametrize("schedule", [Schedule("rr"), Schedule("random", 4)], ids=str)
def test_userspace_psci_matches_kvm(program: str, cpus: int, schedule: Schedule) -> None:
    kernel = boot(FIRMWARE / program, cpus=cpus, schedule=schedule, reboots=2)
    user = boot(FIRMWARE / program, cpus=cpus, schedule=schedule, reboots=2, caps=USER)
    kernel.assert_system_event("SHUTDOWN")
    user.assert_system_event("SHUTDOWN")
    assert {e.handled for e in kernel.psci} == {"kernel"}
    assert {e.handled for e in user.psci} == {"user"}
    # The guest-visible outcome is the same; only the schedule's polling may differ.
    for function in ("PSCI_CPU_ON64", "PSCI_CPU_OFF", "PSCI_CPU_SUSPEND64"):
        assert sorted(user.psci_results(function)) == sorted(kernel.psci_results(function))
    assert user.power() == kernel.power()


def test_hotplug_policy_refuses_absent_cpus_only() -> None:
    vm = Vm(cpus=3)
    policy = HotplugPolicy(present={0, 1})
    caller, present, absent = vm.vcpus
    assert policy(caller, present) is None
    assert policy(caller, absent) == PsciRet.DENIED
    assert policy(caller, None) is None  # an unknown MPIDR is still INVALID_PARAMS
    policy.plug(2)
    assert policy(caller, absent) is None
    assert policy.refused == [2]


def test_policy_verdict_reaches_the_guest_and_the_target_stays_off() -> None:
    from emu.vmm.machine import Vmm

    deny_all = Vmm(cpu_on_policy=lambda caller, target: PsciRet.DENIED)
    result = boot(FIRMWARE / "smp_boot.S", cpus=2, caps=USER, vmm=deny_all)
    result.assert_fault("brk #2")  # the firmware's "CPU_ON failed" check
    assert result.psci_results("PSCI_CPU_ON64") == ["DENIED (-3)"]
    assert result.power() == ["on", "off"]


def test_psci_to_user_events_record_the_vmm_answer() -> None:
    result = boot(FIRMWARE / "hotadd.S", cpus=3, caps=USER, vmm=FIRMWARE / "hotadd_vmm.py")
    on = [e for e in result.psci if e.name == "PSCI_CPU_ON64"]
    assert [(e.result, [(c.vcpu, c.power.value, c.by) for c in e.changes]) for e in on] == [
        (2**64 - 3, []),
        (0, [(2, "on", 0)]),
    ]
    exits = [e for e in result.hypercalls if e.name == "PSCI_CPU_ON64"]
    assert [e.result for e in exits] == [2**64 - 3, 0]


def test_without_psci_to_user_the_policy_is_not_consulted() -> None:
    from emu.vmm.machine import Vmm

    called = []
    vmm = Vmm(cpu_on_policy=lambda caller, target: called.append(target) or PsciRet.DENIED)
    result = boot(FIRMWARE / "smp_boot.S", cpus=2, caps=["hvc-to-user"], vmm=vmm)
    result.assert_system_event("SHUTDOWN")
    assert called == []
    assert Cap.ARM_PSCI_TO_USER not in result.vm.caps
