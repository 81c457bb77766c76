"""Run the ABI vectors in tests/vectors/ through real guest code (format: tests/vectors/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emu import LOAD_ADDR, PROFILES, Cap, HostCpu, MpState, Vm
from emu.abi.exits import FaultExit, HypercallExit, StopExit, SystemEventExit
from emu.kvm.filter import parse_filter_spec
from emu.kvm.one_reg import KVM_REG_ARM_PSCI_VERSION, parse_reg_name

VECTORS = Path(__file__).parent / "vectors"
M64 = (1 << 64) - 1
POISON = {f"x{i}": int(f"{i}" * 16, 16) for i in range(1, 6)}
DEFAULT_ANSWER = [0xA0, 0xA1, 0xA2, 0xA3]
END_MARK = 0x5EC
# ESR_EL2 for an A64 HVC / SMC: EC 0x16 / 0x17, IL = 1, ISS = imm16.
ESR_BASE = {"hvc": 0x5A00_0000, "smc": 0x5E00_0000}
KNOWN_KEYS = {
    "name",
    "profile",
    "conduit",
    "imm",
    "caps",
    "host",
    "vcpus",
    "psci_0_2",
    "pvtime_ipa",
    "regs",
    "expect",
    "expect_exit",
    "answer",
    "expect_stop",
    "expect_power",
    "expect_vcpu_regs",
    "profiles",
    "psci_version",
    "filter",
    "set_regs",
}
ALL = list(PROFILES)
# Names for the profile sets a vector may list (reference section 0).
GROUPS = {
    "all": ALL,
    "upstream": ALL[1:],
    "no-smc": ["rfc-2021", "linux-5.15", "linux-6.1"],
    "smc": ["linux-6.6", "linux-6.13"],
    "no-bitmaps": ["rfc-2021", "linux-5.15"],
    "bitmaps": ["linux-6.1", "linux-6.6", "linux-6.13"],
    "psci-1.1": ["linux-6.1", "linux-6.6", "linux-6.13"],
    "psci-1.3": ["linux-6.13"],
}


def profiles_of(vec: dict) -> list[str]:
    spec = vec.get("profiles")
    if spec is None:
        return [vec.get("profile", "rfc-2021")]
    names: list[str] = []
    for item in [spec] if isinstance(spec, str) else spec:
        names += GROUPS.get(item, [item])
    assert all(n in PROFILES for n in names), names
    return names


def load_vectors() -> list:
    """Every vector once per profile it applies to; a file may start with ``{defaults: ...}``."""
    vectors = []
    for path in sorted(VECTORS.glob("*.yaml")):
        items = yaml.safe_load(path.read_text())
        defaults = items.pop(0)["defaults"] if items and "defaults" in items[0] else {}
        for item in items:
            vec = {**defaults, **item}
            names = profiles_of(vec)
            for name in names:
                one = {**vec, "profile": name}
                one.pop("profiles", None)
                suffix = f" [{name}]" if "profiles" in vec else ""
                vectors.append(pytest.param(one, id=f"{path.stem}: {vec['name']}{suffix}"))
    return vectors


def guest_source(vec: dict) -> str:
    regs = {**POISON, **vec.get("regs", {})}
    lines = [f"    ldr x{i}, ={regs[f'x{i}'] & M64:#x}" for i in range(6)]
    lines += [
        f"    {vec['conduit']} #{vec['imm']:#x}",
        # Keep what the call left in x0..x5, prove the guest resumed, then stop at a BRK
        # (no hypercall, so nothing else changes power states or the trace).
        "    mov x19, x0",
        "    mov x20, x1",
        "    mov x21, x2",
        "    mov x22, x3",
        "    mov x23, x4",
        "    mov x24, x5",
        "    mov x25, #1",
        f"    brk #{END_MARK:#x}",
    ]
    return "\n".join(lines) + "\n"


def check_regs(expect: dict, actual: dict, what: str) -> None:
    for reg, want in expect.items():
        got = actual[reg]
        if isinstance(want, dict):
            assert got & want["mask"] == want["value"] & M64, f"{what} {reg}={got:#x}"
        else:
            assert got == want & M64, f"{what} {reg}={got:#x}, expected {want & M64:#x}"


def assert_reached_end(exit_) -> None:
    assert isinstance(exit_, FaultExit) and exit_.insn == f"brk #{END_MARK:#x}", exit_


def after_call(vcpu) -> dict:
    """x0..x5 as the guest saw them right after the call (copied to x19..x24)."""
    regs = vcpu.get_regs()
    assert regs["x25"] == 1, "guest did not resume after the call"
    return {f"x{i}": regs[f"x{19 + i}"] for i in range(6)}


@pytest.mark.parametrize("vec", load_vectors())
def test_vector(vec: dict) -> None:
    assert set(vec) <= KNOWN_KEYS, f"unknown keys {set(vec) - KNOWN_KEYS}"
    vm = Vm(vec.get("profile", "rfc-2021"), host=HostCpu(**vec.get("host", {})), timeout=20)
    for cap in vec.get("caps", []):
        vm.enable_cap(Cap[cap])
    for spec in vec.get("filter", []):
        vm.set_smccc_filter(*parse_filter_spec(spec))
    vm.load_asm(guest_source(vec))
    vcpu = vm.create_vcpu(0, psci_0_2=vec.get("psci_0_2", True))
    for i in range(1, vec.get("vcpus", 1)):
        vm.create_vcpu(i, power_off=True)
    if "psci_version" in vec and vec.get("psci_0_2", True):
        vcpu.set_one_reg(KVM_REG_ARM_PSCI_VERSION, vec["psci_version"])
    for name, value in vec.get("set_regs", {}).items():
        vcpu.set_one_reg(parse_reg_name(name), value)
    if "pvtime_ipa" in vec:
        vcpu.pvtime_ipa = vec["pvtime_ipa"]
    vcpu.pc = LOAD_ADDR

    exit_ = vcpu.run()

    event = vm.hypercalls[0]
    expected_esr = ESR_BASE[vec["conduit"]] | vec["imm"]
    assert (event.esr, event.imm, event.conduit) == (expected_esr, vec["imm"], vec["conduit"])
    assert vcpu.esr == vm.hypercalls[-1].esr  # kvm_vcpu_get_esr() of the latest trap

    want_exit = vec.get("expect_exit")
    if want_exit and want_exit["reason"] == "hypercall":
        assert isinstance(exit_, HypercallExit), exit_
        assert exit_.nr == want_exit["nr"]
        assert list(exit_.args) == [a & M64 for a in want_exit["args"]]
        assert exit_.flags == want_exit["flags"]
        assert exit_.vcpu == 0
        assert vcpu.pc == LOAD_ADDR + 4 * 6 + 4, "PC must be past the trapping instruction"
        answer = vec.get("answer", DEFAULT_ANSWER)
        vcpu.complete_hypercall(*answer)
        assert_reached_end(vcpu.run())
        check_regs({f"x{i}": v for i, v in enumerate(answer)}, after_call(vcpu), "after VMM answer")
    elif want_exit:
        assert isinstance(exit_, SystemEventExit), exit_
        assert (int(exit_.type), exit_.ndata, list(exit_.data)) == (
            want_exit["type"],
            want_exit["ndata"],
            want_exit["data"],
        )
        check_regs(vec.get("expect", {}), vcpu.get_regs(), "preloaded")
    elif "expect_stop" in vec:
        assert isinstance(exit_, StopExit) and exit_.reason.value == vec["expect_stop"], exit_
    else:
        assert_reached_end(exit_)
        check_regs(vec["expect"], after_call(vcpu), "after call")
    assert len(vm.hypercalls) == 1

    for vcpu_id, state in vec.get("expect_power", {}).items():
        assert vm.vcpus[vcpu_id].mp_state == MpState[state]
    for vcpu_id, regs in vec.get("expect_vcpu_regs", {}).items():
        check_regs(regs, vm.vcpus[vcpu_id].get_regs(), f"vCPU {vcpu_id}")


def test_enough_vectors() -> None:
    vectors = load_vectors()
    assert len(vectors) >= 40
    for name in ALL:  # every profile has vectors of its own
        assert sum(v.values[0]["profile"] == name for v in vectors) >= 60, name
