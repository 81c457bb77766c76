"""Run a program the way ``emu run`` does and look at what happened, from Python.

``boot("firmware/smp_boot.S", cpus=4)`` builds a VM, boots the program with emu's VMM
(``emu.vmm.machine``) and returns a ``Boot``: the stop, the exits, the PSCI events with the
power changes they caused, the hypercalls, the console, guest memory, and ``assert_*``
helpers. Notebooks use it directly; the pytest kit (``emu.testing``) wraps it in fixtures.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emu.abi.exits import Exit, FaultExit, StopExit, SystemEventExit
from emu.abi.trace import HypercallEvent, PsciEvent
from emu.arm.asm import assemble
from emu.kvm.caps import Cap, parse_cap
from emu.kvm.profiles import DEFAULT_PROFILE
from emu.kvm.scheduler import DEFAULT_QUANTUM
from emu.kvm.snapshot import Snapshot
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
    pool: BootPool | None = None,
) -> Boot:
    """Build a VM from ``program`` (a file) or ``source`` (assembly), run it, return the ``Boot``.

    ``filters`` are SMCCC filter ranges ``(base, nr_functions, action)`` and ``regs``
    ``(ONE_REG id, value)`` writes on every vCPU, both applied before the first run.
    With a ``pool`` (``BootPool``), a machine booted before with the same options is
    restored from its snapshot instead of being built again.
    """
    schedule_name, seed = _schedule(schedule, seed)
    options = (
        cpus,
        profile,
        tuple(caps),
        quantum,
        reboots,
        max_insns,
        timeout,
        mem_size,
        boot_options,
        tuple(filters),
        tuple(regs),
    )
    if pool is None:
        machine = _build(program, source, *options)
        machine.vm.reseed(seed, schedule_name)
        return _run(machine, _vmm(vmm), close=True)
    return pool.run(program, source, options, schedule_name, seed, _vmm(vmm))


def _schedule(schedule: Schedule | str, seed: int) -> tuple[str, int]:
    if isinstance(schedule, Schedule):
        return schedule.name, schedule.seed
    return schedule, seed


def _vmm(vmm: Vmm | str | Path | None) -> Vmm:
    if vmm is None:
        return Vmm()
    return vmm if isinstance(vmm, Vmm) else load_vmm(vmm)


def _build(
    program: str | Path | None,
    source: str | None,
    cpus: int,
    profile: str,
    caps: tuple[Cap | str, ...],
    quantum: int,
    reboots: int,
    max_insns: int | None,
    timeout: float,
    mem_size: int,
    boot_options: BootOptions | None,
    filters: tuple[tuple[int, int, int], ...],
    regs: tuple[tuple[int, int], ...],
) -> Machine:
    """A booted machine (nothing run yet); schedule, seed and VMM are set per run."""
    if program is not None and source is None:
        image = load_program(program)
    elif source is not None and program is None:
        image = Program.flat(assemble(source, LOAD_ADDR))
    else:
        raise ValueError("give exactly one of program and source")
    vm = Vm(profile, cpus=cpus, mem_size=mem_size, quantum=quantum, max_insns=max_insns, timeout=timeout)
    for cap in caps:
        vm.enable_cap(cap if isinstance(cap, Cap) else parse_cap(cap))
    for base, nr, action in filters:
        vm.set_smccc_filter(base, nr, action)
    if not vm.vcpus:
        vm.create_vcpu(0)
    for reg, value in regs:
        for vcpu in vm.vcpus:
            vcpu.set_one_reg(reg, value)
    return Machine(vm, image, reboots=reboots, boot=boot_options)


def _run(machine: Machine, vmm: Vmm, close: bool) -> Boot:
    machine.use_vmm(vmm)
    try:
        return Boot(machine.vm, machine.run(), machine)
    finally:
        if close:
            machine.vm.close()
        else:
            machine.vm.limits.pause()  # the watchdog waits for the machine's next run


class BootPool:
    """``boot()`` that boots each distinct machine once and reuses it for every schedule.

    The first ``boot`` of a program with given options builds and boots the machine and
    snapshots it before it runs; later calls that differ only in ``schedule``/``seed``
    (or ``vmm``) restore that snapshot into an idle machine instead of building a new
    VM, which gives the same run as a fresh ``boot``. A machine is idle again once
    nothing refers to the ``Boot`` it returned (so ``Boot`` objects a caller keeps stay
    valid). The pytest kit's ``emu_boot`` is one pool for the whole test run.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], _PoolEntry] = {}

    def boot(self, program: str | Path | None = None, **options: Any) -> Boot:
        """``boot(program, **options)`` with machines reused from this pool."""
        return boot(program, pool=self, **options)

    def run(
        self,
        program: str | Path | None,
        source: str | None,
        options: tuple[Any, ...],
        schedule: str,
        seed: int,
        vmm: Vmm,
    ) -> Boot:
        """Restore (or build and snapshot) the machine for these options, then run it."""
        key = (_program_key(program), source, *options)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _PoolEntry()
        if entry.idle:
            machine = entry.idle.pop()
            assert entry.snapshot is not None
            machine.vm.restore(entry.snapshot)
        else:
            machine = _build(program, source, *options)
            if entry.snapshot is None:
                entry.snapshot = machine.vm.snapshot()
            else:
                machine.vm.restore(entry.snapshot)  # shares the snapshot's RAM from now on
        machine.vm.reseed(seed, schedule)
        result = _run(machine, vmm, close=False)
        weakref.finalize(result, entry.idle.append, machine)
        return result

    __call__ = boot


@dataclass
class _PoolEntry:
    snapshot: Snapshot | None = None
    idle: list[Machine] = field(default_factory=list)


def _program_key(program: str | Path | None) -> tuple[str, int] | None:
    """A program file by path and modification time (an edited file is booted afresh)."""
    if program is None:
        return None
    path = Path(program).resolve()
    try:
        return str(path), path.stat().st_mtime_ns
    except OSError:
        return str(path), -1


def schedules(seeds: int) -> list[Schedule]:
    """Round robin, then ``seeds`` random schedules (seeds 0 .. seeds-1)."""
    return [Schedule("rr")] + [Schedule("random", s) for s in range(seeds)]
