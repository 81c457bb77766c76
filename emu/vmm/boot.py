"""Run a program the way ``emu run`` does and look at what happened, from Python.

``boot("firmware/smp_boot.S", cpus=4)`` builds a VM, boots the program with emu's VMM
(``emu.vmm.machine``) and returns a ``Boot``: the stop, the exits, the PSCI events with the
power changes they caused, the hypercalls, the console, guest memory, and ``assert_*``
helpers. Notebooks use it directly; the pytest kit (``emu.testing``) wraps it in fixtures.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from emu.abi.exits import Exit, FaultExit, StopExit, SystemEventExit
from emu.abi.trace import HypercallEvent, PsciEvent
from emu.arm.asm import assemble
from emu.kvm.caps import Cap, parse_cap
from emu.kvm.profiles import DEFAULT_PROFILE
from emu.kvm.scheduler import DEFAULT_QUANTUM
from emu.kvm.vm import LOAD_ADDR, Vm
from emu.smccc.decode import describe_result
from emu.vmm.loader import Program, load_program
from emu.vmm.machine import BootOptions, Machine, RunResult, Vmm, load_vmm


@dataclass(frozen=True)
class Schedule:
    """A scheduling choice for a run: ``rr`` or ``random`` with a seed."""

    name: str = "rr"
    seed: int = 0

    def __str__(self) -> str:
        return self.name if self.name == "rr" else f"random-seed{self.seed}"


@dataclass
class Boot:
    """A finished run, with helpers to assert on it."""

    vm: Vm
    result: RunResult
    machine: Machine

    @property
    def stop(self) -> Exit:
        return self.result.stop

    @property
    def exits(self) -> list[Exit]:
        return self.result.exits

    @property
    def psci(self) -> list[PsciEvent]:
        return self.vm.psci_events

    @property
    def hypercalls(self) -> list[HypercallEvent]:
        return self.vm.hypercalls

    def psci_results(self, function: str, caller: int | None = None) -> list[str]:
        """Decoded results of every call to ``function`` (e.g. ``"PSCI_CPU_ON64"``), in order."""
        return [
            describe_result(e.fid, e.result)
            for e in self.psci
            if e.name == function and (caller is None or e.caller == caller) and e.result is not None
        ]

    def psci_calls(self) -> list[tuple[int, str, str]]:
        """(caller, function, decoded result) for every PSCI call, in order."""
        return [
            (e.caller, e.name, describe_result(e.fid, e.result) if e.result is not None else "-")
            for e in self.psci
        ]

    @property
    def console(self) -> str:
        """What the guest wrote to its UART."""
        return self.machine.console.decode(errors="replace")

    def power(self) -> list[str]:
        """Final power state of each vCPU: on, off, suspended or halted."""
        return [v.power.value for v in self.vm.vcpus]

    def memory(self, address: int, size: int) -> bytes:
        return self.vm.read_memory(address, size)

    def u64(self, address: int, count: int | None = None) -> int | list[int]:
        """One little-endian u64 at ``address``, or a list of ``count`` of them."""
        n = 1 if count is None else count
        values = list(struct.unpack_from(f"<{n}Q", self.memory(address, 8 * n)))
        return values[0] if count is None else values

    def describe(self) -> str:
        calls = "\n".join(f"  [{c}] {f} -> {r}" for c, f, r in self.psci_calls())
        return f"stop: {self.stop!r}\npsci:\n{calls}"

    def assert_system_event(self, kind: str = "SHUTDOWN") -> None:
        stop = self.stop
        assert isinstance(stop, SystemEventExit) and stop.type.name == kind, self.describe()

    def assert_fault(self, insn: str | None = None) -> FaultExit:
        stop = self.stop
        assert isinstance(stop, FaultExit), self.describe()
        if insn is not None:
            assert stop.insn == insn, self.describe()
        return stop

    def assert_stop(self, reason: str) -> StopExit:
        stop = self.stop
        assert isinstance(stop, StopExit) and stop.reason.value == reason, self.describe()
        return stop


def boot(
    program: str | Path | None = None,
    *,
    source: str | None = None,
    cpus: int = 1,
    profile: str = DEFAULT_PROFILE,
    caps: Iterable[Cap | str] = (),
    schedule: Schedule | str = "rr",
    seed: int = 0,
    quantum: int = DEFAULT_QUANTUM,
    vmm: Vmm | str | Path | None = None,
    reboots: int = 0,
    max_insns: int | None = None,
    timeout: float = 30,
    mem_size: int = 128 << 20,
    boot_options: BootOptions | None = None,
    filters: Iterable[tuple[int, int, int]] = (),
    regs: Iterable[tuple[int, int]] = (),
) -> Boot:
    """Build a VM from ``program`` (a file) or ``source`` (assembly), run it, return the ``Boot``.

    ``filters`` are SMCCC filter ranges ``(base, nr_functions, action)`` and ``regs``
    ``(ONE_REG id, value)`` writes on every vCPU, both applied before the first run.
    """
    if program is not None and source is None:
        image = load_program(program)
    elif source is not None and program is None:
        image = Program.flat(assemble(source, LOAD_ADDR))
    else:
        raise ValueError("give exactly one of program and source")
    if isinstance(schedule, Schedule):
        schedule_name, seed = schedule.name, schedule.seed
    else:
        schedule_name = schedule
    vm = Vm(
        profile,
        cpus=cpus,
        mem_size=mem_size,
        seed=seed,
        schedule=schedule_name,
        quantum=quantum,
        max_insns=max_insns,
        timeout=timeout,
    )
    for cap in caps:
        vm.enable_cap(cap if isinstance(cap, Cap) else parse_cap(cap))
    for base, nr, action in filters:
        vm.set_smccc_filter(base, nr, action)
    if not vm.vcpus:
        vm.create_vcpu(0)
    for reg, value in regs:
        for vcpu in vm.vcpus:
            vcpu.set_one_reg(reg, value)
    if vmm is not None and not isinstance(vmm, Vmm):
        vmm = load_vmm(vmm)
    machine = Machine(vm, image, vmm=vmm, reboots=reboots, boot=boot_options)
    try:
        return Boot(vm, machine.run(), machine)
    finally:
        vm.close()


def schedules(seeds: int) -> list[Schedule]:
    """Round robin, then ``seeds`` random schedules (seeds 0 .. seeds-1)."""
    return [Schedule("rr")] + [Schedule("random", s) for s in range(seeds)]
