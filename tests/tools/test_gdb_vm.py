"""Debian's gdb-multiarch against ``emu run --gdb``: real guests, every vCPU a thread.

Every process and socket is bounded by TIMEOUT; a stuck run is killed, never waited on.
"""

from __future__ import annotations

import json
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from emu.kvm.debug import DebugStop, GuestDebug
from emu.kvm.vm import Vm
from emu.vmm.loader import load_program
from emu.vmm.machine import BootOptions, Machine
from tests.conftest import FIRMWARE, ROOT

GDB = shutil.which("gdb-multiarch")
CROSS_GCC = shutil.which("aarch64-linux-gnu-gcc")
OBJDUMP = shutil.which("aarch64-linux-gnu-objdump")
TIMEOUT = 60.0
SMP_BOOT = FIRMWARE / "smp_boot.S"
SECONDARY = 0x400800A0  # smp_boot.S: the secondary entry point
CHECKIN = 0x4010_0000  # smp_boot.S: the check-in counter

needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb-multiarch not installed")


class EmuUnderGdb:
    """``emu run PROGRAM --gdb 127.0.0.1:0 --gdb-wait ...`` with gdb-multiarch driving it."""

    def __init__(self, *emu_args: str) -> None:
        # A file, not a pipe: a large --json result must not block emu while gdb waits on it.
        self.stdout = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by finish)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emu", "run", *emu_args, "--gdb", "127.0.0.1:0", "--gdb-wait"],
            cwd=ROOT,
            stdout=self.stdout,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.port = self._port()

    def _port(self) -> int:
        deadline = time.monotonic() + TIMEOUT
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 1.0)
            if ready:
                line = self.proc.stderr.readline()
                match = re.search(r"gdb stub listening on [\d.]+:(\d+)", line)
                if match:
                    return int(match.group(1))
                if not line:
                    break
        self.proc.kill()
        raise AssertionError("emu never said where the stub listens")

    def gdb(self, *commands: str, program: str | None = None) -> str:
        args = [GDB, "-batch", "-nx"]
        if program is not None:
            args.append(program)
        args += ["-ex", "set architecture aarch64", "-ex", f"target remote 127.0.0.1:{self.port}"]
        for command in commands:
            args += ["-ex", command]
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return proc.stdout + proc.stderr

    def finish(self) -> tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"emu did not end: {err}") from None
        with self.stdout:
            self.stdout.seek(0)
            out = self.stdout.read()
        return self.proc.returncode, out + err


SMP_SESSION = (
    "info threads",
    f"break *{SECONDARY:#x}",
    "continue",
    "p/x $x0",
    "stepi",
    "p/x $pc",
    f"x/1gx {CHECKIN + 8:#x}",
    "delete",
    f"watch *(long *){CHECKIN:#x}",
    "continue",
    "delete",
    "continue",
)


@needs_gdb
def test_smp_boot_under_gdb_breakpoint_thread_step_memory_watch_to_system_off() -> None:
    emu = EmuUnderGdb(str(SMP_BOOT), "--cpus", "4")
    out = emu.gdb(*SMP_SESSION)
    status, emu_out = emu.finish()
    assert status == 0, (out, emu_out)
    assert "Thread 2 (vCPU 1, MPIDR 0x80000001, off (cannot be resumed))" in out, out
    assert f"Thread 2 hit Breakpoint 1, 0x{SECONDARY:016x} in ?? ()" in out, out
    assert "$1 = 0x101" in out  # x0 = CPU_ON's context id for vCPU 1
    assert f"$2 = {SECONDARY + 4:#x}" in out  # stepi: one instruction, thread 2 only
    assert f"{CHECKIN + 8:#x}:\t0x0000000000000003" in out  # the boot CPU counted 3 secondaries
    assert "Hardware watchpoint 2: *(long *)0x40100000" in out
    assert re.search(r"Thread \d hit Hardware watchpoint 2: \*\(long \*\)0x40100000", out), out
    assert "Old value = 0\nNew value = 1" in out
    assert "[Inferior 1 (Remote target) exited normally]" in out
    assert "stop: system event SHUTDOWN" in emu_out


def _run_json(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emu", "run", *args], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT
    )


RR_7 = ["--schedule", "rr", "--quantum", "7"]
RANDOM_3 = ["--schedule", "random", "--seed", "3"]


@needs_gdb
@pytest.mark.parametrize(
    ("schedule", "gic"),
    [(RR_7, []), (RANDOM_3, []), (RANDOM_3, ["--gic", "v2"]), (RR_7, ["--gic", "none"])],
    ids=["rr-v3", "random-v3", "random-v2", "rr-none"],
)
def test_an_inspecting_session_leaves_trace_and_result_byte_identical(tmp_path, schedule, gic) -> None:
    plain_trace, gdb_trace = tmp_path / "plain.jsonl", tmp_path / "gdb.jsonl"
    args = [str(SMP_BOOT), "--cpus", "4", *gic, "--json", *schedule]
    plain = _run_json(*args, "--trace", str(plain_trace))
    assert plain.returncode == 0, plain.stderr
    emu = EmuUnderGdb(*args, "--trace", str(gdb_trace))
    emu.gdb(
        f"break *{SECONDARY + 8:#x}",
        "continue",
        "stepi",
        "stepi",
        "info registers x0",
        "continue",
        "stepi",
        "delete",
        f"watch *(long *){CHECKIN:#x}",
        "continue",
        "thread 1",
        "x/4gx 0x40100000",
        "delete",
        "continue",
    )
    status, out = emu.finish()
    assert status == 0, out
    assert json.loads(out[out.index("{") :]) == json.loads(plain.stdout)
    assert gdb_trace.read_bytes() == plain_trace.read_bytes()


@needs_gdb
def test_kill_ends_the_run_and_detach_lets_it_finish() -> None:
    emu = EmuUnderGdb(str(SMP_BOOT), "--cpus", "2")
    out = emu.gdb(f"break *{SECONDARY:#x}", "continue", "kill")
    status, emu_out = emu.finish()
    assert "[Inferior 1 (Remote target) killed]" in out, out
    assert status == 10 and "killed by the debugger" in emu_out, emu_out

    emu = EmuUnderGdb(str(SMP_BOOT), "--cpus", "2")
    out = emu.gdb(f"break *{SECONDARY:#x}", "continue", "detach")
    status, emu_out = emu.finish()
    assert "detached" in out, out
    assert status == 0 and "stop: system event SHUTDOWN" in emu_out, emu_out


@needs_gdb
def test_monitor_commands_and_an_unmapped_read() -> None:
    emu = EmuUnderGdb(str(SMP_BOOT), "--cpus", "2")
    out = emu.gdb(
        "monitor profile",
        f"break *{SECONDARY:#x}",
        "continue",
        "monitor hypercalls 2",
        "monitor psci",
        "x/1xw 0x1000",
        "monitor nonsense",
        "delete",
        "continue",
    )
    status, _ = emu.finish()
    assert status == 0, out
    assert "profile rfc-2021" in out
    assert "0x40080024 [0] hvc #0x0  PSCI_CPU_ON64(target=0x1, entry=0x400800a0, ctx=0x101) -> SUCCESS" in out
    assert "vCPU 1: MPIDR 0x80000001, on, mp_state RUNNABLE" in out
    assert "Cannot access memory at address 0x1000" in out
    assert "unknown monitor command 'nonsense'" in out


# -- the C firmware, MMU on --------------------------------------------------------------


@pytest.fixture(scope="module")
def c_firmware(tmp_path_factory):
    if CROSS_GCC is None or OBJDUMP is None:
        pytest.skip("gcc-aarch64-linux-gnu not installed")
    out = tmp_path_factory.mktemp("boot_test")
    subprocess.run(["make", "-C", FIRMWARE / "c", f"OUT={out}"], check=True, capture_output=True, timeout=120)
    return out / "boot_test.elf"


def _after_mmu_on(elf) -> int:
    """The first instruction of secondary_main after its ``msr sctlr_el1`` and ``isb``."""
    listing = subprocess.run([OBJDUMP, "-d", elf], capture_output=True, text=True, check=True).stdout
    body = listing.split("<secondary_main>:")[1].split("\n\n")[0].splitlines()
    for i, line in enumerate(body):
        if "msr\tsctlr_el1" in line:
            return int(body[i + 2].split(":")[0], 16)
    raise AssertionError("no msr sctlr_el1 in secondary_main")


@needs_gdb
def test_c_firmware_mmu_on_break_on_psci_cpu_on_then_a_virtual_breakpoint(c_firmware) -> None:
    after_mmu = _after_mmu_on(c_firmware)
    emu = EmuUnderGdb(str(c_firmware), "--cpus", "2")
    out = emu.gdb(
        "monitor break-on psci CPU_ON",
        "continue",
        "x/i $pc",
        "p/x $x0",
        "monitor hypercalls 1",
        "monitor break-on clear",
        f"break *{after_mmu:#x}",
        "continue",
        "p $x0 & 1",
        "x/1xw &page_table",
        "delete",
        "continue",
        program=str(c_firmware),
    )
    status, emu_out = emu.finish()
    assert status == 0, (out, emu_out)
    assert "will stop before the model answers psci CPU_ON" in out
    # The stop is on the calling vCPU (thread 1), on its HVC, before KVM answered it.
    assert "Thread 1 received signal SIGTRAP" in out, out
    assert re.search(r"=> 0x[0-9a-f]+ <boot_main\+\d+>:\thvc\t#0x0", out), out
    assert "$1 = 0xc4000003" in out
    assert "no hypercalls yet" in out  # CPU_ON is its first call, and it is not answered yet
    assert f"Thread 2 hit Breakpoint 1, 0x{after_mmu:016x} in secondary_main ()" in out, out
    assert "$2 = 1" in out  # SCTLR_EL1.M: the breakpoint's address was reached with the MMU on
    assert re.search(r"<page_table>:\t0x00000405", out), out
    assert "cpu_on 0x1: ok" in emu_out and "all cpus done, system off" in emu_out
    assert "[Inferior 1 (Remote target) exited normally]" in out


# -- the KVM-layer mechanism itself ---------------------------------------------------------


def _smp_run(setup=None, gic="v3", program=SMP_BOOT, **vm_args):
    vm = Vm(cpus=4, timeout=30, **vm_args)
    machine = Machine(vm, load_program(str(program)), boot=BootOptions(gic=gic))
    stops: list[DebugStop] = []
    if setup is not None:
        setup(vm, stops)
    result = machine.run()
    return vm, result, stops


def _jsonl(vm, tmp_path, name: str) -> bytes:
    path = tmp_path / name
    vm.trace.write_jsonl(path)
    return path.read_bytes()


@pytest.mark.parametrize("gic", ["v3", "v2", "none"])
@pytest.mark.parametrize("vm_args", [{}, {"schedule": "random", "seed": 5}, {"quantum": 3}])
def test_stops_mid_quantum_resume_the_rest_of_it(tmp_path, vm_args, gic) -> None:
    plain, plain_result, _ = _smp_run(gic=gic, **vm_args)

    def setup(vm, stops):
        steps = iter(range(3))

        def on_stop(stop: DebugStop) -> str:
            stops.append(stop)
            if stop.kind in ("breakpoint", "step") and next(steps, None) is not None:
                debug.step_vcpu = stop.vcpu
                debug.sync()
            return "continue"

        debug = GuestDebug(vm, on_stop, stop_at_start=True)
        debug.add_breakpoint(SECONDARY)
        debug.add_breakpoint(SECONDARY + 8)
        debug.add_watchpoint("write", CHECKIN, 8, vm.vcpus[0])
        debug.break_on_hypercall = lambda vcpu, conduit, fid: fid == 0xC400_0003
        debug.sync()

    debugged, result, stops = _smp_run(setup, gic=gic, **vm_args)
    kinds = [s.kind for s in stops]
    assert kinds[0] == "attach" and kinds.count("hypercall") == 4 and kinds.count("watch") == 3
    assert kinds.count("step") == 3 and kinds.count("breakpoint") >= 3
    assert result.stop == plain_result.stop
    assert _jsonl(debugged, tmp_path, "b") == _jsonl(plain, tmp_path, "a")


def test_a_hypercall_break_stops_on_the_call_before_the_model_answers() -> None:
    seen = []

    def setup(vm, stops):
        def on_stop(stop: DebugStop) -> str:
            vcpu = vm.vcpu(stop.vcpu)
            seen.append((stop.kind, vcpu.pc, vcpu.get_reg("x0"), len(vm.psci_events)))
            return "continue"

        debug = GuestDebug(vm, on_stop)
        debug.break_on_hypercall = lambda vcpu, conduit, fid: fid == 0x8400_0008  # SYSTEM_OFF
        debug.sync()

    vm, result, _ = _smp_run(setup)
    [(kind, pc, x0, answered)] = seen
    assert kind == "hypercall" and x0 == 0x8400_0008
    assert vm.vcpus[0].read_insn(pc) == 0xD400_0002  # on the HVC itself
    assert answered == len(vm.psci_events) - 1  # SYSTEM_OFF was not answered yet
    assert result.stop.type.name == "SHUTDOWN"


def test_kill_from_the_debugger_ends_the_run() -> None:
    def setup(vm, stops):
        GuestDebug(vm, lambda stop: "kill", stop_at_start=True)

    _, result, _ = _smp_run(setup)
    assert result.stop.reason.value == "killed"


LOOP = "loop:\n    add x1, x1, #1\n    b loop\n"


@needs_gdb
@pytest.mark.parametrize("cpus", ["1", "2"])
def test_ctrl_c_interrupts_a_guest_that_never_traps(tmp_path, cpus) -> None:
    source = tmp_path / "loop.S"
    source.write_text(LOOP)
    emu = EmuUnderGdb(str(source), "--cpus", cpus, "--timeout", "50")
    gdb = subprocess.Popen(
        [
            GDB,
            "-batch",
            "-nx",
            "-ex",
            "set architecture aarch64",
            "-ex",
            f"target remote 127.0.0.1:{emu.port}",
            "-ex",
            "continue",
            "-ex",
            "p $x1 > 1000",
            "-ex",
            "kill",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1.0)
        gdb.send_signal(2)
        out, _ = gdb.communicate(timeout=TIMEOUT)
    finally:
        if gdb.poll() is None:
            gdb.kill()
    status, emu_out = emu.finish()
    assert "received signal SIGINT" in out, out
    assert "$1 = 1" in out, out
    assert status == 10, emu_out


@needs_gdb
def test_without_gdb_wait_the_guest_runs_and_gdb_attaches_to_it(tmp_path) -> None:
    source = tmp_path / "loop.S"
    source.write_text(LOOP)
    proc = subprocess.Popen(
        [sys.executable, "-m", "emu", "run", str(source), "--gdb", "127.0.0.1:0", "--timeout", "50"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    emu = EmuUnderGdb.__new__(EmuUnderGdb)
    emu.proc = proc
    emu.port = emu._port()
    time.sleep(0.5)
    out = emu.gdb("p $x1 > 1000", "p/x $pc", "detach")
    assert "$1 = 1" in out and "$2 = 0x4008000" in out, out
    proc.kill()
    proc.communicate(timeout=TIMEOUT)


def test_gdb_that_never_comes_does_not_hold_up_the_run() -> None:
    start = time.monotonic()
    result = _run_json(str(SMP_BOOT), "--cpus", "2", "--gdb", "127.0.0.1:0")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start < 5


@needs_gdb
def test_serve_gdb_from_python_hbreak_rwatch_awatch_and_register_writes() -> None:
    import threading

    vm = Vm(cpus=2, timeout=30)
    machine = Machine(vm, load_program(str(SMP_BOOT)))
    handle = vm.serve_gdb(0)
    outputs: list[str] = []
    commands = [
        f"hbreak *{SECONDARY:#x}",
        "continue",
        "delete",
        f"rwatch *(long *){CHECKIN:#x}",
        "continue",
        "delete",
        f"awatch *(long *){CHECKIN:#x}",
        "continue",
        "delete",
        "thread 1",
        "set var $x25 = 0x1234",
        "p/x $x25",
        "continue",
    ]

    def drive() -> None:
        args = [
            GDB,
            "-batch",
            "-nx",
            "-ex",
            "set architecture aarch64",
            "-ex",
            f"target remote 127.0.0.1:{handle.port}",
        ]
        for command in commands:
            args += ["-ex", command]
        outputs.append(subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT).stdout)

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    result = machine.run()
    handle.finish(0)
    thread.join(TIMEOUT)
    out = outputs[0]
    assert result.stop.type.name == "SHUTDOWN"
    assert "Hardware assisted breakpoint 1 at 0x400800a0" in out
    assert f"Thread 2 hit Breakpoint 1, 0x{SECONDARY:016x}" in out, out  # gdb words hbreak hits so
    assert re.search(r"Thread \d hit Hardware read watchpoint 2: \*\(long \*\)0x40100000", out), out
    assert re.search(
        r"Thread \d hit Hardware access \(read/write\) watchpoint 3: \*\(long \*\)0x40100000", out
    )
    assert "$1 = 0x1234" in out and vm.vcpus[0].get_reg("x25") == 0x1234
    assert "[Inferior 1 (Remote target) exited normally]" in out


def test_the_guests_own_brk_still_reaches_its_vectors_with_breakpoints_set() -> None:
    program = load_program(str(FIRMWARE / "exceptions.S"))
    plain_vm = Vm(timeout=30)
    plain = Machine(plain_vm, program).run()
    vm = Vm(timeout=30)
    machine = Machine(vm, program)
    stops: list[DebugStop] = []
    debug = GuestDebug(vm, lambda stop: stops.append(stop) or "continue")
    debug.add_breakpoint(program.entry + 4)
    result = machine.run()
    assert [s.kind for s in stops] == ["breakpoint"]
    assert result.stop == plain.stop
    assert [e.esr for e in vm.trace.exceptions] == [e.esr for e in plain_vm.trace.exceptions]
    assert any(e.esr >> 26 == 0x3C for e in vm.trace.exceptions)  # EC BRK64, delivered to the guest


@pytest.mark.parametrize("gic", ["v3", "none"])
@pytest.mark.parametrize("quantum", [1, 2, 3])
def test_steps_after_a_stop_at_the_end_of_a_quantum_keep_the_schedule(tmp_path, quantum, gic) -> None:
    """With tiny quanta, watch hits land on a quantum's last instruction; the step gdb then
    makes (as it does after every watchpoint stop) runs as the vCPU's next instruction in
    its next quantum, so the run still matches the one without a debugger."""
    plain, plain_result, _ = _smp_run(gic=gic, quantum=quantum)

    def setup(vm, stops):
        pending = {"steps": 0}

        def on_stop(stop: DebugStop) -> str:
            stops.append(stop)
            if stop.kind in ("watch", "breakpoint"):
                pending["steps"] = 2
            if pending["steps"]:
                pending["steps"] -= 1
                debug.step_vcpu = stop.vcpu
                debug.sync()
            return "continue"

        debug = GuestDebug(vm, on_stop)
        debug.add_breakpoint(SECONDARY + 4)
        debug.add_watchpoint("write", CHECKIN, 8, vm.vcpus[0])

    debugged, result, stops = _smp_run(setup, gic=gic, quantum=quantum)
    kinds = [s.kind for s in stops]
    assert kinds.count("watch") == 3 and kinds.count("breakpoint") == 3 and "step" in kinds
    assert all(s.vcpu in (1, 2, 3) for s in stops)
    assert result.stop == plain_result.stop
    assert _jsonl(debugged, tmp_path, "b") == _jsonl(plain, tmp_path, "a")


@needs_gdb
def test_c_firmware_session_with_mmu_on_leaves_the_trace_byte_identical(c_firmware, tmp_path) -> None:
    after_mmu = _after_mmu_on(c_firmware)
    plain_trace, gdb_trace = tmp_path / "plain.jsonl", tmp_path / "gdb.jsonl"
    args = [str(c_firmware), "--cpus", "4", "--json", "--schedule", "random", "--seed", "11"]
    plain = _run_json(*args, "--trace", str(plain_trace))
    assert plain.returncode == 0, plain.stderr
    emu = EmuUnderGdb(*args, "--trace", str(gdb_trace))
    emu.gdb(
        "monitor break-on psci CPU_ON",
        "continue",
        "stepi",
        "monitor break-on clear",
        f"break *{after_mmu:#x}",
        "continue",
        "stepi",
        "stepi",
        "continue",
        "info threads",
        "x/4xw &page_table",
        "delete",
        "continue",
        program=str(c_firmware),
    )
    status, out = emu.finish()
    assert status == 0, out
    assert json.loads(out[out.index("{") :]) == json.loads(plain.stdout)
    assert gdb_trace.read_bytes() == plain_trace.read_bytes()


# -- interrupts: gic_test takes timer PPIs, SGIs and SPIs; virtual time decides when ---------


def _symbols(elf) -> dict[str, int]:
    listing = subprocess.run([OBJDUMP, "-t", elf], capture_output=True, text=True, check=True).stdout
    return {
        fields[-1]: int(fields[0], 16) for fields in map(str.split, listing.splitlines()) if len(fields) >= 5
    }


@pytest.mark.parametrize(
    ("gic", "vm_args"), [("v3", {}), ("v3", {"quantum": 3}), ("v2", {"schedule": "random", "seed": 7})]
)
def test_stops_and_steps_in_interrupt_handlers_keep_virtual_time(c_firmware, tmp_path, gic, vm_args) -> None:
    """Breakpoints in the IRQ vector and handler, a step after each of the first 200 stops, a
    watch on the tick counter, a break on CPU_ON: every tick, SGI and SPI arrives at the
    same virtual time and instruction as without the debugger."""
    elf = c_firmware.parent / "gic_test.elf"
    sym = _symbols(elf)
    plain, plain_result, _ = _smp_run(gic=gic, program=elf, **vm_args)

    def setup(vm, stops):
        steps = iter(range(200))

        def on_stop(stop: DebugStop) -> str:
            stops.append(stop)
            if next(steps, None) is not None:
                debug.step_vcpu = stop.vcpu
                debug.sync()
            return "continue"

        debug = GuestDebug(vm, on_stop, stop_at_start=True)
        for name in ("irq_entry", "irq_handler", "secondary_main"):
            debug.add_breakpoint(sym[name])
        debug.add_watchpoint("write", sym["ticks"], 4, vm.vcpus[0])
        debug.break_on_hypercall = lambda vcpu, conduit, fid: fid == 0xC400_0003
        debug.sync()

    debugged, result, stops = _smp_run(setup, gic=gic, program=elf, **vm_args)
    kinds = [s.kind for s in stops]
    assert kinds.count("breakpoint") > 50 and kinds.count("step") > 100, kinds
    assert kinds.count("watch") >= 1 and kinds.count("hypercall") == 3
    assert result.stop == plain_result.stop and result.stop.type.name == "SHUTDOWN"
    assert any(e.kind == "interrupt" for e in plain.trace.events)
    assert debugged.clock.ns == plain.clock.ns
    assert _jsonl(debugged, tmp_path, "b") == _jsonl(plain, tmp_path, "a")


@needs_gdb
def test_gdb_session_in_interrupt_handlers_leaves_the_trace_byte_identical(c_firmware, tmp_path) -> None:
    elf = c_firmware.parent / "gic_test.elf"
    ticks = _symbols(elf)["ticks"]
    plain_trace, gdb_trace = tmp_path / "plain.jsonl", tmp_path / "gdb.jsonl"
    args = [str(elf), "--cpus", "4", "--json", "--schedule", "random", "--seed", "2"]
    plain = _run_json(*args, "--trace", str(plain_trace))
    assert plain.returncode == 0, plain.stderr
    emu = EmuUnderGdb(*args, "--trace", str(gdb_trace))
    out = emu.gdb(
        "break irq_handler",
        "continue",
        "stepi",
        "continue",
        "stepi",
        "stepi",
        "bt",
        "delete",
        f"watch *(int *){ticks:#x}",
        "continue",
        "continue",
        "delete",
        "break secondary_main",
        "continue",
        "info threads",
        "delete",
        "continue",
        program=str(elf),
    )
    status, emu_out = emu.finish()
    assert status == 0, (out, emu_out)
    assert "hit Breakpoint 1, 0x" in out and "in irq_handler ()" in out, out
    assert re.search(r"Thread \d hit Hardware watchpoint 2: \*\(int \*\)0x", out), out
    assert "hit Breakpoint 3, 0x" in out and "in secondary_main ()" in out, out
    assert json.loads(emu_out[emu_out.index("{") :]) == json.loads(plain.stdout)
    assert gdb_trace.read_bytes() == plain_trace.read_bytes()


def test_memory_and_watchpoints_follow_the_vcpus_page_tables() -> None:
    """An upper-half alias (VA 0xffff000040200000 -> PA 0x40200000): gdb's reads go through
    the translation, an unmapped VA is an error, and a watchpoint set on the alias fires
    when the guest stores through it, reported at the VA."""
    from emu.arm.asm import assemble
    from emu.tools.gdb.vm_target import VmTarget
    from tests.test_mmu import MMU_48BIT

    alias, unmapped = 0xFFFF_0000_4020_0000, 0xFFFF_0080_0000_0000
    image = assemble(MMU_48BIT, 0x4008_0000)
    store = 0x4008_0000 + image.index((0xF900_0109).to_bytes(4, "little"))  # str x9, [x8]
    vm = Vm(timeout=30)
    machine = Machine(vm, image)
    stops: list[DebugStop] = []

    def on_stop(stop: DebugStop) -> str:
        stops.append(stop)
        if stop.kind == "breakpoint":
            assert debug.add_watchpoint("write", alias, 8, vm.vcpus[0])
            assert not debug.add_watchpoint("write", unmapped, 8, vm.vcpus[0])
        return "continue"

    debug = GuestDebug(vm, on_stop)
    debug.add_breakpoint(store)
    result = machine.run()
    assert result.stop.type.name == "SHUTDOWN"
    assert [(s.kind, s.address) for s in stops] == [("breakpoint", store), ("watch", alias)]

    target = VmTarget(vm)
    target.finish(0)
    assert target.read_memory(0, alias, 8) == (0x1122334455667788).to_bytes(8, "little")
    assert target.read_memory(0, unmapped, 8) is None
    assert target.write_memory(0, alias, b"\x99") and vm.read_memory(0x4020_0000, 1) == b"\x99"
    assert not target.write_memory(0, unmapped, b"\x99")


def test_gdb_flags_are_checked() -> None:
    result = _run_json(str(SMP_BOOT), "--gdb-wait")
    assert result.returncode == 1 and "--gdb-wait needs --gdb" in result.stderr
    result = _run_json(str(SMP_BOOT), "--gdb", "localhost:http")
    assert result.returncode == 2 and "expected [HOST:]PORT" in result.stderr
