"""Guest debugging: what ``KVM_SET_GUEST_DEBUG`` gives a VMM, made deterministic.

A debugger front end (``emu.tools.gdb``) attaches a :class:`GuestDebug` to a VM
(``vm.debug``) and subscribes ``on_stop``. From then on the run loop stops, on the
emulating thread and at an instruction boundary, when a vCPU:

* reaches a breakpoint (a virtual address: the guest's memory is never changed, so the
  guest's own BRK instructions keep reaching its vectors);
* touches a watched range (``write``/``read``/``access``; reported on the instruction after
  the access, the access done);
* has executed the one instruction it was asked to step (:attr:`GuestDebug.step_vcpu`),
  while every other vCPU stays where it is;
* traps an HVC/SMC that :attr:`GuestDebug.break_on_hypercall` selects, before the model
  answers it (PC is left on the HVC/SMC; resuming executes it and the model answers);
* was running when :meth:`GuestDebug.request_stop` was called from any thread.

``on_stop(stop)`` runs while the vCPU is stopped; it may read and change registers,
memory and the debug settings, and returns ``"continue"`` or ``"kill"`` (the run then ends
with a ``StopExit`` of reason KILLED). The wall-clock limit does not run meanwhile.

Determinism: a stop never changes what the scheduler decides. While something is armed
(a breakpoint, a watchpoint, a step or a hypercall break) every vCPU carries a code hook
that can stop it before any instruction, and a stop in the middle of a quantum resumes
with exactly the rest of it: a session that only inspects gives the same trace as a run
without a debugger. The slice is counted as it would be without one. With a vGIC and no
budget that is the vCPU's block counter (``emu.arm.syshook.InsnCounter``): each piece runs
count-less like the undebugged slice, the counter's limit and timer deadlines end it, the
clock follows it inside hooks, and the block a stop interrupted is not counted again when
it goes on (``InsnCounter.resume_block``); a step is the code hook stopping before the
next instruction. Otherwise the code hook counts the instructions of each piece and the
pieces add up to the slice's ``count=``.
Stepping the vCPU that stopped stays in the schedule: inside its quantum, or, when the stop
came at the quantum's end (a watchpoint hit by its last instruction), as the first
instruction of its next one, the vCPUs scheduled in between running first. Stepping another
vCPU runs it outside the schedule (the run then differs, as it would on hardware).
With nothing armed no hook is installed (full speed) and ``request_stop`` takes effect at
the next slice boundary, or at once in a slice without any count (one vCPU, no vGIC, no
budget).

Unicorn's memory hooks see physical addresses (engine notes 4), so a watchpoint is placed
on the physical range its virtual address maps to when it is inserted.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_PROT_READ, UC_PROT_WRITE
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH

from emu.abi.exits import Exit, StopExit, StopReason
from emu.arm.regs import rawlib
from emu.kvm.limits import RunLimits

StopKind = Literal["attach", "breakpoint", "watch", "rwatch", "awatch", "step", "hypercall", "interrupt"]
WatchKind = Literal["write", "read", "access"]
Action = Literal["continue", "kill"]

#: The report kind of a hit on each watchpoint kind.
_WATCH_STOP: dict[str, StopKind] = {"write": "watch", "read": "rwatch", "access": "awatch"}
_PAGE = 0x1000
_emu_stop = rawlib.uc_emu_stop
_vmem_translate = rawlib.uc_vmem_translate


@dataclass(frozen=True)
class DebugStop:
    """Why the run stopped for the debugger: which vCPU, and the address involved.

    ``address`` is the breakpoint's PC, the watched virtual address that was accessed, or
    the PC of the HVC/SMC; None for ``step``, ``interrupt`` and ``attach``.
    """

    vcpu: int
    kind: StopKind
    address: int | None = None


class DebugVcpu(Protocol):
    """What guest debugging needs of a vCPU (``emu.kvm.vcpu.Vcpu``)."""

    id: int
    uc: Any
    mmu_enabled: bool

    @property
    def sleeping(self) -> bool: ...

    @property
    def pc(self) -> int: ...

    @pc.setter
    def pc(self, value: int) -> None: ...

    def execute(self, count: int) -> Exit | None: ...

    def set_hypercall_hook(self, hook: Callable[[str, int, int], bool] | None) -> None: ...


class BlockCounter(Protocol):
    """The vCPU's block counter (``emu.arm.syshook.InsnCounter``), as a paused slice uses it."""

    def resume_block(self, pc: int) -> None: ...

    def drop_resume(self) -> None: ...


class DebuggerHandle(Protocol):
    """What ``Vm.serve_gdb`` returns: where the debugger listens, and how to end the session."""

    @property
    def port(self) -> int: ...

    def finish(self, exit_status: int, timeout: float | None = 5.0) -> None:
        """The run is over: tell the debugger (it sees the exit status)."""

    def close(self) -> None: ...


class DebugVm(Protocol):
    """What guest debugging needs of the VM (``emu.kvm.vm.Vm``)."""

    debug: GuestDebug | None

    @property
    def vcpus(self) -> Sequence[DebugVcpu]: ...

    @property
    def limits(self) -> RunLimits: ...

    def vcpu(self, vcpu_id: int) -> DebugVcpu: ...


@dataclass
class _Watch:
    kind: WatchKind
    va: int
    length: int
    pa: int
    hooks: list[tuple[DebugVcpu, int]]


class GuestDebug:
    """Breakpoints, watchpoints, single-step and hypercall breaks for one VM's run loop."""

    def __init__(
        self, vm: DebugVm, on_stop: Callable[[DebugStop], Action], *, stop_at_start: bool = False
    ) -> None:
        self.vm = vm
        self.on_stop: Callable[[DebugStop], Action] | None = on_stop
        #: Virtual addresses that stop any vCPU about to execute them.
        self.breakpoints: set[int] = set()
        self.watchpoints: dict[tuple[WatchKind, int, int], _Watch] = {}
        #: The vCPU the next resume executes exactly one instruction of, or None.
        self.step_vcpu: int | None = None
        #: ``(vcpu_id, conduit, fid) -> bool``: stop on this trapped call, before the model.
        self.break_on_hypercall: Callable[[int, str, int], bool] | None = None
        self._code_hooks: dict[int, int] = {}
        self._interrupt = threading.Event()
        self._first_stop = stop_at_start
        self._ran = 0  # code-hook calls in this piece
        self._stopped: DebugStop | None = None  # the stop a hook took
        self._pending: DebugStop | None = None  # a watch hit, taken before the next insn
        self._skip_pc: tuple[int, int] | None = None  # (vcpu, pc): resume over this breakpoint
        self._skip_call: tuple[int, int] | None = None  # (vcpu, pc): this call was reported
        self._step_report: int | None = None  # a step ended in an exit: report it next
        self._uncounted = False  # the running piece has no budget
        self._stepping = False  # the running piece stops before its second instruction
        vm.debug = self

    # -- settings (called while the VM is stopped) ------------------------------------------

    def add_breakpoint(self, va: int) -> None:
        self.breakpoints.add(va)
        self.sync()

    def remove_breakpoint(self, va: int) -> bool:
        if va not in self.breakpoints:
            return False
        self.breakpoints.discard(va)
        self.sync()
        return True

    def add_watchpoint(self, kind: WatchKind, va: int, length: int, via: DebugVcpu) -> bool:
        """Watch ``length`` bytes at ``va`` as ``via`` translates it now; False if unmapped."""
        pa = translate(via, va, write=False)
        if pa is None or length <= 0 or (pa + length - 1) // _PAGE != pa // _PAGE:
            return False
        key = (kind, va, length)
        if key in self.watchpoints:
            return True
        watch = _Watch(kind, va, length, pa, [])
        types = {"write": UC_HOOK_MEM_WRITE, "read": UC_HOOK_MEM_READ}.get(
            kind, UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE
        )
        for vcpu in self.vm.vcpus:
            handle = vcpu.uc.hook_add(types, self._on_memory, (vcpu, watch), pa, pa + length - 1)
            watch.hooks.append((vcpu, handle))
        self.watchpoints[key] = watch
        self.sync(flush=True)
        return True

    def remove_watchpoint(self, kind: WatchKind, va: int, length: int) -> bool:
        watch = self.watchpoints.pop((kind, va, length), None)
        if watch is None:
            return False
        for vcpu, handle in watch.hooks:
            vcpu.uc.hook_del(handle)
        self.sync(flush=True)
        return True

    @property
    def armed(self) -> bool:
        """Whether anything can stop a vCPU in the middle of a slice."""
        return bool(
            self.breakpoints or self.watchpoints or self.step_vcpu is not None or self.break_on_hypercall
        )

    def sync(self, flush: bool = False) -> None:
        """Install or drop the counting code hooks to match :attr:`armed`.

        Code hooks only apply to code translated after them, so translated blocks are
        dropped whenever the set changes (engine notes 0.5).
        """
        want = self.armed
        changed = flush
        for vcpu in self.vm.vcpus:
            handle = self._code_hooks.get(vcpu.id)
            if want and handle is None:
                self._code_hooks[vcpu.id] = vcpu.uc.hook_add(UC_HOOK_CODE, self._on_code, vcpu)
                changed = True
            elif not want and handle is not None:
                vcpu.uc.hook_del(self._code_hooks.pop(vcpu.id))
                changed = True
            vcpu.set_hypercall_hook(self._hypercall_hook(vcpu) if self.break_on_hypercall else None)
        if changed:
            for vcpu in self.vm.vcpus:
                vcpu.uc.ctl_flush_tb()
                vcpu.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def request_stop(self) -> None:
        """Stop the run soon (gdb's Ctrl-C). Safe from any thread."""
        self._interrupt.set()
        # An uncounted single-vCPU slice may never return by itself; stopping it loses no
        # accounting. Counted slices stop at the hook or at their end, never mid-way blind.
        for _ in range(50):
            if not self._interrupt.is_set():
                return
            target = self.vm.limits.watched
            if target is not None and self._uncounted:
                _emu_stop(target)
            time.sleep(0.001)

    def detach(self) -> None:
        """Take every breakpoint and hook out and let the run go on by itself."""
        self.on_stop = None
        self.breakpoints.clear()
        for key in list(self.watchpoints):
            self.remove_watchpoint(*key)
        self.step_vcpu = None
        self.break_on_hypercall = None
        self.sync()
        if self.vm.debug is self:
            self.vm.debug = None

    # -- the run loop's side -------------------------------------------------------------

    def run_slice(self, vcpu: DebugVcpu, count: int, counter: BlockCounter | None = None) -> Exit | None:
        """Execute the scheduler's slice of ``count`` instructions (0: uncounted) on ``vcpu``,
        stopping for the debugger on the way; the result is the slice's as if undisturbed.

        With ``counter`` (a vGIC and no budget) the vCPU's block counter, started for the
        slice, counts it and ends it, as without a debugger; otherwise pieces of Unicorn's
        ``count=`` add up to ``count``.
        """
        if counter is not None:
            try:
                return self._run_counted(vcpu, counter)
            finally:
                counter.drop_resume()
        done = 0
        while True:
            stop = self._stop_before(vcpu)
            if stop is not None and self._report(stop) == "kill":
                return self._killed(vcpu)
            step = self.step_vcpu
            if step is not None and step != vcpu.id:
                if step != self._boundary:
                    exit_ = self._step_outside(step)
                    if exit_ is not None:
                        return exit_
                    continue
                # It stopped at the end of its slice: its next instruction is the first of
                # its next slice; the slices scheduled before that run first.
                step = None
            stepping = step is not None
            piece = 1 if stepping else (count - done if count else 0)
            self._ran, self._stopped, self._uncounted = 0, None, piece == 0
            exit_ = vcpu.execute(piece)
            self._uncounted = False
            stop, self._stopped = self._stopped, None
            if count:
                done += self._ran if stop is not None else piece
            if stop is None:
                stop, self._pending = self._pending, None
            if stepping:
                self.step_vcpu = None
                self.sync()
            if exit_ is not None:
                if stepping:
                    self._step_report = vcpu.id
                return exit_
            if stop is None and stepping:
                stop = DebugStop(vcpu.id, "step")
            if stop is None and self._interrupt.is_set() and (not count or done < count):
                stop = DebugStop(vcpu.id, "interrupt")
            if stop is None:
                return None
            complete = bool(count) and done >= count
            if self._report(stop, at_slice_end=complete) == "kill":
                return self._killed(vcpu)
            if vcpu.sleeping or complete:
                return None

    def _run_counted(self, vcpu: DebugVcpu, counter: BlockCounter) -> Exit | None:
        """A slice the block counter counts: each piece runs count-less, as the slice runs
        without a debugger, so it ends where that one would (the counter's limit, a timer
        deadline, a hook that moved PC, an exit). A piece that did not end by a debugger's
        stop ends the slice; one that did goes on from the stop with the block it was in
        already counted. A step stops before the stepped instruction's successor."""
        while True:
            stop = self._stop_before(vcpu)
            if stop is not None and self._report(stop) == "kill":
                return self._killed(vcpu)
            step = self.step_vcpu
            if step is not None and step != vcpu.id:
                if step != self._boundary:
                    exit_ = self._step_outside(step, counted=True)
                    if exit_ is not None:
                        return exit_
                    continue
                step = None  # as in run_slice: its step is the first of its next slice
            stepping = step is not None
            if stepping:
                self.sync()  # the step is taken by the code hook
            self._ran, self._stopped, self._stepping = 0, None, stepping
            try:
                exit_ = vcpu.execute(0)
            finally:
                self._stepping = False
            stop, self._stopped = self._stopped, None
            paused = stop is not None
            if paused:
                counter.resume_block(vcpu.pc)
            else:
                stop, self._pending = self._pending, None
            if stepping:
                self.step_vcpu = None
                self.sync()
            if exit_ is not None:
                if stepping:
                    self._step_report = vcpu.id
                return exit_
            if stop is None and stepping:
                stop = DebugStop(vcpu.id, "step")
            if stop is None:
                return None
            if self._report(stop, at_slice_end=not paused) == "kill":
                return self._killed(vcpu)
            if vcpu.sleeping or not paused:
                return None

    def _stop_before(self, vcpu: DebugVcpu) -> DebugStop | None:
        """A stop due before ``vcpu`` executes anything: attach, a finished step, Ctrl-C."""
        if self._first_stop:
            self._first_stop = False
            return DebugStop(vcpu.id, "attach")
        if self._step_report is not None:
            stepped, self._step_report = self._step_report, None
            return DebugStop(stepped, "step")
        if self._interrupt.is_set():
            return DebugStop(vcpu.id, "interrupt")
        return None

    def _step_outside(self, vcpu_id: int, counted: bool = False) -> Exit | None:
        """Step a vCPU the scheduler did not pick: one instruction outside the schedule
        (``counted``: count-less and stopped by the code hook, as block-counted slices run;
        otherwise by ``count=1``)."""
        other = self.vm.vcpu(vcpu_id)
        if not counted:
            self.step_vcpu = None
        self.sync()
        exit_ = None
        if not other.sleeping:
            self._ran, self._stopped, self._stepping = 0, None, counted
            try:
                exit_ = other.execute(0 if counted else 1)
            finally:
                self._stepping = False
            self._stopped = self._pending = None
        self.step_vcpu = None
        self.sync()
        if exit_ is not None:
            self._step_report = vcpu_id
            return exit_
        if self._report(DebugStop(vcpu_id, "step")) == "kill":
            return self._killed(other)
        return None

    def _report(self, stop: DebugStop, at_slice_end: bool = False) -> Action:
        # Any stop ends the step that was asked for, wherever it happens.
        self.step_vcpu = None
        self._boundary = stop.vcpu if at_slice_end else None
        self._interrupt.clear()
        on_stop = self.on_stop
        if on_stop is None:
            return "continue"
        vcpu = self.vm.vcpu(stop.vcpu)
        pc = vcpu.pc
        with self.vm.limits.hold():
            action = on_stop(stop)
        self._interrupt.clear()
        # Resuming where the stop was executes that instruction: no second stop there.
        if vcpu.pc == pc:
            self._skip_pc = (stop.vcpu, pc)
            self._skip_call = (stop.vcpu, pc) if stop.kind == "hypercall" else None
        else:
            self._skip_pc = self._skip_call = None
        return action

    @staticmethod
    def _killed(vcpu: DebugVcpu) -> StopExit:
        return StopExit(vcpu.id, StopReason.KILLED, "killed by the debugger")

    # -- hooks (on the emulating thread) -------------------------------------------------

    def _on_code(self, uc, address: int, size: int, vcpu: DebugVcpu) -> None:
        self._ran += 1
        stop = self._pending
        if stop is None:
            skip = self._skip_pc
            if skip is not None and skip[0] == vcpu.id:
                self._skip_pc = None
                if skip[1] == address:
                    return
            if self._stepping:
                if self._ran == 1:
                    return  # the instruction to step
                stop = DebugStop(vcpu.id, "step")
            elif address in self.breakpoints:
                stop = DebugStop(vcpu.id, "breakpoint", address)
            elif self._interrupt.is_set():
                stop = DebugStop(vcpu.id, "interrupt")
            else:
                return
        self._pending = None
        self._stopped = stop
        self._ran -= 1  # this instruction has not executed
        uc.emu_stop()

    def _on_memory(self, uc, access: int, address: int, size: int, value: int, data) -> None:
        vcpu, watch = data
        if self._pending is None:
            va = watch.va + max(0, address - watch.pa)
            self._pending = DebugStop(vcpu.id, _WATCH_STOP[watch.kind], va)

    def _hypercall_hook(self, vcpu: DebugVcpu) -> Callable[[str, int, int], bool]:
        def hook(conduit: str, pc: int, fid: int) -> bool:
            return self._on_hypercall(vcpu, conduit, pc, fid)

        return hook

    def _on_hypercall(self, vcpu: DebugVcpu, conduit: str, pc: int, fid: int) -> bool:
        """Consulted by the trap path before the model answers; True: stop here instead."""
        skip, self._skip_call = self._skip_call, None
        if skip == (vcpu.id, pc):
            return False
        wanted = self.break_on_hypercall
        if wanted is None or not wanted(vcpu.id, conduit, fid):
            return False
        vcpu.pc = pc  # back on the HVC/SMC: resuming executes it again, and then it is answered
        self._stopped = DebugStop(vcpu.id, "hypercall", pc)
        self._ran -= 1
        _emu_stop(ctypes.c_void_p(vcpu.uc._uch.value))
        return True


def translate(vcpu: DebugVcpu, va: int, write: bool = False) -> int | None:
    """The physical address ``vcpu``'s current translation gives ``va`` (None: unmapped)."""
    if not vcpu.mmu_enabled:
        return va
    pa = ctypes.c_uint64()
    prot = UC_PROT_WRITE if write else UC_PROT_READ
    handle = ctypes.c_void_p(vcpu.uc._uch.value)
    if _vmem_translate(handle, ctypes.c_uint64(va), ctypes.c_int(prot), ctypes.byref(pa)) != 0:
        return None
    return pa.value
