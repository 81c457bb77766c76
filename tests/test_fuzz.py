"""emu fuzz: the oracle is precise, a bounded campaign passes on every profile, a planted
model bug is found, shrunk, and its reproducer fails under `emu run` until the bug is gone."""

from __future__ import annotations

import pytest

from emu import PROFILES
from emu.abi import smccc
from emu.arm.asm import assemble
from emu.kvm.vm import LOAD_ADDR
from emu.smccc import psci, trng
from emu.tools import cli
from emu.tools.fuzz import (
    Case,
    check_case,
    expect,
    fuzz_chunk,
    plan,
    program_bytes,
    program_lines,
    reproduce_command,
    reproducer,
    run_case,
    violations,
)
from emu.tools.psci_states import run_psci_state_machine
from tests.conftest import run_cli

ZEROS = (0,) * 17


def case(x0: int, *args: int, conduit: str = "hvc", imm: int = 0, caps: tuple[str, ...] = ()) -> Case:
    regs = (x0, *args, *ZEROS)[:18]
    return Case("rfc-2021", conduit, imm, regs, caps)


def test_guest_program_is_what_the_assembler_makes_of_its_text() -> None:
    c = case(0xFFFF_0000_8400_0004, 0x1234_5678_9ABC_DEF0, 7, imm=0x4321)
    text = "\n".join(line for _, line in program_lines(c))
    assert assemble(text, LOAD_ADDR) == program_bytes(c)


def test_oracle_rules_are_exact() -> None:
    version = expect(case(smccc.SMCCC_VERSION, 5, 6, 7, 8))
    assert version.regs[0].values == (smccc.SMCCC_VERSION_1_1,)
    assert [version.regs[i].values for i in (1, 2, 3)] == [(0,), (0,), (0,)]
    assert version.regs[4].values == (8,)  # x4..x17 untouched
    # Upper half of x0 ignored, SMC never dispatched on v5.13, fast path zeroes x1 only.
    assert expect(case(0xDEAD_0000_8000_0000)).regs[0].values == (smccc.SMCCC_VERSION_1_1,)
    smc = expect(case(psci.PSCI_VERSION, 9, conduit="smc"))
    assert smc.regs[0].values == (smccc.MASK64,) and smc.regs[1].values == (9,)
    fast = expect(case(smccc.SMCCC_ARCH_WORKAROUND_1, 3, 4))
    assert fast.regs[1].values == (0,) and fast.regs[2].values == (4,)
    # PSCI: CPU_ON of an off vCPU succeeds, of vCPU 0 is ALREADY_ON; SYSTEM_OFF is an event.
    assert expect(case(psci.CPU_ON64, 1)).regs[0].values == (0,)
    assert expect(case(psci.CPU_ON64, 0)).regs[0].values == (smccc.u64(-4),)
    assert expect(case(psci.SYSTEM_OFF)).stop == "system_event SHUTDOWN"
    # TRNG: N bits only; beyond 3 * width INVALID_PARAMETER.
    rnd = expect(case(smccc.TRNG_RND64, 70))
    assert [rnd.regs[i].describe() for i in (1, 2, 3)] == ["< 2**0", "< 2**6", "< 2**64"]
    assert expect(case(smccc.TRNG_RND32, 97)).regs[0].values == (smccc.u64(trng.TRNG_INVALID_PARAMETER),)
    # Forwarded under HVC_TO_USER: the RFC's exit, the default VMM's x0 = -1, the rest untouched.
    fwd = expect(case(0xC600_0040, 41, caps=("ARM_HVC_TO_USER",), imm=0x1234))
    assert fwd.exits == (("hypercall", 0, 0x1234, (0xC600_0040, 41, 0, 0, 0, 0), 0),)


def test_a_wrong_answer_is_a_violation() -> None:
    c = case(smccc.SMCCC_VERSION, 1, 2, 3, 4)
    good = run_case(c)
    assert good.stop == "returned" and violations(c, good) == []
    bad = good.__class__(good.stop, (good.regs[0], 1, *good.regs[2:]), good.exits, good.calls)
    assert [v.reg for v in violations(c, bad)] == [1]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_bounded_fuzz_session_passes(profile: str) -> None:
    results = [fuzz_chunk(chunk) for chunk in plan(profile, 60, seed=0)]
    failures = [(r.failure.describe(), r.violations) for r in results if r.failure is not None]
    assert failures == []
    assert sum(r.examples for r in results) == 60


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_a_case_on_the_restored_vm_does_what_it_does_on_a_new_one(profile: str) -> None:
    """Each case runs on the VM the previous cases ran on, restored: nothing may carry over."""
    from hypothesis import HealthCheck, given, settings

    from emu.tools.strategies import smccc_calls

    seen = []

    @settings(max_examples=40, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(smccc_calls(profile))
    def prop(case: Case) -> None:
        restored = run_case(case)
        assert restored == run_case(case, restore=False), case.describe()
        seen.append(restored.regs[:1])

    prop()
    assert len(set(seen)) > 1  # the cases did not all answer alike


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_psci_state_machine_holds(profile: str) -> None:
    assert run_psci_state_machine(profile, examples=15, seed=0) is None


def test_planted_bug_is_found_shrunk_and_reproduced(monkeypatch, tmp_path, capsys) -> None:
    real = psci.Psci._affinity_info

    def wrong(self, call):  # says ON for a vCPU that is off
        result = real(self, call)
        return psci.AffinityState.ON if result == psci.AffinityState.OFF else result

    monkeypatch.setattr(psci.Psci, "_affinity_info", wrong)
    found = None
    for chunk in plan("rfc-2021", 300, seed=1):
        found = fuzz_chunk(chunk).failure
        if found is not None:
            break
    assert found is not None, "the planted bug was not found"
    # Shrunk: the call, its target and nothing else.
    assert found.fid in (psci.AFFINITY_INFO, psci.AFFINITY_INFO64)
    assert found.conduit == "hvc" and found.imm == 0
    assert found.regs[2:] == (0,) * 16 and found.regs[0] >> 32 == 0
    path = tmp_path / "min.S"
    path.write_text(reproducer(found, check_case(found)))
    command = reproduce_command(found, str(path))[2:]
    assert cli.main(["run", *command]) == 3
    assert "fuzz: FAIL" in capsys.readouterr().out
    monkeypatch.undo()
    assert cli.main(["run", *command]) == 0
    assert "fuzz: PASS" in capsys.readouterr().out


def test_cli_reports_a_failure_with_status_9_and_a_reproducer(monkeypatch, tmp_path, capsys) -> None:
    handlers = PROFILES["rfc-2021"].handlers
    monkeypatch.setitem(handlers, smccc.TRNG_VERSION, lambda call: call.answer(0x20000))  # "TRNG 2.0"
    status = cli.main(["fuzz", "--examples", "100", "--seed", "2", "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == cli.EXIT_FUZZ_FAILURE, out
    assert "TRNG_VERSION()" in out and "expected = 0x10000" in out
    written = list(tmp_path.glob("fuzz-rfc-2021-seed2.S"))
    assert written and f"reproducer: {written[0]}" in out
    assert cli.main(["run", str(written[0]), "--cpus", "4", "--mem", "16M"]) == 3
    monkeypatch.undo()
    assert cli.main(["run", str(written[0]), "--cpus", "4", "--mem", "16M"]) == 0


def test_cli_fuzz_passes_and_jobs_do_not_change_the_output() -> None:
    one = run_cli("fuzz", "--examples", "40", "--seed", "4", timeout=120)
    two = run_cli("fuzz", "--examples", "40", "--seed", "4", "--jobs", "2", timeout=120)
    assert one.status == 0, one.stderr
    assert one.stdout == two.stdout
    assert one.stdout.startswith("rfc-2021: 40 examples, no invariant broken (seed 4)\n")
    assert "fuzzing rfc-2021 [" in one.stderr


def test_cli_fuzz_without_hypothesis_is_one_error_line(tmp_path) -> None:
    (tmp_path / "hypothesis").mkdir()
    (tmp_path / "hypothesis" / "__init__.py").write_text(
        "raise ImportError('no hypothesis', name='hypothesis')\n"
    )
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "emu", "fuzz", "--examples", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("emu: error: emu fuzz needs hypothesis") and proc.stderr.count("\n") == 1


def test_a_call_that_wrongly_does_not_return_is_reproduced(monkeypatch, tmp_path, capsys) -> None:
    handlers = PROFILES["rfc-2021"].handlers
    monkeypatch.setitem(handlers, smccc.SMCCC_VERSION, lambda call: call.vcpu.power_off())
    c = case(smccc.SMCCC_VERSION)
    found = check_case(c)
    assert found and found[0].rule.startswith("stop: expected returned, got idle")
    path = tmp_path / "stuck.S"
    path.write_text(reproducer(c, found))
    command = reproduce_command(c, str(path))[2:]
    assert cli.main(["run", *command]) == 6  # idle: vCPU 0 powered off by SMCCC_VERSION
    assert "fuzz: PASS" not in capsys.readouterr().out
    monkeypatch.undo()
    assert cli.main(["run", *command]) == 0
    assert "fuzz: PASS" in capsys.readouterr().out


def test_an_answer_that_changes_between_runs_is_not_deterministic(monkeypatch) -> None:
    answers = iter(range(1, 100))
    handlers = PROFILES["rfc-2021"].handlers
    # Legal PTP halves each time, but not the same ones for the same inputs.
    monkeypatch.setitem(handlers, smccc.VENDOR_HYP_KVM_PTP, lambda call: call.answer(0, next(answers), 0, 0))
    found = check_case(case(smccc.VENDOR_HYP_KVM_PTP, 0))
    assert [v.rule.split(":")[0] for v in found] == ["not deterministic"]


GATED = sorted(name for name, p in PROFILES.items() if getattr(p, "bitmap_gate", False))


@pytest.mark.skipif(not GATED, reason="no profile with the firmware bitmap gate")
def test_a_model_that_ignores_the_bitmap_gate_is_caught(monkeypatch, tmp_path, capsys) -> None:
    from emu import kvm_model

    monkeypatch.setattr(kvm_model.KvmModel, "allowed", lambda self, fid: True)
    found = None
    for chunk in plan(GATED[0], 200, seed=0):
        found = fuzz_chunk(chunk).failure
        if found is not None:
            break
    assert found is not None and found.fw_regs, "a cleared bitmap bit was never tried"
    path = tmp_path / "gate.S"
    path.write_text(reproducer(found, check_case(found)))
    command = reproduce_command(found, str(path))[2:]
    assert "--set-reg" in command
    assert cli.main(["run", *command]) == 3
    monkeypatch.undo()
    assert cli.main(["run", *command]) == 0
    assert "fuzz: PASS" in capsys.readouterr().out


@pytest.mark.parametrize(
    "output, why", [("/etc/passwd/x", "is not a directory"), ("/proc/1/x", "is not writable")]
)
def test_an_unusable_output_dir_is_refused_before_the_campaign(output: str, why: str) -> None:
    result = run_cli("fuzz", "--examples", "5", "--output", output)
    assert result.status == 1 and result.stderr.strip().startswith(f"emu: error: --output {output}")
    assert why in result.stderr and "fuzzing" not in result.stderr
