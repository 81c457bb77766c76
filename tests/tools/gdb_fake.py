"""An in-memory stand-in for a VM behind the gdb stub: a few threads, sparse memory, a script.

``resume`` without a step pops the next :class:`Scripted` stop (applying its memory writes and
pc first); a step advances the stepped thread's pc by 4 and touches nothing else. An empty
script, or a scripted stop with ``wait_for_interrupt``, blocks until gdb's Ctrl-C (bounded).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from emu.tools.gdb.target import StopEvent
from emu.tools.gdb.target_xml import CPSR, FPCR, FPSR, PC, REGISTERS, SP, V0

ENTRY = 0x40080000
INTERRUPT_WAIT = 20.0  # seconds a fake "run for ever" waits for Ctrl-C before failing


@dataclass
class Scripted:
    stop: StopEvent
    pc: int | None = None
    writes: dict[int, bytes] = field(default_factory=dict)
    wait_for_interrupt: bool = False


class FakeTarget:
    def __init__(
        self, nthreads: int = 3, script: list[Scripted] | None = None, off: tuple[int, ...] = ()
    ) -> None:
        self.tids = list(range(nthreads))
        self.off = set(off)
        self.regs: dict[int, list[int]] = {}
        for tid in self.tids:
            regs = [0] * len(REGISTERS)
            for n in range(31):
                regs[n] = 0x1000 * (tid + 1) + n  # x0 of thread t (vCPU t-1) = 0x1000*t
            regs[SP] = 0x40100000 + 0x1000 * tid
            regs[PC] = ENTRY + 0x100 * tid
            regs[CPSR] = 0x3C5  # EL1h, DAIF masked
            regs[V0] = 0x00112233445566778899AABBCCDDEEFF
            regs[FPSR], regs[FPCR] = 0x10, 0x3000000
            self.regs[tid] = regs
        self.memory: dict[int, int] = {}
        self.map(0x1000, bytes(range(0x10, 0x30)))
        self.map(0x2000, (7).to_bytes(4, "little") + bytes(12))
        self.map(ENTRY, b"\x1f\x20\x03\xd5" * 64)  # nops
        self.script: deque[Scripted] = deque(script or [])
        self.breakpoints: set[tuple[str, int, int]] = set()
        self.calls: list[tuple] = []
        self.monitor_output = {"hello": "hello from the fake target\n"}
        self.killed = self.detached = False
        self.running = threading.Event()  # set while a resume waits for Ctrl-C

    def map(self, addr: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            self.memory[addr + i] = byte

    # -- Target ------------------------------------------------------------------------------

    def threads(self) -> list[int]:
        return list(self.tids)

    def thread_info(self, tid: int) -> str:
        state = "off (cannot be resumed)" if tid in self.off else "on"
        return f"vCPU {tid}, MPIDR {0x80000000 | tid:#x}, {state}"

    def read_registers(self, tid: int) -> list[int]:
        self.calls.append(("read_registers", tid))
        return list(self.regs[tid])

    def write_register(self, tid: int, regnum: int, value: int) -> None:
        self.calls.append(("write_register", tid, regnum, value))
        self.regs[tid][regnum] = value

    def read_memory(self, tid: int, va: int, length: int) -> bytes | None:
        self.calls.append(("read_memory", tid, va, length))
        out = bytearray()
        for addr in range(va, va + length):
            if addr not in self.memory:
                break
            out.append(self.memory[addr])
        return bytes(out) if out else None

    def write_memory(self, tid: int, va: int, data: bytes) -> bool:
        self.calls.append(("write_memory", tid, va, data))
        if any(va + i not in self.memory for i in range(len(data))):
            return False
        self.map(va, data)
        return True

    def add_breakpoint(self, kind: str, addr: int, length: int) -> bool:
        self.calls.append(("add_breakpoint", kind, addr, length))
        if addr == 0xDEAD0000:
            return False
        self.breakpoints.add((kind, addr, length))
        return True

    def remove_breakpoint(self, kind: str, addr: int, length: int) -> bool:
        self.calls.append(("remove_breakpoint", kind, addr, length))
        if (kind, addr, length) not in self.breakpoints:
            return False
        self.breakpoints.discard((kind, addr, length))
        return True

    def resume(self, step_tid: int | None, interrupt: threading.Event) -> StopEvent:
        self.calls.append(("resume", step_tid))
        if step_tid is not None:
            self.regs[step_tid][PC] += 4
            return StopEvent(step_tid, "step")
        if not self.script:
            self.running.set()
            if not interrupt.wait(INTERRUPT_WAIT):
                raise AssertionError("nothing interrupted a run with no scripted stop")
            return StopEvent(0, "interrupt")
        item = self.script.popleft()
        stop = item.stop
        if stop.reason == "breakpoint":
            assert ("sw", stop.address, 4) in self.breakpoints, (stop, self.breakpoints)
        if stop.reason == "watch":
            assert any(
                kind == "write" and addr <= stop.address < addr + length
                for kind, addr, length in self.breakpoints
            ), (stop, self.breakpoints)
        for addr, data in item.writes.items():
            self.map(addr, data)
        if item.pc is not None:
            self.regs[stop.tid][PC] = item.pc
        if item.wait_for_interrupt:
            self.running.set()
            if not interrupt.wait(INTERRUPT_WAIT):
                raise AssertionError("nothing interrupted the run")
        return stop

    def monitor(self, command: str) -> str:
        self.calls.append(("monitor", command))
        return self.monitor_output.get(command, f"unknown command: {command}\n")

    def kill(self) -> None:
        self.calls.append(("kill",))
        self.killed = True

    def detach(self) -> None:
        self.calls.append(("detach",))
        self.detached = True
