"""Every program in firmware/ does what its header says, checked through the CLI's JSON."""

from __future__ import annotations

import pytest

from tests.conftest import FIRMWARE, run_cli


def calls(doc: dict) -> list[tuple[str, str, int | None]]:
    return [(h["conduit"], h["name"], h["result"]) for h in doc["hypercalls"]]


# What psci_boot_check.S sees per profile: PSCI_VERSION over HVC, the same over SMC #0,
# and the SYSTEM_OFF event's ndata (reference sections 0, 1.6, 4.1, 5.5).
BOOT_CHECK = {
    "rfc-2021": (0x10000, 2**64 - 1, 0),
    "linux-5.15": (0x10000, 2**64 - 1, 0),
    "linux-6.1": (0x10001, 2**64 - 1, 1),
    "linux-6.6": (0x10001, 0x10001, 1),
    "linux-6.13": (0x10003, 0x10003, 1),
}


@pytest.mark.parametrize("profile", list(BOOT_CHECK))
def test_psci_boot_check_passes_every_check(profile: str) -> None:
    result = run_cli("run", FIRMWARE / "psci_boot_check.S", "--profile", profile, "--json")
    doc = result.json()
    assert result.status == 0, result.stdout
    assert doc["stop"]["reason"] == "system_event" and doc["stop"]["type_name"] == "SHUTDOWN"
    assert [(conduit, name) for conduit, name, _ in calls(doc)] == [
        ("hvc", "SMCCC_VERSION"),
        ("hvc", "SMCCC_ARCH_FEATURES"),
        ("hvc", "SMCCC_ARCH_WORKAROUND_1"),
        ("hvc", "SMCCC_ARCH_FEATURES"),
        ("hvc", "PSCI_VERSION"),
        ("smc", "PSCI_VERSION"),
        ("hvc", "PSCI_FEATURES"),
        ("hvc", "PSCI_FEATURES"),
        ("hvc", "PSCI_MIGRATE_INFO_TYPE"),
        ("hvc", "PSCI_AFFINITY_INFO64"),
        ("hvc", "PSCI_SYSTEM_OFF"),
    ]
    hvc_version, smc_version, ndata = BOOT_CHECK[profile]
    assert [r for _, _, r in calls(doc)][:10] == [
        0x10001, 0, 0, 2**64 - 2, hvc_version, smc_version, 0, 2**64 - 1, 2, 0
    ]  # fmt: skip
    assert doc["stop"]["ndata"] == ndata


def test_psci_boot_check_catches_a_host_difference() -> None:
    # The same firmware on a vulnerable host must fail its WA1 check (brk #2): the guest
    # really compares, so the test above is not vacuous.
    from emu import HostCpu, Mitigation
    from emu.abi.exits import FaultExit
    from tests.conftest import make_vm

    _vm, vcpu = make_vm(
        (FIRMWARE / "psci_boot_check.S").read_text(), host=HostCpu(spectre_v2=Mitigation.VULNERABLE)
    )
    stop = vcpu.run()
    assert isinstance(stop, FaultExit) and stop.insn == "brk #2"


def test_vendor_call_answered_by_the_vmm() -> None:
    result = run_cli(
        "run",
        FIRMWARE / "vendor_call.S",
        "--cap",
        "hvc-to-user",
        "--vmm",
        FIRMWARE / "vendor_call_vmm.py",
        "--json",
    )
    doc = result.json()
    assert result.status == 0, result.stderr
    exit_ = doc["exits"][0]
    assert exit_ == {
        "vcpu": 0,
        "reason": "hypercall",
        "nr": 0x1234,
        "args": [0xC6000040, 40, 2, 0, 0, 0],
        "ret": 0,
        "flags": 0,
        "answer": [0, 42],
    }
    assert doc["hypercalls"][0]["handled"] == "user" and doc["hypercalls"][0]["result"] == 0


def test_vendor_call_guest_sees_the_vmm_answer() -> None:
    from emu import Cap, Vm
    from emu.abi.exits import SystemEventExit
    from emu.vmm.loader import load_program
    from emu.vmm.machine import Machine, load_vmm

    vm = Vm(timeout=20)
    vm.enable_cap(Cap.ARM_HVC_TO_USER)
    machine = Machine(
        vm, load_program(FIRMWARE / "vendor_call.S"), vmm=load_vmm(FIRMWARE / "vendor_call_vmm.py")
    )
    result = machine.run()
    assert isinstance(result.stop, SystemEventExit)
    assert int.from_bytes(vm.read_memory(0x4010_0000, 8), "little") == 42


@pytest.mark.parametrize("extra", [[], ["--cap", "hvc-to-user"]])
def test_vendor_call_without_an_answer_fails_in_the_guest(extra) -> None:
    result = run_cli("run", FIRMWARE / "vendor_call.S", *extra, "--json")
    doc = result.json()
    assert result.status == 3
    assert doc["stop"]["reason"] == "fault" and doc["stop"]["insn"] == "brk #1"
    assert doc["hypercalls"][0]["result"] == 2**64 - 1


def test_trng_entropy_is_reproducible_per_seed() -> None:
    runs = {seed: run_cli("run", FIRMWARE / "trng.S", "--json", "--seed", seed) for seed in (1, 1, 2)}
    first = run_cli("run", FIRMWARE / "trng.S", "--json", "--seed", "1")
    assert first.status == 0
    assert first.stdout == runs[1].stdout
    assert first.stdout != runs[2].stdout
    names = [h["name"] for h in first.json()["hypercalls"]]
    assert names == [
        "TRNG_VERSION",
        "TRNG_FEATURES",
        "TRNG_GET_UUID",
        "TRNG_RND64",
        "TRNG_RND32",
        "TRNG_RND32",
        "PSCI_SYSTEM_OFF",
    ]


def test_smc_conduit_is_not_supported_before_6_4() -> None:
    result = run_cli("run", FIRMWARE / "smc_conduit.S", "--json")
    assert result.status == 0
    assert calls(result.json()) == [
        ("smc", "PSCI_VERSION", 2**64 - 1),
        ("hvc", "PSCI_VERSION", 0x10000),
        ("hvc", "PSCI_SYSTEM_OFF", 2**64 - 6),
    ]
