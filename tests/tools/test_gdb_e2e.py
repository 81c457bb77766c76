"""The real gdb-multiarch against the stub serving the fake target on a loopback port."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading

import pytest

from emu.tools.gdb import GdbServer, StopEvent
from tests.tools.gdb_fake import ENTRY, FakeTarget, Scripted

GDB = shutil.which("gdb-multiarch")
TIMEOUT = 30.0

pytestmark = pytest.mark.skipif(GDB is None, reason="gdb-multiarch not installed")


class Served:
    """The stub on an ephemeral port, serving in a thread; :meth:`outcome` joins it (bounded)."""

    def __init__(self, target: FakeTarget) -> None:
        self.server = GdbServer(target, timeout=TIMEOUT, accept_timeout=TIMEOUT)
        self.result: list[str] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.result.append(self.server.serve())
        except BaseException as err:  # reported by the test, not lost in the thread
            self.errors.append(err)

    def gdb_args(self, *commands: str) -> list[str]:
        args = [
            GDB,
            "-batch",
            "-nx",
            "-ex",
            "set architecture aarch64",
            "-ex",
            f"target remote 127.0.0.1:{self.server.port}",
        ]
        for command in commands:
            args += ["-ex", command]
        return args

    def outcome(self) -> str:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the stub did not finish"
        assert not self.errors, self.errors
        return self.result[0]


def test_gdb_session_threads_registers_memory_breakpoint_step_watch_monitor_kill():
    target = FakeTarget(
        3,
        off=(2,),
        script=[
            Scripted(StopEvent(1, "breakpoint", 0x40080010), pc=0x40080010),
            Scripted(StopEvent(1, "watch", 0x2000), pc=0x40080020, writes={0x2000: b"\x2a\0\0\0"}),
        ],
    )
    served = Served(target)
    proc = subprocess.run(
        served.gdb_args(
            "info threads",
            "thread 2",
            "p/x $x0",
            "x/2xw 0x1000",
            "break *0x40080010",
            "continue",
            "stepi",
            "watch *(int*)0x2000",
            "continue",
            "monitor hello",
            "kill",
        ),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    out = proc.stdout
    assert served.outcome() == "killed", (out, proc.stderr)
    lines = out.splitlines()

    # info threads: every vCPU is a thread, named by the target.
    assert any("Thread 1 (vCPU 0, MPIDR 0x80000000, on)" in line for line in lines), out
    assert any("Thread 3 (vCPU 2, MPIDR 0x80000002, off (cannot be resumed))" in line for line in lines), out
    assert "[Switching to thread 2 (Thread 2)]" in out
    assert "$1 = 0x2000" in lines  # x0 of thread 2 (vCPU 1)
    assert "0x1000:\t0x13121110\t0x17161514" in lines
    assert "Breakpoint 1 at 0x40080010" in lines
    assert "Thread 2 hit Breakpoint 1, 0x0000000040080010 in ?? ()" in lines
    assert "0x0000000040080014 in ?? ()" in lines  # stepi moved thread 2 only
    assert target.regs[0][32] == ENTRY and target.regs[2][32] == ENTRY + 0x200
    assert "Hardware watchpoint 2: *(int*)0x2000" in lines
    assert "Thread 2 hit Hardware watchpoint 2: *(int*)0x2000" in lines
    assert "Old value = 7" in lines and "New value = 42" in lines
    # gdb prints what the target says (O packets) on its stderr, not with the command output.
    assert "hello from the fake target" in proc.stderr.splitlines()
    assert "[Inferior 1 (Remote target) killed]" in lines
    assert target.killed and not target.breakpoints

    resumes = [call for call in target.calls if call[0] == "resume"]
    # continue, stepi (one thread), continue, then gdb steps off the watchpoint by itself.
    assert resumes == [("resume", None), ("resume", 1), ("resume", None), ("resume", 1)]
    assert ("add_breakpoint", "write", 0x2000, 4) in target.calls


def test_gdb_registers_vectors_and_writes():
    target = FakeTarget(2)
    served = Served(target)
    proc = subprocess.run(
        served.gdb_args(
            "p/x $pc",
            "p $cpsr",
            "p/x $v0.q.u[0]",
            "p/x $v0.d.u[1]",
            "p/x $fpcr",
            "p/x $sp",
            "set var $x5 = 0x1234",
            "set var *(int*)0x1000 = 0x55667788",
            "x/1xw 0x1000",
            "x/1xw 0x5000",
            "detach",
        ),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    out = proc.stdout + proc.stderr
    assert served.outcome() == "detached", out
    assert "$1 = 0x40080000" in out
    assert "$2 = [ SP EL=1 F I A D BTYPE=0 ]" in out
    assert "$3 = 0x112233445566778899aabbccddeeff" in out
    assert "$4 = 0x11223344556677" in out
    assert "$5 = 0x3000000" in out
    assert "$6 = 0x40100000" in out
    assert target.regs[0][5] == 0x1234
    assert "0x1000:\t0x55667788" in out
    assert "Cannot access memory at address 0x5000" in out
    assert "[Inferior 1 (Remote target) detached]" in out
    assert target.detached


def test_gdb_ctrl_c_interrupts_a_running_target():
    target = FakeTarget(2, script=[Scripted(StopEvent(1, "interrupt"), wait_for_interrupt=True)])
    served = Served(target)
    proc = subprocess.Popen(
        served.gdb_args("continue", "info threads", "detach"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert target.running.wait(TIMEOUT), "gdb never resumed the target"
        proc.send_signal(signal.SIGINT)  # what Ctrl-C at the terminal does
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=TIMEOUT)
    assert served.outcome() == "detached", (out, err)
    assert "Thread 2 received signal SIGINT, Interrupt." in out
    assert "* 2    Thread 2 (vCPU 1, MPIDR 0x80000001, on)" in out


def test_gdb_sees_the_program_exit():
    target = FakeTarget(1, script=[Scripted(StopEvent(0, "exited", exit_status=3))])
    served = Served(target)
    proc = subprocess.run(served.gdb_args("continue"), capture_output=True, text=True, timeout=TIMEOUT)
    assert "[Inferior 1 (Remote target) exited with code 03]" in proc.stdout, proc.stdout
    assert served.outcome() == "exited"


def test_gdb_hardware_breakpoint_and_read_and_access_watchpoints():
    target = FakeTarget(
        2,
        script=[
            Scripted(StopEvent(0, "hw-breakpoint", 0x40080008), pc=0x40080008),
            Scripted(StopEvent(1, "rwatch", 0x2000), pc=0x40080120),
            Scripted(StopEvent(0, "awatch", 0x2004), pc=0x40080030, writes={0x2004: b"\x05"}),
        ],
    )
    served = Served(target)
    proc = subprocess.run(
        served.gdb_args(
            "hbreak *0x40080008",
            "continue",
            "delete",
            "rwatch *(int*)0x2000",
            "continue",
            "delete",
            "awatch *(int*)0x2004",
            "continue",
            "detach",
        ),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    out = proc.stdout
    assert served.outcome() == "detached", (out, proc.stderr)
    lines = out.splitlines()
    assert "Thread 1 hit Breakpoint 1, 0x0000000040080008 in ?? ()" in lines
    assert "Thread 2 hit Hardware read watchpoint 2: *(int*)0x2000" in lines
    assert "Value = 7" in lines
    assert "Thread 1 hit Hardware access (read/write) watchpoint 3: *(int*)0x2004" in lines
    assert "Old value = 0" in lines and "New value = 5" in lines
    kinds = [call[1] for call in target.calls if call[0] == "add_breakpoint"]
    assert kinds == ["hw", "read", "access"]
