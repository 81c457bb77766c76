"""The userspace side of a run: a small VMM that builds a VM from a program and drives it.

``Machine`` loads a program the way QEMU's ``-kernel`` does (initrd and a generated or
given DTB placed as QEMU places them, ``emu.fdt``), boots vCPU 0 at the entry point with
x0 = the DTB's address and the others powered off, and calls ``vm.run()`` until the run
stops, answering every ``HypercallExit`` on the way:
PSCI calls forwarded under PSCI_TO_USER go to emu's userspace PSCI (``emu.user_psci``),
everything else to a handler. The default handler answers NOT_SUPPORTED in x0, like a
VMM that implements nothing; ``load_vmm`` loads a user's ``handle_hypercall(vcpu, exit)``
(and optionally ``cpu_on_policy(caller, target)``) from a Python file. SYSTEM_RESET can
reboot the guest: vCPUs re-initialised, image reloaded, the rest of RAM kept.
"""

from __future__ import annotations

import importlib.util
import itertools
import signal
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from emu.abi import smccc
from emu.abi.exits import Exit, HypercallExit, MpState, StopExit, SystemEvent, SystemEventExit
from emu.abi.trace import HypercallEvent, VmEvent
from emu.errors import ImageError, VmmError
from emu.kvm.caps import Cap
from emu.kvm.filter import SmcccFilterAction
from emu.kvm.irqchip import SPI_BASE, kvm_irq
from emu.kvm.limits import RunLimits
from emu.kvm.snapshot import Snapshot, SnapshotError, damaged
from emu.kvm.vcpu import Vcpu
from emu.kvm.vm import Vm
from emu.smccc.call import ServiceVcpu
from emu.smccc.psci import CpuOnPolicy, PsciRet
from emu.vmm.devices import PL011
from emu.vmm.fdt import UART_SPI, BootLayout, layout, machine_dtb, read_dtb
from emu.vmm.loader import Program, Segment
from emu.vmm.user_psci import UserPsci

# The device tree QEMU's virt board builds is a 1 MiB blob; where it must fit, so must ours.
QEMU_DTB_FOOTPRINT = 1 << 20
GIC_CHOICES = ("v3", "v2", "none")
GIC_V2_MAX_VCPUS = 8
# KVM_IRQ_LINE's irq for the PL011: SPI 1 (INTID 33), as on QEMU virt.
UART_IRQ = kvm_irq(SPI_BASE + UART_SPI)

HypercallHandler = Callable[[Vcpu, HypercallExit], "int | Sequence[int] | None"]


def create_gic(vm: Vm, gic: str) -> None:
    """The VMM's KVM_CREATE_DEVICE for ``gic`` ("v3", "v2" or "none")."""
    if gic not in GIC_CHOICES:
        raise VmmError(f"gic must be one of {', '.join(GIC_CHOICES)}, not {gic!r}")
    if gic == "none":
        return
    version = int(gic[1:])
    if version == 2 and len(vm.vcpus) > GIC_V2_MAX_VCPUS:
        raise VmmError(
            f"GICv2 supports at most {GIC_V2_MAX_VCPUS} vCPUs, not {len(vm.vcpus)}: use --gic v3 for more"
        )
    vm.create_gic(version)


def not_supported(vcpu: Vcpu, exit_: HypercallExit) -> int:
    """Default policy: the VMM implements nothing, so x0 = SMCCC NOT_SUPPORTED."""
    return smccc.SmcccRet.NOT_SUPPORTED


@dataclass
class RunResult:
    """Everything a run produced, in order."""

    stop: Exit
    exits: list[Exit] = field(default_factory=list)
    # For each HypercallExit in ``exits``: the x0..x3 the VMM wrote (None: left to handler).
    answers: list[tuple[int, ...] | None] = field(default_factory=list)
    reboots: int = 0


@dataclass
class Vmm:
    """What a ``--vmm`` file provides."""

    handle_hypercall: HypercallHandler = not_supported
    cpu_on_policy: CpuOnPolicy | None = None
    # The VMM's own state for snapshots: ``snapshot()`` returns plain data, ``restore(data)``.
    snapshot: Callable[[], Any] | None = None
    restore: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class BootOptions:
    """What QEMU's ``-append``, ``-initrd`` and ``-dtb`` give, plus the PSCI conduit."""

    bootargs: str = ""
    initrd: bytes | None = None
    dtb: bytes | None = None
    conduit: str = "hvc"
    # The in-kernel interrupt controller the VMM creates: "v3", "v2" or "none".
    gic: str = "v3"


class Machine:
    """A VM booted from ``program``, run by a minimal VMM.

    ``reboots`` is how many SYSTEM_RESETs are honoured by rebooting the guest, over the
    machine's life (a run continued after a budget stop or from a snapshot counts on); the
    next one ends the run.
    """

    def __init__(
        self,
        vm: Vm,
        program: Program | bytes,
        vmm: Vmm | None = None,
        reboots: int = 0,
        boot: BootOptions | None = None,
    ) -> None:
        if not vm.vcpus:
            vm.create_vcpu(0)
        self.vm = vm
        self.options = boot or BootOptions()
        self._create_gic()
        # The console: QEMU virt's PL011, emulated by this VMM, its interrupt on SPI 1.
        self.uart = PL011(irq=self._uart_irq if vm.irqchip is not None else None)
        vm.add_device(self.uart)
        self.vmm = vmm or Vmm()
        self.reboots = reboots
        # Reboots honoured so far, over every run() (a run continued after a stop counts on).
        self.rebooted = 0
        # PSCI reaches userspace under the RFC's PSCI_TO_USER or through a FWD_TO_USER filter.
        policy = self.vmm.cpu_on_policy
        self.user_psci = UserPsci(vm, None if policy is None else _checked_policy(policy))
        # vCPU id -> (entry point, context id) of an honoured SYSTEM_SUSPEND.
        self._resume_points: dict[int, tuple[int, int]] = {}
        self.reload(program)
        # Snapshots of the VM carry what it takes to rebuild this machine (from_snapshot).
        vm.extensions["machine"] = self

    def reload(self, program: Program | bytes) -> None:
        """Check and load ``program``, with its device tree, and boot it on this VM.

        The machine's own boot; again later for a VM that has not run since it was built
        or restored to such a snapshot, the way ``emu fuzz`` boots every case on one
        restored VM instead of building a new one.
        """
        self.program = program if isinstance(program, Program) else Program.flat(program)
        self._check_segments()
        self.dtb, self.layout = self._device_tree()
        self._check_placement()
        self._boot()

    def use_vmm(self, vmm: Vmm) -> None:
        """Answer hypercall exits (and CPU_ON, under PSCI_TO_USER) with ``vmm`` from now on."""
        self.vmm = vmm
        policy = vmm.cpu_on_policy
        self.user_psci.psci.cpu_on_policy = None if policy is None else _checked_policy(policy)

    # -- snapshots ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The machine's configuration (its console is the PL011's own state)."""
        program, options = self.program, self.options
        return {
            "program": {
                "kind": program.kind,
                "name": program.name,
                "entry": program.entry,
                "segments": [[s.address, s.data, s.zero_fill] for s in program.segments],
            },
            "boot": {
                "bootargs": options.bootargs,
                "initrd": options.initrd,
                "dtb": options.dtb,
                "conduit": options.conduit,
                "gic": options.gic,
            },
            "reboots": self.reboots,
            "rebooted": self.rebooted,
            "resume_points": [[v, entry, ctx] for v, (entry, ctx) in sorted(self._resume_points.items())],
            "vmm": _call_user("snapshot", self.vmm.snapshot) if self.vmm.snapshot is not None else None,
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Reboots so far and the VMM's own state, if it keeps any (the configuration is
        fixed at build time)."""
        self.rebooted = data["rebooted"]
        self._resume_points = {v: (entry, ctx) for v, entry, ctx in data["resume_points"]}
        if data.get("vmm") is not None and self.vmm.restore is not None:
            _call_user("restore", self.vmm.restore, data["vmm"])

    @classmethod
    def from_snapshot(cls, snap: Snapshot, vmm: Vmm | None = None, timeout: float | None = None) -> Machine:
        """The machine ``snap`` was taken of, in that state; ``vmm`` answers its hypercall exits."""
        data = snap.state["extensions"].get("machine")
        if data is None:
            raise SnapshotError("the snapshot is of a bare VM, not of a machine booted by emu's VMM")
        described = data["program"]
        program = Program(
            tuple(Segment(a, bytes(d), z) for a, d, z in described["segments"]),
            described["entry"],
            described["kind"],
            described["name"],
        )
        options = data["boot"]
        boot = BootOptions(
            options["bootargs"], options["initrd"], options["dtb"], options["conduit"], options["gic"]
        )
        vm = Vm.for_snapshot(snap, timeout=timeout)
        machine = cls(vm, program, vmm=vmm, reboots=data["reboots"], boot=boot)
        vm.restore(snap)
        return machine

    @classmethod
    def load(cls, path: str | Path, vmm: Vmm | None = None, timeout: float | None = None) -> Machine:
        """The machine saved in ``path`` (``machine.vm.save(path)``)."""
        with damaged(path):
            return cls.from_snapshot(Snapshot.load(path), vmm=vmm, timeout=timeout)

    def _create_gic(self) -> None:
        if self.vm.irqchip is None:
            create_gic(self.vm, self.options.gic)

    def _uart_irq(self, level: bool) -> None:
        self.vm.irq_line(UART_IRQ, level)

    def _device_tree(self) -> tuple[bytes, BootLayout]:
        vm, options = self.vm, self.options
        initrd = options.initrd or b""
        if options.dtb is not None:
            read_dtb(options.dtb)
            dtb = options.dtb
        else:
            dtb = machine_dtb(vm, bootargs=options.bootargs, initrd_size=len(initrd), conduit=options.conduit)
        place = layout(vm.ram_base, vm.ram_size, len(initrd), len(dtb))
        if self.program.kind == "elf":
            # QEMU boots ELF images as bare-metal: x0 = 0, and the DTB goes at the start of
            # RAM only if QEMU's 1 MiB blob fits below the image; otherwise there is none
            # (hw/arm/boot.c arm_setup_direct_kernel_boot and arm_load_dtb's limit).
            fits = self.program.start - vm.ram_base >= QEMU_DTB_FOOTPRINT
            place = BootLayout(
                place.initrd_start, place.initrd_end, vm.ram_base if fits else None, pass_in_x0=False
            )
        return dtb, place

    def _check_segments(self) -> None:
        """The program itself must be in RAM (checked before the boot layout, the lesser cause)."""
        vm, program = self.vm, self.program
        for segment in program.segments:
            if not vm.in_ram(segment.address, segment.end - segment.address):
                raise ImageError(
                    f"{program.name or 'program'}: {segment.end - segment.address:#x} bytes "
                    f"at {segment.address:#x} do not fit in guest RAM "
                    f"[{vm.ram_base:#x}, {vm.ram_base + vm.ram_size:#x})"
                )

    def _check_placement(self) -> None:
        program, place = self.program, self.layout
        if program.end > place.initrd_start:
            raise ImageError(
                f"{program.name or 'program'}: image ends at {program.end:#x}, past the "
                f"initrd/DTB area at {place.initrd_start:#x}; give the VM more memory"
            )

    def _load(self) -> None:
        vm = self.vm
        for segment in self.program.segments:
            vm.write_memory(segment.address, segment.data + bytes(segment.zero_fill))
        if self.options.initrd:
            vm.write_memory(self.layout.initrd_start, self.options.initrd)
        if self.layout.dtb_address is not None:
            vm.write_memory(self.layout.dtb_address, self.dtb)

    def _boot(self) -> None:
        """Load, then vCPU 0 at the entry with x0 = DTB, every other vCPU powered off."""
        self._load()
        boot_cpu = self.vm.vcpus[0]
        for vcpu in self.vm.vcpus:
            vcpu.reset(self.program.entry)
            vcpu.mp_state = MpState.RUNNABLE if vcpu is boot_cpu else MpState.STOPPED
        if not self.vm.trace.initial_power:
            self.vm.trace.initial_power = {v.id: v.power for v in self.vm.vcpus}
        if self.layout.pass_in_x0 and self.layout.dtb_address is not None:
            boot_cpu.set_reg("x0", self.layout.dtb_address)

    def _psci_forwarded(self) -> bool:
        """Can a PSCI call reach userspace? (PSCI_TO_USER, or a FWD_TO_USER range over a
        PSCI id; the filter is frozen once the VM runs.) Saves the check on every exit."""
        vm = self.vm
        if Cap.ARM_PSCI_TO_USER in vm.caps:
            return True
        psci_ranges = ((0x8400_0000, 0x8400_001F), (0xC400_0000, 0xC400_001F), (0x95C1_BA5E, 0x95C1_BA61))
        return any(
            action == SmcccFilterAction.FWD_TO_USER and start <= hi and lo <= end
            for start, end, action in vm.smccc_filter.user_ranges
            for lo, hi in psci_ranges
        )

    @property
    def console(self) -> bytes:
        """Everything the guest wrote to its UART."""
        return bytes(self.uart.output)

    def reboot(self) -> None:
        """What a VMM does on SYSTEM_RESET: reload the images and re-initialise the vCPUs."""
        if self.vm.irqchip is not None:
            self.vm.irqchip.reset()
        self.uart.reset()
        self._boot()

    def run(self, on_events: Callable[[list[HypercallEvent]], None] | None = None) -> RunResult:
        """Run to a stop, answering hypercall exits; ``on_events`` streams hypercall events.

        The VM's timeout also bounds the VMM's own code (``handle_hypercall``,
        ``cpu_on_policy``): one that is still running at the deadline is interrupted and
        the run stops as a timeout.
        """
        with _UserCode(self.vm.limits) as user_code:
            return self._run(on_events, user_code)

    def _run(
        self, on_events: Callable[[list[HypercallEvent]], None] | None, user_code: _UserCode
    ) -> RunResult:
        vm = self.vm
        events = vm.hypercalls
        seen = len(events)
        result = RunResult(stop=None)  # type: ignore[arg-type]
        user_psci = self.user_psci if self._psci_forwarded() else None
        handler = self.vmm.handle_hypercall
        while True:
            exit_ = vm.run()
            if exit_.__class__ is HypercallExit:
                result.exits.append(exit_)
                vcpu = vm.vcpu(exit_.vcpu)
                answer: tuple[int, ...] | None
                stop: Exit | None
                try:
                    if user_psci is not None and user_psci.handles(exit_):
                        answer, stop = None, user_code.call(user_psci.handle, vcpu, exit_)
                    else:
                        answer, stop = user_code.call(_apply, handler, vcpu, exit_), None
                except _VmmTimeout:
                    answer, stop = (
                        None,
                        StopExit(exit_.vcpu, *vm.limits.timeout_stop(" in the VMM's handler")),
                    )
                result.answers.append(answer)
                _record_answer(events, vcpu, answer)
                if on_events is not None:
                    on_events(events[seen:])
                    seen = len(events)
                if stop is None:
                    continue
                exit_ = stop
            if on_events is not None and len(events) > seen:
                on_events(events[seen:])
                seen = len(events)
            trace = vm.trace
            if isinstance(exit_, SystemEventExit):
                result.exits.append(exit_)
                trace.add(VmEvent(vm.clock.ns, exit_.vcpu, "system_event", exit_.type.name))
                if exit_.type == SystemEvent.SUSPEND:
                    answer = system_suspend(vm.vcpu(exit_.vcpu), self._resume_points)
                    _record_answer(events, vm.vcpu(exit_.vcpu), answer)
                    continue
                if exit_.type == SystemEvent.WAKEUP and exit_.vcpu in self._resume_points:
                    # Resume from SYSTEM_SUSPEND as from CPU_ON (DEN0022D.b 5.19.1).
                    vcpu = vm.vcpu(exit_.vcpu)
                    entry, context = self._resume_points.pop(exit_.vcpu)
                    vcpu.reset(entry, context, vcpu.is_big_endian())
                    vcpu.mp_state = MpState.RUNNABLE
                    continue
                if exit_.type == SystemEvent.RESET and self.rebooted < self.reboots:
                    result.reboots += 1
                    self.rebooted += 1
                    trace.add(VmEvent(vm.clock.ns, None, "reboot", f"reboot {self.rebooted}"))
                    self.reboot()
                    continue
            result.stop = exit_
            trace.add(VmEvent(vm.clock.ns, getattr(exit_, "vcpu", None), "stop", exit_.describe()))
            return result


def system_suspend(vcpu: Vcpu, resume_points: dict[int, tuple[int, int]]) -> tuple[int, ...] | None:
    """The VMM's side of PSCI SYSTEM_SUSPEND (KVM_SYSTEM_EVENT_SUSPEND, api.rst).

    KVM leaves it all to userspace (ref 4.4). As DEN0022D.b 5.19.2 requires, the call is
    DENIED while any other vCPU is not OFF. Otherwise it is honoured the way api.rst
    suggests: the caller goes to KVM_MP_STATE_SUSPENDED (WFI in the kernel); on the WAKEUP
    exit it resumes at the entry point (x1) with x0 = context id (x2) and CPU_ON's reset
    state. Returns what was written to x0 (None when honoured).
    """
    vm = vcpu.vm
    if any(v is not vcpu and v.mp_state != MpState.STOPPED for v in vm.vcpus):
        vcpu.complete_hypercall(smccc.u64(PsciRet.DENIED))
        return (smccc.u64(PsciRet.DENIED),)
    resume_points[vcpu.id] = (vcpu.get_reg("x1"), vcpu.get_reg("x2"))
    vcpu.mp_state = MpState.SUSPENDED
    return None


class _VmmTimeout(BaseException):
    """The run's deadline passed while the VMM's own code was running."""


class _UserCode:
    """Runs the VMM's Python code under the run's deadline.

    For the length of a run a SIGALRM is armed at the deadline (main thread only, and
    only if nobody else handles SIGALRM); it interrupts user code that is running then,
    even in ``time.sleep``. Code entered after the deadline is not started at all.
    """

    def __init__(self, limits: RunLimits) -> None:
        self.limits = limits
        self.active = False
        self.expired = False
        self._previous: object = None
        self._armed = False

    def __enter__(self) -> _UserCode:
        remaining = self.limits.remaining()
        if remaining is None or threading.current_thread() is not threading.main_thread():
            return self
        if signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            return self  # someone else uses SIGALRM; deadlines are then checked between calls
        self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-6))
        self._armed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)  # type: ignore[arg-type]
            self._armed = False

    def _on_alarm(self, signum: int, frame: object) -> None:
        remaining = self.limits.remaining()
        if remaining is not None and remaining > 0:
            # The deadline moved (time held in a debugger does not count): wait on.
            signal.setitimer(signal.ITIMER_REAL, remaining)
            return
        self.expired = True
        if self.active:
            raise _VmmTimeout

    def call(self, function: Callable[..., _T], *args: object) -> _T:
        remaining = self.limits.remaining()
        if self.expired or (remaining is not None and remaining <= 0):
            raise _VmmTimeout
        self.active = True
        try:
            if self.expired:
                raise _VmmTimeout
            return function(*args)
        finally:
            self.active = False


_T = TypeVar("_T")
_RETURNS = "handle_hypercall must return None, an int or up to four ints for x0..x3"


def _user_error(what: str, err: BaseException) -> VmmError:
    """The user's code failed (or called sys.exit): one line saying where and how."""
    if isinstance(err, SystemExit):
        return VmmError(f"{_where(err)}{what} called sys.exit({err.code!r})")
    return VmmError(f"{_where(err)}{what} raised {type(err).__name__}: {err}")


def _call_user(what: str, function: Callable[..., _T], *args: Any) -> _T:
    """A --vmm hook other than the hypercall handler; its failure is a ``VmmError``."""
    try:
        return function(*args)
    except (Exception, SystemExit) as err:  # the user's code: report where it failed, in one line
        raise _user_error(what, err) from err


def _apply(handler: HypercallHandler, vcpu: Vcpu, exit_: HypercallExit) -> tuple[int, ...] | None:
    try:
        returned = handler(vcpu, exit_)
    except (Exception, SystemExit) as err:  # the user's code: report where it failed, in one line
        raise _user_error("handle_hypercall", err) from err
    if returned is None:
        return None
    if returned.__class__ is int or isinstance(returned, int):
        values: tuple[int, ...] = (returned & smccc.MASK64,)
    elif isinstance(returned, (str, bytes, bytearray, dict)) or not hasattr(returned, "__iter__"):
        raise VmmError(f"{_RETURNS}, not {_shown(returned)}")
    else:
        try:
            # At most five items: enough to tell "too many" without draining a generator.
            values = tuple(itertools.islice(returned, 5))
        except (Exception, SystemExit) as err:
            raise _user_error("handle_hypercall's result", err) from err
        if not 1 <= len(values) <= 4 or not all(isinstance(v, int) for v in values):
            raise VmmError(f"{_RETURNS}, not {_shown(returned)}")
        values = tuple(v & smccc.MASK64 for v in values)
    vcpu.regs.write_x(values)
    return values


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _checked_policy(policy: CpuOnPolicy) -> CpuOnPolicy:
    """The user's ``cpu_on_policy``, its failures and bad verdicts reported as VmmError."""

    def checked(caller: ServiceVcpu, target: ServiceVcpu | None) -> int | None:
        try:
            verdict = policy(caller, target)
        except (Exception, SystemExit) as err:
            raise _user_error("cpu_on_policy", err) from err
        if verdict is not None and not isinstance(verdict, int):
            raise VmmError(f"cpu_on_policy must return None or a PSCI return code, not {_shown(verdict)}")
        return verdict

    return checked


def _record_answer(events: list[HypercallEvent], vcpu: Vcpu, answer: tuple[int, ...] | None) -> None:
    """The exited call's result is what the guest will see in x0 on resume."""
    event = events[-1] if events else None
    if event is None or event.vcpu != vcpu.id:
        event = next((e for e in reversed(events) if e.vcpu == vcpu.id), None)
    if event is not None and event.exit is not None:
        event.result = answer[0] if answer is not None else vcpu.get_reg("x0")


def _where(err: BaseException, path: Path | None = None) -> str:
    """``file:line: `` of the user's code that failed: a syntax error's own location, else
    the innermost frame in ``path`` (or the innermost frame outside emu and importlib)."""
    if isinstance(err, SyntaxError) and err.filename:
        return f"{Path(err.filename).name}:{err.lineno}: "
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith("<frozen")]
    if path is not None:
        frames = [f for f in frames if Path(f.filename).resolve() == path.resolve()] or frames
    if not frames:
        return ""
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno}: "


def load_vmm(path: str | Path) -> Vmm:
    """Load ``handle_hypercall(vcpu, exit)`` and, optionally, ``cpu_on_policy(caller, target)``."""
    module = _load_module(Path(path))
    handler = getattr(module, "handle_hypercall", None)
    policy = getattr(module, "cpu_on_policy", None)
    take, restore = getattr(module, "snapshot", None), getattr(module, "restore", None)
    if handler is None and policy is None:
        raise VmmError(
            f"--vmm {path}: defines neither handle_hypercall(vcpu, exit) nor cpu_on_policy(caller, target)"
        )
    hooks = (
        ("handle_hypercall", handler),
        ("cpu_on_policy", policy),
        ("snapshot", take),
        ("restore", restore),
    )
    for name, value in hooks:
        if value is not None and not callable(value):
            raise VmmError(f"--vmm {path}: {name} is not callable")
    if (take is None) != (restore is None):
        raise VmmError(f"--vmm {path}: defines one of snapshot() and restore(state) but not the other")
    return Vmm(handler or not_supported, policy, take, restore)


def _load_module(path: Path) -> ModuleType:
    if path.is_dir():
        raise VmmError(f"--vmm {path}: is a directory, not a Python file")
    if not path.is_file():
        raise VmmError(f"--vmm {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"emu_vmm_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise VmmError(f"--vmm {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SystemExit as err:
        raise VmmError(
            f"--vmm {path}: {_where(err, path)}called sys.exit({err.code!r}) while loading"
        ) from err
    except Exception as err:
        raise VmmError(f"--vmm {path}: {_where(err, path)}{type(err).__name__}: {_message(err)}") from err
    return module


def _message(err: BaseException) -> str:
    if isinstance(err, SyntaxError):
        return err.msg
    return str(err)
