"""What ``Vcpu.run()`` returns: one immutable dataclass per kind of exit.

KVM exits (``HypercallExit``, ``SystemEventExit``) carry the fields of the matching
``struct kvm_run`` union member with the same names. ``FaultExit`` and ``StopExit`` are
emu's own: a guest fault emu cannot deliver yet, and the run limits (instruction budget,
wall-clock timeout) or a vCPU that nothing can wake.

After a ``HypercallExit`` the VMM writes its answer into the guest registers, e.g. with
``vcpu.complete_hypercall(x0, x1, x2, x3)``, and calls ``run()`` again; the guest resumes
right after the trapping instruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

from emu import rendering
from emu.abi import smccc


class _Displayed:
    """Notebook and IPython display for exits: the decoded repr."""

    def _repr_html_(self) -> str:
        return rendering.html(self)

    def _repr_pretty_(self, printer: rendering.PrettyPrinter, cycle: bool) -> None:
        printer.text(repr(self))


class ExitReason(IntEnum):
    """``kvm_run.exit_reason`` values used on arm64 (include/uapi/linux/kvm.h)."""

    HYPERCALL = 3
    SYSTEM_EVENT = 24


class SystemEvent(IntEnum):
    """``kvm_run.system_event.type`` (ref 5.5)."""

    SHUTDOWN = 1
    RESET = 2
    CRASH = 3
    WAKEUP = 4
    SUSPEND = 5


class MpState(IntEnum):
    """``KVM_MP_STATE_*`` used on arm64 (HALTED only with the RFC's MP_HALTED cap)."""

    RUNNABLE = 0
    HALTED = 3
    STOPPED = 5
    SUSPENDED = 10


class Wait(str, Enum):
    """Why a runnable vCPU is blocked until an interrupt (kvm_vcpu_wfi / kvm_vcpu_halt)."""

    WFI = "wfi"
    CPU_SUSPEND = "cpu_suspend"
    HALTED = "halted"  # userspace asked for in-kernel WFI (RFC KVM_MP_STATE_HALTED)


class Power(str, Enum):
    """A vCPU's power state as PSCI and a timeline see it (derived from mp_state and WFI)."""

    ON = "on"
    OFF = "off"
    SUSPENDED = "suspended"
    HALTED = "halted"


# kvm_run.hypercall.flags bits (v6.4+, ref 5.4).
KVM_HYPERCALL_EXIT_SMC = 1 << 0
KVM_HYPERCALL_EXIT_16BIT = 1 << 1


@dataclass(frozen=True)
class HypercallExit(_Displayed):
    """Corresponds to KVM_EXIT_HYPERCALL (``kvm_run.hypercall``).

    ``nr`` is what the profile puts there: the HVC immediate in the 2021 RFC, the SMCCC
    function id upstream. ``args`` are x0..x5 at the trap (the RFC copies them; upstream
    zeroes them). ``flags`` bit 0 says the conduit was SMC.
    """

    vcpu: int
    nr: int
    args: tuple[int, int, int, int, int, int]
    ret: int = 0
    flags: int = 0

    reason = ExitReason.HYPERCALL

    def __init__(self, vcpu: int, nr: int, args: tuple[int, ...], ret: int = 0, flags: int = 0) -> None:
        # Built once per userspace exit: filling __dict__ directly is twice as fast as the
        # frozen dataclass's five object.__setattr__ calls, and the instance stays frozen.
        d = self.__dict__
        d["vcpu"] = vcpu
        d["nr"] = nr
        d["args"] = args
        d["ret"] = ret
        d["flags"] = flags

    @property
    def fid(self) -> int:
        """The SMCCC function id the guest passed in w0."""
        return self.args[0] & smccc.MASK32

    @property
    def is_smc(self) -> bool:
        return bool(self.flags & KVM_HYPERCALL_EXIT_SMC)

    def describe(self) -> str:
        return f"hypercall exit nr={self.nr:#x} ({smccc.name_of(self.fid)})"

    def __repr__(self) -> str:
        args = ", ".join(hex(a) for a in self.args)
        conduit = "smc" if self.is_smc else "hvc"
        return (
            f"HypercallExit(vcpu={self.vcpu}, nr={self.nr:#x}, fid={self.fid:#x} "
            f"{smccc.name_of(self.fid)}, args=({args}), flags={self.flags:#x} [{conduit}])"
        )


@dataclass(frozen=True)
class SystemEventExit(_Displayed):
    """Corresponds to KVM_EXIT_SYSTEM_EVENT (``kvm_run.system_event``).

    ``data`` holds ``ndata`` valid items; ``flags`` is the legacy alias of ``data[0]``.
    """

    vcpu: int
    type: SystemEvent
    ndata: int = 0
    data: tuple[int, ...] = ()

    reason = ExitReason.SYSTEM_EVENT

    @property
    def flags(self) -> int:
        return self.data[0] if self.data else 0

    def describe(self) -> str:
        return f"system event {self.type.name}"

    def __repr__(self) -> str:
        return (
            f"SystemEventExit(vcpu={self.vcpu}, type={self.type.name}, ndata={self.ndata}, "
            f"data=[{', '.join(hex(d) for d in self.data)}])"
        )


@dataclass(frozen=True)
class FaultExit(_Displayed):
    """The guest took an exception that emu does not deliver to it (or touched no memory).

    ``pc`` is the faulting instruction, ``insn`` its disassembly, ``cause`` a short
    description, ``address`` the faulting address for memory faults.
    """

    vcpu: int
    pc: int
    insn: str
    cause: str
    address: int | None = None

    reason = "fault"

    def describe(self) -> str:
        where = f" at {self.address:#x}" if self.address is not None else ""
        return f"guest fault on vCPU {self.vcpu}: {self.cause}{where}, pc={self.pc:#x} ({self.insn})"


class StopReason(str, Enum):
    """Why a run ended without a KVM exit."""

    BUDGET = "budget"
    TIMEOUT = "timeout"
    IDLE = "idle"
    KILLED = "killed"  # a debugger ended the run


@dataclass(frozen=True)
class StopExit(_Displayed):
    """The run limits were reached, or every vCPU is waiting for something that cannot come.

    ``vcpu`` is the vCPU that was running or about to run (None when the whole VM is idle).
    """

    vcpu: int | None
    reason: StopReason
    detail: str

    def describe(self) -> str:
        return self.detail


Exit = HypercallExit | SystemEventExit | FaultExit | StopExit


def exit_to_json(exit_: Exit) -> dict[str, Any]:
    """A KVM exit as the JSON the CLI prints (and traces store)."""
    if isinstance(exit_, HypercallExit):
        return {
            "vcpu": exit_.vcpu,
            "reason": "hypercall",
            "nr": exit_.nr,
            "args": list(exit_.args),
            "ret": exit_.ret,
            "flags": exit_.flags,
        }
    if isinstance(exit_, SystemEventExit):
        return {
            "vcpu": exit_.vcpu,
            "reason": "system_event",
            "type": int(exit_.type),
            "type_name": exit_.type.name,
            "ndata": exit_.ndata,
            "data": list(exit_.data),
        }
    raise TypeError(f"not a KVM exit: {exit_!r}")


def exit_from_json(d: dict[str, Any]) -> Exit:
    if d["reason"] == "hypercall":
        return HypercallExit(d["vcpu"], d["nr"], tuple(d["args"]), d["ret"], d["flags"])
    if d["reason"] == "system_event":
        return SystemEventExit(d["vcpu"], SystemEvent(d["type"]), d["ndata"], tuple(d["data"]))
    raise ValueError(f"not a KVM exit: {d!r}")
