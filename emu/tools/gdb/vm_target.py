"""The gdb stub's :class:`~emu.tools.gdb.target.Target` for a real VM, through ``emu.kvm.debug``.

Two threads: the run loop (``vm.run()``, e.g. the ``emu run`` VMM) on the caller's, and the
gdb session on its own. A debug stop calls :meth:`VmTarget._on_stop` on the run thread,
which hands the stop to the session and waits, so every register and memory access the
session makes happens while no vCPU is inside Unicorn. :meth:`resume` lets the run thread
go and waits for its next stop, or for :meth:`finish` when the run is over.

Breakpoints and watchpoints are emu-side (``GuestDebug``): ``Z0`` and ``Z1`` are the same
thing here, and guest memory is never patched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from unicorn import arm64_const as a64

from emu.abi import smccc
from emu.abi.exits import MpState
from emu.errors import EmuError
from emu.kvm import vm as vm_module
from emu.kvm.debug import Action, DebugStop, GuestDebug, translate
from emu.kvm.vcpu import Vcpu
from emu.kvm.vm import Vm
from emu.tools.gdb.server import GdbServer, Outcome
from emu.tools.gdb.target import BreakpointKind, StopEvent, StopReason
from emu.tools.gdb.target_xml import REGISTERS
from emu.tools.report import event_line

_PAGE = 0x1000
_POLL_S = 0.02

_REG_IDS: list[int] = (
    [getattr(a64, f"UC_ARM64_REG_X{i}") for i in range(29)]
    + [a64.UC_ARM64_REG_X29, a64.UC_ARM64_REG_X30, a64.UC_ARM64_REG_SP, a64.UC_ARM64_REG_PC]
    + [a64.UC_ARM64_REG_PSTATE]
    + [getattr(a64, f"UC_ARM64_REG_Q{i}") for i in range(32)]
    + [a64.UC_ARM64_REG_FPSR, a64.UC_ARM64_REG_FPCR]
)
assert len(_REG_IDS) == len(REGISTERS)

_STOP_REASON: dict[str, StopReason] = {
    "breakpoint": "breakpoint",
    "watch": "watch",
    "rwatch": "rwatch",
    "awatch": "awatch",
    "step": "step",
    "interrupt": "interrupt",
}

#: What ``monitor break-on psci NAME`` matches: the PSCI function ids, SMC32 and SMC64.
_CONDUITS = ("hvc", "smc", "psci")


def _function_key(name: str) -> str:
    name = name.upper()
    for prefix in ("PSCI_", "KVM_PSCI_"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name[:-2] if name.endswith("64") else name


class HypercallBreaks:
    """The ``monitor break-on`` rules: conduit (or any PSCI call) and function name or id."""

    def __init__(self) -> None:
        self.rules: list[tuple[str, str]] = []

    def add(self, conduit: str, function: str) -> None:
        if conduit not in _CONDUITS:
            raise EmuError(f"break-on: conduit must be hvc, smc or psci, not {conduit!r}")
        self.rules.append((conduit, function))

    def matches(self, vcpu: int, conduit: str, fid: int) -> bool:
        name = smccc.name_of(fid)
        for want_conduit, function in self.rules:
            if want_conduit == "psci":
                if not name.startswith(("PSCI_", "KVM_PSCI_")):
                    continue
            elif want_conduit != conduit:
                continue
            try:
                if int(function, 0) == fid:
                    return True
            except ValueError:
                if _function_key(function) == _function_key(name):
                    return True
        return False


class VmTarget:
    """Serve ``vm`` to one gdb; see the module docstring for the threads involved."""

    def __init__(self, vm: Vm, *, wait: bool = False) -> None:
        self.vm = vm
        self.breaks = HypercallBreaks()
        self.debug = GuestDebug(vm, self._on_stop, stop_at_start=wait)
        self._cond = threading.Condition()
        self._stop: DebugStop | None = None  # the stop the run thread is parked on
        self._action: Action | None = None  # what the session told it
        self._final: StopEvent | None = None  # the run is over
        self._detached = False
        self._hw: set[int] = set()  # Z1 addresses (reported as hwbreak), and Z0 ones
        self._hw_not: set[int] = set()
        self.connected = False  # a session has started (it asks for the threads first)
        self.outcome: Outcome | None = None

    # -- the run thread ------------------------------------------------------------------

    def _on_stop(self, stop: DebugStop) -> Action:
        with self._cond:
            if self._detached:
                return "continue"
            self._stop, self._action = stop, None
            self._cond.notify_all()
            while self._action is None:
                self._cond.wait()
            action, self._stop = self._action, None
            return action

    def finish(self, exit_status: int) -> None:
        """The run is over (the VM will not run again): a waiting ``resume`` returns ``exited``."""
        with self._cond:
            self._final = StopEvent(0, "exited", exit_status=exit_status)
            self._cond.notify_all()

    # -- session side: stopping ------------------------------------------------------------

    def _halt(self) -> None:
        """Make sure the run thread is parked (it runs until gdb first looks at it)."""
        with self._cond:
            if self._stop is not None or self._final is not None:
                return
        while True:
            self.debug.request_stop()
            with self._cond:
                if self._cond.wait_for(lambda: self._stop is not None or self._final is not None, 0.2):
                    return

    def _vcpu(self, tid: int) -> Vcpu:
        self._halt()
        return self.vm.vcpu(tid)

    # -- Target ----------------------------------------------------------------------------

    def threads(self) -> list[int]:
        self.connected = True
        return [v.id for v in self.vm.vcpus]

    def thread_info(self, tid: int) -> str:
        vcpu = self._vcpu(tid)
        power = vcpu.power.value
        if vcpu.mp_state == MpState.STOPPED:
            power += " (cannot be resumed)"
        return f"vCPU {tid}, MPIDR {vcpu.mpidr:#x}, {power}"

    def read_registers(self, tid: int) -> list[int]:
        uc = self._vcpu(tid).uc
        return [uc.reg_read(reg) for reg in _REG_IDS]

    def write_register(self, tid: int, regnum: int, value: int) -> None:
        vcpu = self._vcpu(tid)
        reg = _REG_IDS[regnum]
        if reg == a64.UC_ARM64_REG_PC:
            vcpu.pc = value
        else:
            vcpu.uc.reg_write(reg, value)

    def read_memory(self, tid: int, va: int, length: int) -> bytes | None:
        vcpu = self._vcpu(tid)
        out = bytearray()
        while length > 0:
            chunk = min(length, _PAGE - (va % _PAGE))
            pa = translate(vcpu, va)
            if pa is None or not self.vm.in_ram(pa, chunk):
                break
            out += self.vm.read_memory(pa, chunk)
            va, length = va + chunk, length - chunk
        return bytes(out) if out else None

    def write_memory(self, tid: int, va: int, data: bytes) -> bool:
        vcpu = self._vcpu(tid)
        pieces = []
        offset = 0
        while offset < len(data):
            chunk = min(len(data) - offset, _PAGE - ((va + offset) % _PAGE))
            pa = translate(vcpu, va + offset, write=True)
            if pa is None or not self.vm.in_ram(pa, chunk):
                return False
            pieces.append((pa, data[offset : offset + chunk]))
            offset += chunk
        for pa, piece in pieces:
            self.vm.write_memory(pa, piece)
        return True

    def add_breakpoint(self, kind: BreakpointKind, addr: int, length: int) -> bool:
        self._halt()
        if kind == "sw" or kind == "hw":
            self.debug.add_breakpoint(addr)
            (self._hw if kind == "hw" else self._hw_not).add(addr)
            return True
        return self.debug.add_watchpoint(kind, addr, length, self._stopped_vcpu())

    def remove_breakpoint(self, kind: BreakpointKind, addr: int, length: int) -> bool:
        self._halt()
        if kind == "sw" or kind == "hw":
            (self._hw if kind == "hw" else self._hw_not).discard(addr)
            if addr in self._hw or addr in self._hw_not:
                return True  # the other kind is still set there
            return self.debug.remove_breakpoint(addr)
        return self.debug.remove_watchpoint(kind, addr, length)

    def _stopped_vcpu(self) -> Vcpu:
        stop = self._stop
        return self.vm.vcpu(stop.vcpu if stop is not None else 0)

    def resume(self, step_tid: int | None, interrupt: threading.Event) -> StopEvent:
        self._halt()
        with self._cond:
            if self._final is not None:
                return self._final
            if step_tid is not None:
                vcpu = self.vm.vcpu(step_tid)
                if vcpu.sleeping:
                    # Powered off or waiting: it cannot execute an instruction now.
                    return StopEvent(step_tid, "signal", signal=5)
                self.debug.step_vcpu = step_tid
                self.debug.sync()
            self._action = "continue"
            self._stop = None
            self._cond.notify_all()
            while True:
                if self._final is not None:
                    return self._final
                if self._stop is not None:
                    return self._event(self._stop)
                if interrupt.is_set():
                    self._cond.release()
                    try:
                        self.debug.request_stop()
                    finally:
                        self._cond.acquire()
                    interrupt.clear()
                self._cond.wait(_POLL_S)

    def _event(self, stop: DebugStop) -> StopEvent:
        if stop.kind in ("hypercall", "attach"):
            return StopEvent(stop.vcpu, "signal", signal=5)  # SIGTRAP, no breakpoint of gdb's
        if stop.kind == "breakpoint" and stop.address in self._hw and stop.address not in self._hw_not:
            return StopEvent(stop.vcpu, "hw-breakpoint", stop.address)
        return StopEvent(stop.vcpu, _STOP_REASON[stop.kind], stop.address)

    def monitor(self, command: str) -> str:
        self._halt()
        words = command.split()
        if not words:
            return _MONITOR_HELP
        name, args = words[0], words[1:]
        handler = _MONITOR.get(name)
        if handler is None:
            return f"unknown monitor command {name!r}\n" + _MONITOR_HELP
        return handler(self, args)

    def kill(self) -> None:
        with self._cond:
            self._detached = True
            self.debug.detach()
            self._action = "kill"
            self._cond.notify_all()

    def detach(self) -> None:
        with self._cond:
            self._detached = True
            self.debug.detach()
            self._action = "continue"
            self._cond.notify_all()

    # -- monitor commands --------------------------------------------------------------------

    def _mon_hypercalls(self, args: list[str]) -> str:
        try:
            count = int(args[0]) if args else 10
        except ValueError:
            raise EmuError(f"usage: monitor hypercalls [N], not {' '.join(args)!r}") from None
        events = self.vm.hypercalls[-count:] if count > 0 else []
        if not events:
            return "no hypercalls yet\n"
        return "".join(f"{event.pc:#x} {event_line(event, with_vcpu=True)}\n" for event in events)

    def _mon_psci(self, args: list[str]) -> str:
        lines = [
            f"vCPU {v.id}: MPIDR {v.mpidr:#x}, {v.power.value}, mp_state {v.mp_state.name}"
            for v in self.vm.vcpus
        ]
        lines.append(f"PSCI version {self.vm.psci_version >> 16}.{self.vm.psci_version & 0xFFFF}")
        return "\n".join(lines) + "\n"

    def _mon_profile(self, args: list[str]) -> str:
        profile = self.vm.profile
        caps = ", ".join(c.flag_name for c in self.vm.enabled_caps) or "none"
        psci = self.vm.psci_version
        return (
            f"profile {profile.name}: {profile.summary}\n"
            f"SMCCC {profile.smccc_version >> 16}.{profile.smccc_version & 0xFFFF}, "
            f"PSCI {psci >> 16}.{psci & 0xFFFF}, caps enabled: {caps}\n"
        )

    def _mon_break_on(self, args: list[str]) -> str:
        if not args:
            if not self.breaks.rules:
                return "no hypercall breaks\n"
            return "".join(f"break-on {c} {f}\n" for c, f in self.breaks.rules)
        if args == ["clear"]:
            self.breaks.rules.clear()
            self.debug.break_on_hypercall = None
            self.debug.sync()
            return "hypercall breaks cleared\n"
        if len(args) != 2:
            raise EmuError("usage: monitor break-on hvc|smc|psci FUNCTION  (or: break-on clear)")
        self.breaks.add(args[0].lower(), args[1])
        self.debug.break_on_hypercall = self.breaks.matches
        self.debug.sync()
        return f"will stop before the model answers {args[0].lower()} {args[1]}\n"


_MONITOR: dict[str, Callable[[VmTarget, list[str]], str]] = {
    "hypercalls": VmTarget._mon_hypercalls,
    "psci": VmTarget._mon_psci,
    "profile": VmTarget._mon_profile,
    "break-on": VmTarget._mon_break_on,
}

_MONITOR_HELP = """\
monitor hypercalls [N]                 the last N trapped HVC/SMC calls, decoded
monitor psci                           every vCPU's power state
monitor profile                        the modelled kernel and enabled caps
monitor break-on hvc|smc|psci FUNCTION stop when a matching call traps, before it is answered
monitor break-on [clear]               list (or drop) those breaks
"""


class GdbHandle:
    """A VM served to gdb: the listening stub, its session thread, and the target."""

    def __init__(self, vm: Vm, host: str, port: int, *, wait: bool, timeout: float | None) -> None:
        self.target = VmTarget(vm, wait=wait)
        self.server = GdbServer(self.target, host, port, timeout=timeout)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, name="emu-gdb", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def host(self) -> str:
        return self.server.host

    def _serve(self) -> None:
        try:
            self.target.outcome = self.server.serve()
        except OSError:
            pass  # the listener was closed before anyone connected
        except BaseException as err:
            self.errors.append(err)
        finally:
            if self.target.outcome is None:
                self.target.detach()

    def finish(self, exit_status: int, timeout: float | None = 5.0) -> None:
        """The run is over: tell gdb (``W``), and wait a little for the session to end."""
        self.target.finish(exit_status)
        if not self.target.connected:
            self.server.close()  # nobody came: stop listening instead of waiting
        self.thread.join(timeout)

    def close(self) -> None:
        self.server.close()


def serve_gdb(
    vm: Any, port: int = 0, host: str = "127.0.0.1", *, wait: bool = True, timeout: float | None = None
) -> GdbHandle:
    """Attach a gdb stub to ``vm`` on ``host:port``; with ``wait`` the first run stops at once."""
    return GdbHandle(vm, host, port, wait=wait, timeout=timeout)


def register() -> None:
    """Make ``Vm.serve_gdb`` available (the KVM layer cannot import the tools)."""
    vm_module.gdb_front_end = serve_gdb
