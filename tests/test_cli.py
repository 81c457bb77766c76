"""``emu run`` as a user sees it: output, JSON, --vmm, exit statuses and every error path."""

from __future__ import annotations

import time

import pytest

from tests.conftest import FIRMWARE, run_cli

FORWARD_SNIPPET = """
    ldr x0, =0xc6000040
    mov x1, #1
    mov x2, #2
    mov x3, #3
    mov x4, #4
    mov x5, #5
    hvc #0x1234
    mov x19, x0
    mov x20, x1
    ldr x0, =0x84000008
    hvc #0
"""

ANSWERING_VMM = """
def handle_hypercall(vcpu, exit):
    vcpu.set_regs(x1=0x77)
    return 0x55
"""


def one_line_error(result, status: int = 1) -> str:
    assert result.status == status, (result.status, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("emu: error: ")
    return lines[0]


# -- the acceptance check -------------------------------------------------------------


def test_forwarded_call_reaches_the_vmm_and_the_guest_sees_its_answer(tmp_program, tmp_path) -> None:
    vmm = tmp_path / "vmm.py"
    vmm.write_text(ANSWERING_VMM)
    result = run_cli("run", tmp_program(FORWARD_SNIPPET), "--cap", "hvc-to-user", "--vmm", vmm, "--json")
    doc = result.json()
    assert result.status == 0
    assert doc["exits"][0]["nr"] == 0x1234
    assert doc["exits"][0]["args"] == [0xC6000040, 1, 2, 3, 4, 5]
    assert doc["exits"][0]["answer"] == [0x55]
    regs = doc["vcpus"][0]["regs"]
    assert (regs["x19"], regs["x20"]) == (0x55, 0x77)


def test_kvm_cap_name_is_accepted(tmp_program) -> None:
    result = run_cli("run", tmp_program(FORWARD_SNIPPET), "--cap", "KVM_CAP_ARM_HVC_TO_USER", "--json")
    doc = result.json()
    assert doc["caps"] == ["KVM_CAP_ARM_HVC_TO_USER"]
    assert doc["exits"][0]["reason"] == "hypercall"
    # The default VMM answers NOT_SUPPORTED in x0 only.
    assert doc["exits"][0]["answer"] == [2**64 - 1]
    assert doc["vcpus"][0]["regs"]["x19"] == 2**64 - 1


def test_human_output_lists_each_call_and_the_stop() -> None:
    result = run_cli("run", FIRMWARE / "smc_conduit.S")
    assert result.status == 0
    lines = result.stdout.splitlines()
    assert lines[1:4] == [
        "smc #0x0  PSCI_VERSION() -> NOT_SUPPORTED (-1)",
        "hvc #0x0  PSCI_VERSION() -> 0x10000",
        "hvc #0x0  PSCI_SYSTEM_OFF() -> exit SYSTEM_EVENT SHUTDOWN",
    ]
    assert lines[4] == "stop: system event SHUTDOWN (1) from vCPU 0, ndata=0, data=[0x0]"
    assert any("pc 0x" in line and "pstate" in line for line in lines)


def test_json_document_shape(tmp_program) -> None:
    doc = run_cli("run", FIRMWARE / "psci_boot_check.S", "--json").json()
    assert set(doc) >= {"profile", "stop", "exits", "hypercalls", "vcpus"}
    assert doc["profile"] == "rfc-2021"
    call = doc["hypercalls"][0]
    assert set(call) >= {"vcpu", "pc", "conduit", "imm", "esr", "fid", "name", "args", "result"}
    assert call["esr"] == 0x5A000000 and call["pc"] == 0x40080004
    regs = doc["vcpus"][0]["regs"]
    assert set(regs) == {f"x{i}" for i in range(31)} | {"sp", "pc", "pstate"}
    assert all(isinstance(v, int) and v >= 0 for v in regs.values())


def test_same_program_same_flags_same_json() -> None:
    args = ("run", FIRMWARE / "trng.S", "--json", "--seed", "7")
    assert run_cli(*args).stdout == run_cli(*args).stdout


def test_profiles_command() -> None:
    result = run_cli("profiles")
    assert result.status == 0 and result.stdout.startswith("rfc-2021 (default)")


# -- how runs stop --------------------------------------------------------------------------------


def test_runaway_loop_stops_at_the_instruction_budget(tmp_program) -> None:
    result = run_cli("run", tmp_program("spin: b spin\n"), "--max-insns", "100000", "--json")
    assert result.status == 4
    stop = result.json()["stop"]
    assert stop["reason"] == "budget" and "100000" in stop["detail"]


def test_runaway_loop_stops_at_the_timeout(tmp_program) -> None:
    start = time.monotonic()
    result = run_cli("run", tmp_program("spin: b spin\n"), "--timeout", "0.5", "--json")
    assert result.status == 5
    assert result.json()["stop"]["reason"] == "timeout"
    assert time.monotonic() - start < 15


# Guests that sit in different hooks when Ctrl-C arrives: none, an MMIO read of the PL011,
# a trapped counter read (MRS hook), a hypercall the kernel answers (interrupt hook).
INTERRUPTIBLE = {
    "trap-free loop": "spin: b spin\n",
    "PL011 poll": "ldr x1, =0x09000000\npoll: ldr w2, [x1, #0x18]\nb poll\n",
    "counter reads": "read: mrs x0, cntvct_el0\nb read\n",
    "hypercalls": "call: mov x0, #0x80000000\nhvc #0\nb call\n",
}


def _interrupt(args: list, after: float = 0.3) -> tuple[int, str, float]:
    """Start ``emu run ARGS``, send SIGINT once the guest runs; status, stderr, seconds taken."""
    import select
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.Popen(
        [sys.executable, "-m", "emu", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The banner line is printed just before the guest starts.
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready and proc.stdout.readline().startswith("emu: ")
        time.sleep(after)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, stderr = proc.communicate(timeout=10)
        return proc.returncode, stderr, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("counted", [False, True], ids=["free", "counted"])
@pytest.mark.parametrize("guest", list(INTERRUPTIBLE))
def test_ctrl_c_stops_the_guest_whatever_hook_it_is_in(tmp_program, guest, counted) -> None:
    args = ["run", tmp_program(INTERRUPTIBLE[guest]), "--timeout", "60"]
    if counted:
        args += ["--max-insns", str(10**12)]
    status, stderr, took = _interrupt(args)
    assert (status, stderr.strip()) == (130, "emu: interrupted")
    assert took < 1.0


@pytest.mark.parametrize("guest", list(INTERRUPTIBLE))
def test_the_timeout_stops_the_guest_whatever_hook_it_is_in(tmp_program, guest) -> None:
    start = time.monotonic()
    result = run_cli("run", tmp_program(INTERRUPTIBLE[guest]), "--timeout", "0.5", "--json")
    assert result.status == 5 and result.json()["stop"]["reason"] == "timeout"
    assert time.monotonic() - start < 8  # interpreter start-up and assembly included


def test_ctrl_c_stops_a_vmm_handler(tmp_program, tmp_path) -> None:
    vmm = tmp_path / "vmm.py"
    vmm.write_text("import time\ndef handle_hypercall(vcpu, exit):\n    time.sleep(100)\n")
    args = ["run", tmp_program(FORWARD_SNIPPET), "--cap", "hvc-to-user", "--vmm", vmm, "--timeout", "60"]
    status, stderr, took = _interrupt(args)
    assert (status, stderr.strip()) == (130, "emu: interrupted")
    assert took < 1.0


def test_cpu_off_leaves_nothing_to_run(tmp_program) -> None:
    result = run_cli("run", tmp_program("ldr x0, =0x84000002\nhvc #0\n"), "--json")
    assert result.status == 6
    doc = result.json()
    assert doc["stop"]["reason"] == "idle" and doc["vcpus"][0]["mp_state"] == "STOPPED"


@pytest.mark.parametrize(
    "source, cause, insn, address",
    [
        ("nop\n.word 0x42\n", "undefined instruction", "udf #0x42", None),
        ("mov x1, #0x1000\nldr x0, [x1]\n", "read of unmapped memory (8 bytes)", "ldr x0, [x1]", 0x1000),
        ("mov x1, #0x2000\nstr w0, [x1]\n", "write of unmapped memory (4 bytes)", "str w0, [x1]", 0x2000),
        ("mov x1, #0x3000\nbr x1\n", "instruction fetch of unmapped memory (4 bytes)", "<unmapped>", 0x3000),
        (
            "ldr x1, =0x09000000\nbr x1\n",
            "instruction fetch from device memory (4 bytes)",
            "<unmapped>",
            0x0900_0000,
        ),
        ("brk #0x99\n", "BRK (software breakpoint)", "brk #0x99", None),
        ("svc #0x1\n", "SVC (supervisor call)", "svc #1", None),
    ],
)
def test_guest_faults_are_reported(tmp_program, source, cause, insn, address) -> None:
    # Without exception vectors (VBAR_EL1 unset) emu stops instead of jumping to 0.
    cause += ", and the guest has no usable exception vectors (VBAR_EL1 = 0x0 is 0)"
    result = run_cli("run", tmp_program(source), "--json")
    assert result.status == 3
    stop = result.json()["stop"]
    assert (stop["reason"], stop["cause"], stop["insn"], stop["address"]) == ("fault", cause, insn, address)
    human = run_cli("run", tmp_program(source))
    assert f"stop: guest fault on vCPU 0: {cause}" in human.stdout


def test_fault_pc_is_the_faulting_instruction(tmp_program) -> None:
    stop = run_cli("run", tmp_program("nop\nnop\n.word 0x1\n"), "--json").json()["stop"]
    assert stop["pc"] == 0x40080008


# -- bad input: one line, non-zero status -------------------------------------------------------


def test_malformed_assembly_names_the_line(tmp_program) -> None:
    line = one_line_error(run_cli("run", tmp_program("nop\nnop\nmovv x0, #1\nnop\n")))
    assert "line 3" in line and "movv x0, #1" in line and "prog.S" in line


@pytest.mark.parametrize(
    "source, fragment",
    [
        ("", "prog.S: the source contains no instructions or data"),
        ("nop\n\0nop\nnop\n", "prog.S: line 2: NUL byte"),
        ('nop\n.incbin "/nonexistent"\n', "prog.S: line 2:"),
        ("ldr x0, =0x123456789abcdef0\n.space 2000000\nnop\n", "prog.S: line 1:"),
        ('nop\n.ascii "abc\nnop\n', "prog.S: line 2: unterminated string"),
    ],
)
def test_broken_assembly_is_an_error_not_a_guest(tmp_program, source, fragment) -> None:
    assert fragment in one_line_error(run_cli("run", tmp_program(source)))


def test_undefined_label_names_the_line(tmp_program) -> None:
    line = one_line_error(run_cli("run", tmp_program("nop\nb nowhere\nnop\n")))
    assert "line 2" in line and "undefined symbol" in line


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "missing.S"], "no such file"),
        (["run", "firmware"], "is a directory"),
        # A device that never ends is read up to a bound, not until the host runs out of memory.
        (["run", "/dev/zero"], "/dev/zero: not a regular file, and longer than 1024 MiB"),
        (["run", "firmware/trng.S", "--initrd", "/dev/zero"], "--initrd /dev/zero: not a regular file"),
        (["run", "firmware/trng.S", "--dtb", "/dev/zero"], "--dtb /dev/zero: not a regular file"),
    ],
)
def test_bad_files(args, fragment) -> None:
    assert fragment in one_line_error(run_cli(*args))


def test_empty_and_binary_files(tmp_path) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert "empty image" in one_line_error(run_cli("run", empty))
    garbage = tmp_path / "garbage.S"
    garbage.write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8" in one_line_error(run_cli("run", garbage))


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--cap", "no-such-cap"], "unknown capability"),
        (["--profile", "linux-9.9"], "invalid choice"),
        (["--max-insns", "0"], "must be at least 1"),
        (["--max-insns", "lots"], "not an integer"),
        (["--timeout", "-1"], "must be positive"),
        (["--timeout", "nan"], "must be a finite number"),
        (["--timeout", "inf"], "must be a finite number"),
        (["--cpus", "10000"], "must be at most 512"),
        (["--mem", "12Q"], "not a memory size"),
        (["--reboots", "-1"], "must be at least 0"),
    ],
)
def test_bad_flags(flags, fragment) -> None:
    line = one_line_error(run_cli("run", FIRMWARE / "trng.S", *flags), status=2)
    assert fragment in line


def test_memory_too_small_for_the_program() -> None:
    assert "do not fit in guest RAM" in one_line_error(run_cli("run", FIRMWARE / "trng.S", "--mem", "64K"))


def test_memory_too_small_for_the_boot_layout() -> None:
    line = one_line_error(run_cli("run", FIRMWARE / "trng.S", "--mem", "1M"))
    assert "too small for the boot layout" in line and "--mem 3M" in line and "0x0 bytes" not in line
    assert run_cli("run", FIRMWARE / "trng.S", "--mem", "3M").status == 0


def test_memory_the_host_cannot_hold() -> None:
    line = one_line_error(run_cli("run", FIRMWARE / "trng.S", "--mem", "16384G"))
    assert "of guest RAM" in line and "host memory" in line


def test_memory_size_must_be_whole_pages() -> None:
    assert "multiple of 4 KiB" in one_line_error(run_cli("run", FIRMWARE / "trng.S", "--mem", "1000"))


def test_psci_to_user_needs_hvc_to_user_first() -> None:
    line = one_line_error(run_cli("run", FIRMWARE / "trng.S", "--cap", "psci-to-user"))
    assert "KVM_CAP_ARM_HVC_TO_USER" in line and "EINVAL" in line


@pytest.mark.parametrize(
    "vmm_source, fragment",
    [
        (None, "no such file"),
        ("def handle_hypercall(vcpu, exit:\n", "SyntaxError"),
        ("x = 1\n", "defines neither handle_hypercall"),
        (
            "def handle_hypercall(vcpu, exit):\n    return 1 // 0\n",
            "vmm.py:2: handle_hypercall raised ZeroDivisionError",
        ),
        (
            "def handle_hypercall(vcpu, exit):\n    return 'yes'\n",
            "must return None, an int or up to four ints",
        ),
        (
            "def handle_hypercall(vcpu, exit):\n    return (1, 2, 3, 4, 5)\n",
            "must return None, an int or up to four ints",
        ),
        ("def handle_hypercall(vcpu, exit):\n    return 1.5\n", "up to four ints for x0..x3, not 1.5"),
        (
            "import itertools\ndef handle_hypercall(vcpu, exit):\n    return itertools.count()\n",
            "must return None, an int or up to four ints",
        ),
        ("import sys\nsys.exit(3)\n", "vmm.py:2: called sys.exit(3) while loading"),
        (
            "import sys\ndef handle_hypercall(vcpu, exit):\n    sys.exit(0)\n",
            "handle_hypercall called sys.exit(0)",
        ),
    ],
)
def test_vmm_errors(tmp_program, tmp_path, vmm_source, fragment) -> None:
    vmm = tmp_path / "vmm.py"
    if vmm_source is not None:
        vmm.write_text(vmm_source)
    line = one_line_error(run_cli("run", tmp_program(FORWARD_SNIPPET), "--cap", "hvc-to-user", "--vmm", vmm))
    assert fragment in line


def test_vmm_syntax_error_names_the_file_and_line(tmp_program, tmp_path) -> None:
    vmm = tmp_path / "vmm.py"
    vmm.write_text("x = 1\ndef handle_hypercall(vcpu, exit:\n")
    line = one_line_error(run_cli("run", tmp_program(FORWARD_SNIPPET), "--vmm", vmm))
    assert "vmm.py:2: SyntaxError" in line and "frozen" not in line


def test_debug_shows_the_vmm_traceback(tmp_program, tmp_path) -> None:
    vmm = tmp_path / "vmm.py"
    vmm.write_text("def handle_hypercall(vcpu, exit):\n    return 1 // 0\n")
    args = ["run", tmp_program(FORWARD_SNIPPET), "--cap", "hvc-to-user", "--vmm", vmm]
    result = run_cli(*args, "--debug")
    assert result.status == 1
    assert result.stderr.startswith("emu: error: vmm.py:2: handle_hypercall raised ZeroDivisionError")
    assert "Traceback" in result.stderr and "return 1 // 0" in result.stderr


def test_vmm_directory(tmp_program, tmp_path) -> None:
    line = one_line_error(run_cli("run", tmp_program(FORWARD_SNIPPET), "--vmm", tmp_path))
    assert "is a directory" in line


def test_cpu_on_policy_that_raises(tmp_program, tmp_path) -> None:
    vmm = tmp_path / "vmm.py"
    vmm.write_text("def cpu_on_policy(caller, target):\n    raise RuntimeError('no hot-add today')\n")
    program = tmp_program("ldr x0, =0xc4000003\nmov x1, #1\nadr x2, .\nmov x3, #0\nhvc #0\n")
    result = run_cli(
        "run", program, "--cpus", "2", "--cap", "hvc-to-user", "--cap", "psci-to-user", "--vmm", vmm
    )
    line = one_line_error(result)
    assert "vmm.py:2: cpu_on_policy raised RuntimeError: no hot-add today" in line


def test_the_timeout_bounds_a_vmm_handler(tmp_program, tmp_path) -> None:
    vmm = tmp_path / "vmm.py"
    vmm.write_text("import time\ndef handle_hypercall(vcpu, exit):\n    time.sleep(60)\n")
    start = time.monotonic()
    result = run_cli(
        "run", tmp_program(FORWARD_SNIPPET), "--cap", "hvc-to-user", "--vmm", vmm, "--timeout", "1", "--json"
    )
    assert result.status == 5, result.stderr
    assert "in the VMM's handler" in result.json()["stop"]["detail"]
    assert time.monotonic() - start < 10


# -- several vCPUs and exploration ---------------------------------------------------------------

RACY = """
    ldr x20, =0x40100000
    ldr x0, =0xc4000003
    mov x1, #1
    adr x2, second
    mov x3, #0
    hvc #0
    mov x9, #1
    str x9, [x20]               // last writer wins: 1 (boot CPU) or 2 (vCPU 1)
wait:
    ldr x0, =0x84000004         // AFFINITY_INFO(vCPU 1) until OFF
    mov x1, #1
    mov x2, #0
    hvc #0
    cmp x0, #1
    b.ne wait
    ldr x9, [x20]
    cmp x9, #1
    b.eq off
    ldr x0, =0x84000009         // vCPU 1 wrote last: reset
    hvc #0
off:
    ldr x0, =0x84000008
    hvc #0
second:
    ldr x20, =0x40100000
    mov x9, #2
    str x9, [x20]
    ldr x0, =0x84000002
    hvc #0
"""


def test_json_reports_power_and_psci_events() -> None:
    doc = run_cli("run", FIRMWARE / "smp_boot.S", "--cpus", "3", "--json").json()
    assert [v["power"] for v in doc["vcpus"]] == ["off", "off", "off"]
    assert [v["mpidr"] for v in doc["vcpus"]] == [0x80000000, 0x80000001, 0x80000002]
    first = doc["psci"][0]
    assert first["function"] == "PSCI_CPU_ON64" and first["caller"] == 0 and first["result"] == 0
    assert [(c["vcpu"], c["power"], c["by"]) for c in first["changes"]] == [(1, "on", 0)]
    assert doc["schedule"] == "rr"


def test_human_output_names_the_vcpu_when_there_are_several() -> None:
    out = run_cli("run", FIRMWARE / "smp_boot.S", "--cpus", "2").stdout
    assert "[0] hvc #0x0  PSCI_CPU_ON64(target=0x1" in out and "[1] hvc #0x0  PSCI_CPU_OFF()" in out


def test_explore_finds_every_outcome_of_a_race(tmp_program) -> None:
    result = run_cli("explore", tmp_program(RACY), "--cpus", "2", "--seeds", "40", "--quantum", "3", "--json")
    assert result.status == 0
    doc = result.json()
    stops = sorted(o["stop"] for o in doc["outcomes"])
    assert stops == ["system_event RESET", "system_event SHUTDOWN"]
    assert sum(o["count"] for o in doc["outcomes"]) == 40
    assert "exploring [" in result.stderr and "40/40" in result.stderr
    # The reported seed reproduces its outcome.
    for outcome in doc["outcomes"]:
        rerun = run_cli(
            "run",
            tmp_program(RACY),
            "--cpus",
            "2",
            "--quantum",
            "3",
            "--schedule",
            "random",
            "--seed",
            outcome["seeds"][0],
            "--json",
        ).json()
        assert f"system_event {rerun['stop']['type_name']}" == outcome["stop"]


def test_explore_expect_unique(tmp_program) -> None:
    racy = run_cli(
        "explore", tmp_program(RACY), "--cpus", "2", "--seeds", "40", "--quantum", "3", "--expect-unique"
    )
    assert racy.status == 7 and "2 distinct outcomes" in racy.stdout
    safe = run_cli("explore", FIRMWARE / "cpu_on_race.S", "--cpus", "4", "--seeds", "20", "--expect-unique")
    assert safe.status == 0 and "1 distinct outcome:" in safe.stdout
    assert "CPU_ON ALREADY_ON (-4) x2, SUCCESS x3" in safe.stdout


def test_reboots_flag() -> None:
    doc = run_cli("run", FIRMWARE / "system_reset.S", "--reboots", "2", "--json").json()
    assert doc["reboots"] == 2 and doc["stop"]["type_name"] == "SHUTDOWN"
    assert [e["type_name"] for e in doc["exits"]] == ["RESET", "RESET", "SHUTDOWN"]


def test_a_plot_file_of_no_image_format_is_one_error_line(tmp_path) -> None:
    result = run_cli("run", FIRMWARE / "trng.S", "--plot", tmp_path / "timeline.xyz")
    assert "--plot" in one_line_error(result) and "'xyz' is not supported" in result.stderr
