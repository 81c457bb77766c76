"""One fuzzed hypercall: the guest program that makes it, running it, and KVM's rules for it.

A ``Case`` is one call: profile, capabilities, conduit (HVC/SMC), immediate and x0..x17.
``run_case`` turns it into a guest program (``movz/movk`` for every register, the HVC or
SMC, then ``brk #0`` to mark "the call returned"), boots it the way ``emu run`` does and
records the ``Outcome``: how the run stopped, x0..x17 afterwards, the exits the VMM saw.
``expect`` says what the case must produce, rule by rule from the KVM reference (the
section numbers in the ``why`` strings), using the profile's own data: its function switch,
EL2 fast path, SMC and routing strategies, PSCI version and capabilities. ``check_case``
compares the two and also runs the case a second time (same inputs, same outcome).

``emu.tools.fuzz`` drives Hypothesis over campaigns of cases. A failure comes back shrunk
to a minimal case, and ``reproducer`` writes it as an assembly program that checks the violated rules in the
guest: ``emu run`` on it prints ``fuzz: FAIL`` and stops with status 3 while the model
answers wrongly, ``fuzz: PASS`` and SYSTEM_OFF (status 0) once it is right.
"""

from __future__ import annotations

import struct
import traceback
from dataclasses import dataclass
from typing import Any

from emu.abi import smccc
from emu.abi.exits import FaultExit, HypercallExit, StopExit, SystemEventExit
from emu.errors import EmuError
from emu.kvm import profiles as kvm_profiles
from emu.kvm.caps import Cap
from emu.kvm.profiles import Profile, get_profile
from emu.kvm.vcpu import reset_mpidr
from emu.kvm.vm import LOAD_ADDR, Vm
from emu.smccc import psci, trng, vendor_hyp
from emu.tools.campaign import Booted, drop_warm, warm
from emu.vmm.machine import Machine, Vmm

M32 = smccc.MASK32
M64 = smccc.MASK64
NREGS = 18  # x0..x17: what SMCCC v1.1+ lets a call use for arguments and results
FUZZ_MEM = 16 << 20
FUZZ_CPUS = 4
RUN_TIMEOUT_S = 5.0
# The guest's "the call returned" marker and its reproducer's verdicts.
BRK_RETURNED = 0
BRK_FAIL = 0xBAD

UART = 0x0900_0000

# KVM_SMCCC_FILTER_* actions (ref 6.2) and the ranges no filter can touch.
FILTER_HANDLE, FILTER_DENY, FILTER_FWD = 0, 1, 2
_ACTIONS = {FILTER_HANDLE: "handle", FILTER_DENY: "deny", FILTER_FWD: "fwd-to-user"}
FILTER_RESERVED = ((0x8000_0000, 0x8000_FFFF), (0xC000_0000, 0xC000_FFFF))

# The bitmap gate (v5.19+, ref 3.3): which register bit lets each call through.
BITMAP_GATES = {
    smccc.TRNG_VERSION: ("STD_BMAP", 0),
    smccc.TRNG_FEATURES: ("STD_BMAP", 0),
    smccc.TRNG_GET_UUID: ("STD_BMAP", 0),
    smccc.TRNG_RND32: ("STD_BMAP", 0),
    smccc.TRNG_RND64: ("STD_BMAP", 0),
    smccc.PV_TIME_FEATURES: ("STD_HYP_BMAP", 0),
    smccc.PV_TIME_ST: ("STD_HYP_BMAP", 0),
    smccc.VENDOR_HYP_KVM_FEATURES: ("VENDOR_HYP_BMAP", 0),
    smccc.VENDOR_HYP_CALL_UID: ("VENDOR_HYP_BMAP", 0),
    smccc.VENDOR_HYP_KVM_PTP: ("VENDOR_HYP_BMAP", 1),
}
# Their reset values: every bit KVM supports (ref 7).
BITMAP_DEFAULTS = {"STD_BMAP": 0b1, "STD_HYP_BMAP": 0b1, "VENDOR_HYP_BMAP": 0b11}


# -- a case and what it produced ------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One hypercall: everything the guest and the VM are set up with."""

    profile: str
    conduit: str  # "hvc" or "smc"
    imm: int
    regs: tuple[int, ...]  # x0..x17
    caps: tuple[str, ...] = ()  # Cap names, enabled in this order
    cpus: int = FUZZ_CPUS
    # SMCCC filter ranges (base, nr_functions, action), for profiles that have the filter.
    filters: tuple[tuple[int, int, int], ...] = ()
    # Firmware bitmap registers set before the run (name, value), for profiles with the gate.
    fw_regs: tuple[tuple[str, int], ...] = ()

    @property
    def fid(self) -> int:
        return self.regs[0] & M32

    def describe(self) -> str:
        from emu.smccc.decode import describe_call

        caps = f" caps={','.join(self.caps)}" if self.caps else ""
        caps += "".join(f" filter={b:#x}:{n:#x}:{_ACTIONS[a]}" for b, n, a in self.filters)
        caps += "".join(f" {name}={value:#x}" for name, value in self.fw_regs)
        return f"{self.conduit} #{self.imm:#x} {describe_call(self.fid, self.regs)} on {self.profile}{caps}"


@dataclass(frozen=True)
class Outcome:
    """What a case did: ``stop`` is ``returned``, ``system_event TYPE``, ``idle``, or else
    a description of an unexpected stop or a host exception."""

    stop: str
    regs: tuple[int, ...]
    exits: tuple[tuple[Any, ...], ...]
    calls: int
    event: tuple[int, int, tuple[int, ...]] | None = None  # system event (type, ndata, data)


# -- the guest program ---------------------------------------------------------------------


def _movz(rd: int, imm16: int, hw: int) -> int:
    return 0xD280_0000 | hw << 21 | (imm16 & 0xFFFF) << 5 | rd


def _movk(rd: int, imm16: int, hw: int) -> int:
    return 0xF280_0000 | hw << 21 | (imm16 & 0xFFFF) << 5 | rd


def call_insn(conduit: str, imm: int) -> int:
    """A64 ``HVC #imm`` / ``SMC #imm``."""
    return (0xD400_0002 if conduit == "hvc" else 0xD400_0003) | (imm & 0xFFFF) << 5


def _brk(imm: int) -> int:
    return 0xD420_0000 | (imm & 0xFFFF) << 5


def _set_reg_lines(rd: int, value: int) -> list[tuple[int, str]]:
    out = [(_movz(rd, value & 0xFFFF, 0), f"movz x{rd}, #{value & 0xFFFF:#x}")]
    for hw in (1, 2, 3):
        chunk = (value >> (16 * hw)) & 0xFFFF
        out.append((_movk(rd, chunk, hw), f"movk x{rd}, #{chunk:#x}, lsl #{16 * hw}"))
    return out


def program_lines(case: Case) -> list[tuple[int, str]]:
    """The fuzzed guest as (encoding, assembly) pairs: load x0..x17, the call, ``brk #0``."""
    lines: list[tuple[int, str]] = []
    for rd, value in enumerate(case.regs):
        lines += _set_reg_lines(rd, value)
    lines.append((call_insn(case.conduit, case.imm), f"{case.conduit} #{case.imm:#x}"))
    # vCPUs the call powers on start here (``PARK``): they wait, as secondaries do.
    lines += [(0x1400_0003, "b returned"), (0xD503_207F, "park: wfi"), (0x17FF_FFFF, "b park")]
    lines.append((_brk(BRK_RETURNED), f"returned: brk #{BRK_RETURNED}"))
    return lines


def program_bytes(case: Case) -> bytes:
    return b"".join(struct.pack("<I", word) for word, _ in program_lines(case))


PARK = LOAD_ADDR + 4 * (4 * NREGS + 2)
RETURNED_PC = PARK + 8


# -- running a case ------------------------------------------------------------------------


def make_vm(case: Case) -> Vm:
    """A new VM set up for ``case``: its profile, vCPUs, capabilities, filter and registers."""
    vm = Vm(get_profile(case.profile), cpus=case.cpus, mem_size=FUZZ_MEM, timeout=RUN_TIMEOUT_S)
    configure(vm, case)
    return vm


def configure(vm: Vm, case: Case) -> None:
    """Set up a VM that has not run yet for ``case``: capabilities, firmware registers, filter."""
    for name in case.caps:
        vm.enable_cap(Cap[name])
    if case.fw_regs:
        from emu.kvm.one_reg import parse_reg_name

        for name, value in case.fw_regs:
            vm.vcpus[0].set_one_reg(parse_reg_name(name), value)
    if case.filters:
        set_filter = getattr(vm, "set_smccc_filter", None)
        if set_filter is None:
            raise OracleError(f"profile {case.profile}: this VM has no SMCCC filter")
        for base, nr, action in case.filters:
            set_filter(base, nr, action)


# Every case's program has the same size, so one booted machine can load any of them.
_PROGRAM_SIZE = RETURNED_PC + 4 - LOAD_ADDR


def _fresh_machine(case: Case, vmm: Vmm | None) -> Machine:
    vm = make_vm(case)
    try:
        return Machine(vm, program_bytes(case), vmm=vmm)
    except BaseException:
        vm.close()
        raise


def _booted_fuzz_machine(profile: str, cpus: int) -> Booted:
    vm = Vm(get_profile(profile), cpus=cpus, mem_size=FUZZ_MEM, timeout=RUN_TIMEOUT_S)
    return Booted.of(Machine(vm, bytes(_PROGRAM_SIZE)))


def _restored_machine(case: Case, vmm: Vmm | None) -> Machine:
    """This process's fuzzing machine, restored, configured for ``case`` and its program
    loaded: the state a new ``make_vm`` + ``Machine`` would have, for a fraction of the
    cost (no Unicorn engines or vCPUs to create); ``tests/test_fuzz.py`` checks the
    outcomes are equal."""
    booted = warm(f"fuzz:{case.profile}:{case.cpus}", lambda: _booted_fuzz_machine(case.profile, case.cpus))
    machine = booted.machine
    assert machine is not None
    configure(booted.fresh(), case)
    machine.reload(program_bytes(case))
    machine.use_vmm(vmm or Vmm())
    return machine


def run_case(case: Case, vmm: Vmm | None = None, restore: bool = True) -> Outcome:
    """Boot the case's program as ``emu run`` would and record what happened.

    ``vmm`` answers the exits (default: emu's, NOT_SUPPORTED for every forwarded call);
    a VMM author passes their own ``Vmm(handle_hypercall)`` to fuzz it. With ``restore``
    the case runs on this process's booted fuzzing VM, restored to before its first run;
    without, on a VM built for it alone.
    """
    try:
        machine = (_restored_machine if restore else _fresh_machine)(case, vmm)
    except Exception as err:
        if restore:
            drop_warm()  # whatever failed half-way must not carry over into the next case
        return Outcome(f"host exception creating the VM: {type(err).__name__}: {err}", (), (), 0)
    vm = machine.vm
    try:
        result = machine.run()
        stop = result.stop
        regs = tuple(vm.vcpus[0].get_reg(f"x{i}") for i in range(NREGS))
        exits = tuple(
            ("hypercall", e.vcpu, e.nr, tuple(e.args), e.flags)
            for e in result.exits
            if isinstance(e, HypercallExit)
        )
        event = None
        if isinstance(stop, FaultExit) and stop.pc == RETURNED_PC and stop.vcpu == 0:
            how = "returned"
        elif isinstance(stop, SystemEventExit):
            how = f"system_event {stop.type.name}"
            event = (int(stop.type), stop.ndata, tuple(stop.data))
        elif isinstance(stop, StopExit) and stop.reason.value == "idle":
            how = "idle"
        else:
            how = f"unexpected stop: {stop.describe()}"
        return Outcome(how, regs, exits, len(vm.hypercalls), event)
    except Exception as err:
        if restore:
            drop_warm()
        where = traceback.extract_tb(err.__traceback__)[-1]
        return Outcome(
            f"host exception: {type(err).__name__}: {err} (at {where.filename}:{where.lineno})", (), (), 0
        )
    finally:
        if not restore:
            vm.close()


# -- what KVM answers: the oracle ----------------------------------------------------------


@dataclass(frozen=True)
class Reg:
    """A rule for one register after the call: ``eq`` one value, ``in`` a set, ``bits`` below 2**n."""

    kind: str
    values: tuple[int, ...] = ()

    def holds(self, value: int) -> bool:
        if self.kind in ("eq", "in"):
            return value in self.values
        if self.kind == "bits":
            return value >> self.values[0] == 0
        return True

    def describe(self) -> str:
        if self.kind == "eq":
            return f"= {self.values[0]:#x}"
        if self.kind == "in":
            return "in {" + ", ".join(f"{v:#x}" for v in self.values) + "}"
        if self.kind == "bits":
            return f"< 2**{self.values[0]}"
        return "any"


def eq(value: int) -> Reg:
    return Reg("eq", (value & M64,))


def one_of(*values: int) -> Reg:
    return Reg("in", tuple(sorted({v & M64 for v in values})))


def bits(n: int) -> Reg:
    return Reg("bits", (max(0, n),))


ANY = Reg("any")


@dataclass(frozen=True)
class Expect:
    """What a case must do: how the run stops, the rule for each of x0..x17, the exits."""

    stop: str
    regs: dict[int, Reg]
    why: str
    exits: tuple[tuple[Any, ...], ...] = ()
    event: tuple[int, int, tuple[int, ...]] | None = None


class OracleError(EmuError):
    """The profile does something the fuzzer has no rule for (a new strategy)."""


_SUCCESS, _NOT_SUPPORTED = 0, smccc.u64(-1)


class _Oracle:
    def __init__(self, case: Case) -> None:
        self.case = case
        self.p: Profile = get_profile(case.profile)
        self.x = case.regs
        self.caps = {Cap[name] for name in case.caps}
        self.fid = case.fid

    def untouched(self) -> dict[int, Reg]:
        return {i: eq(v) for i, v in enumerate(self.x)}

    def ret(
        self,
        why: str,
        x0: Reg,
        x1: Reg | None = None,
        x2: Reg | None = None,
        x3: Reg | None = None,
        *,
        stop: str = "returned",
        event: Any = None,
    ) -> Expect:
        """x0..x3 as given (None: zero), x4..x17 untouched (ref 3.1 step 6)."""
        regs = self.untouched()
        regs[0] = x0
        for i, rule in ((1, x1), (2, x2), (3, x3)):
            regs[i] = eq(0) if rule is None else rule
        return Expect(stop, regs, why, event=event)

    def keep_x1_x3(self, why: str, x0: Reg) -> Expect:
        regs = self.untouched()
        regs[0] = x0
        return Expect("returned", regs, why)

    def not_supported(self, why: str) -> Expect:
        return self.ret(why, eq(_NOT_SUPPORTED))

    # -- the pipeline ------------------------------------------------------------------------

    def expect(self) -> Expect:
        p, case = self.p, self.case
        if case.conduit == "smc":
            strategy = p.handle_smc
            if strategy is kvm_profiles.smc_not_dispatched:
                return self.keep_x1_x3(
                    "SMC from EL1 is never dispatched: x0 = -1, PC + 4 (ref 1.6, 1.8)", eq(M64)
                )
            if strategy is getattr(kvm_profiles, "smc_dispatched", None):
                if case.imm:
                    return self.keep_x1_x3("SMC with a nonzero immediate: x0 = -1 (ref 1.6 step 3)", eq(M64))
                return self.dispatch(fast_path=False)
            raise OracleError(f"profile {p.name}: no fuzz rule for its SMC strategy {strategy.__name__}")
        return self.dispatch(fast_path=True)

    def dispatch(self, fast_path: bool) -> Expect:
        p, fid = self.p, self.fid
        if fast_path and fid in p.hvc_fast_path:
            regs = self.untouched()
            regs[0], regs[1] = eq(0), eq(0)
            return Expect("returned", regs, "ARCH_WORKAROUND on the EL2 fast path: x0 = x1 = 0 (ref 1.4)")
        if self.case.filters:
            action = self.filter_action(fid)
            if action == FILTER_DENY:
                return self.not_supported("SMCCC filter DENY: x0 = -1, x1..x3 = 0 (ref 3.1 step 4)")
            if action == FILTER_FWD:
                return self.forwarded()
        gate = BITMAP_GATES.get(fid)
        if gate is not None and getattr(p, "bitmap_gate", False) and not self.bitmap(gate[0]) >> gate[1] & 1:
            return self.not_supported(f"{gate[0]} bit {gate[1]} cleared: the bitmap gate denies it (ref 3.3)")
        if fid in p.handlers:
            return self.function()
        route = p.route_unhandled
        if route is kvm_profiles.rfc_route:
            return self.rfc_route()
        if route is getattr(kvm_profiles, "upstream_route", None):
            if self.is_psci(fid):
                return self.psci()
            return self.not_supported("unhandled call: NOT_SUPPORTED, x1..x3 = 0 (ref 3.1 step 4)")
        raise OracleError(f"profile {p.name}: no fuzz rule for its routing strategy {route.__name__}")

    def bitmap(self, name: str) -> int:
        return dict(self.case.fw_regs).get(name, BITMAP_DEFAULTS[name])

    def filter_action(self, fid: int) -> int:
        """The filter's action for ``fid``: the Arm Architecture ranges always HANDLE (ref 6.2)."""
        if any(lo <= fid <= hi for lo, hi in FILTER_RESERVED):
            return FILTER_HANDLE
        for base, nr, action in self.case.filters:
            if base <= fid < base + nr:
                return action
        return FILTER_HANDLE

    def forwarded(self) -> Expect:
        """FWD_TO_USER: KVM_EXIT_HYPERCALL nr = fid, args zeroed, flags = SMC (ref 5.4); emu's
        VMM answers PSCI ids with its userspace PSCI, anything else x0 = NOT_SUPPORTED."""
        flags = 1 if self.case.conduit == "smc" else 0
        exit_ = ("hypercall", 0, self.fid, (0,) * 6, flags)
        why = "SMCCC filter FWD_TO_USER (ref 5.4)"
        if self.is_psci(self.fid):
            inner = self.psci()
            return Expect(inner.stop, inner.regs, f"{why}, then {inner.why}", (exit_,), inner.event)
        return Expect("returned", {**self.untouched(), 0: eq(_NOT_SUPPORTED)}, why, (exit_,))

    def is_psci(self, fid: int) -> bool:
        """KVM's 0.1 ids, or Standard Secure fn 0..psci_fn_last, fast, either convention (ref 3.5)."""
        if psci.KVM_PSCI_FN_BASE <= fid <= psci.KVM_PSCI_MIGRATE:
            return True
        return any(base <= fid <= base + self.p.psci_fn_last for base in (0x8400_0000, 0xC400_0000))

    def rfc_route(self) -> Expect:
        fid, x, case = self.fid, self.x, self.case
        exit_ = ("hypercall", 0, case.imm, tuple(x[:6]), 0)  # RFC 4/5: nr = imm, args = x0..x5 (ref 5.3)
        if self.is_psci(fid):
            features_of_version = fid == psci.PSCI_FEATURES and x[1] == smccc.SMCCC_VERSION
            expect = self.psci()
            if Cap.ARM_PSCI_TO_USER in self.caps and not features_of_version:
                # Forwarded, and emu's userspace PSCI answers as the kernel would.
                return Expect(
                    expect.stop,
                    expect.regs,
                    f"PSCI_TO_USER: forwarded, then {expect.why}",
                    (exit_,),
                    expect.event,
                )
            return expect
        if Cap.ARM_HVC_TO_USER in self.caps:
            # The default VMM answers x0 = NOT_SUPPORTED and writes nothing else.
            return Expect(
                "returned",
                {**self.untouched(), 0: eq(_NOT_SUPPORTED)},
                "HVC_TO_USER: KVM_EXIT_HYPERCALL nr = imm, args = x0..x5, registers untouched (ref 5.3)",
                (exit_,),
            )
        return self.not_supported("unhandled without HVC_TO_USER: x0 = -1, x1..x3 = 0 (ref 5.3)")

    # -- the explicit function switch (ref 3.2) ---------------------------------------------

    def function(self) -> Expect:
        fid, x, p = self.fid, self.x, self.p
        arg1_32 = x[1] & M32
        if fid == smccc.SMCCC_VERSION:
            return self.ret("SMCCC_VERSION (ref 3.2)", eq(p.smccc_version))
        if fid == smccc.SMCCC_ARCH_FEATURES:
            return self.arch_features(arg1_32)
        if fid == smccc.PV_TIME_FEATURES or fid == smccc.PV_TIME_ST:
            return self.not_supported("PV time without a stolen-time IPA: -1 (ref 3.2)")
        if fid == smccc.VENDOR_HYP_CALL_UID:
            return self.ret("vendor-hyp CALL_UID (ref 2.6)", *map(eq, smccc.KVM_UID_WORDS))
        if fid == smccc.VENDOR_HYP_KVM_FEATURES:
            if getattr(p, "bitmap_gate", False):
                return self.ret("KVM FEATURES: VENDOR_HYP_BMAP (ref 3.2)", eq(self.bitmap("VENDOR_HYP_BMAP")))
            return self.ret("KVM FEATURES: FEATURES | PTP (ref 2.6)", eq(vendor_hyp.KVM_FEATURES_BITMAP))
        if fid == smccc.VENDOR_HYP_KVM_PTP:
            if arg1_32 in (vendor_hyp.KVM_PTP_VIRT_COUNTER, vendor_hyp.KVM_PTP_PHYS_COUNTER):
                return self.ret(
                    "PTP_KVM: four 32-bit halves (ref 3.2)", bits(32), bits(32), bits(32), bits(32)
                )
            return self.not_supported("PTP_KVM with an unknown counter: -1 (ref 3.2)")
        if fid == smccc.TRNG_VERSION:
            return self.ret("TRNG_VERSION 1.0 (ref 3.2)", eq(trng.TRNG_VERSION_1_0))
        if fid == smccc.TRNG_FEATURES:
            ids = (
                smccc.TRNG_VERSION,
                smccc.TRNG_FEATURES,
                smccc.TRNG_GET_UUID,
                smccc.TRNG_RND32,
                smccc.TRNG_RND64,
            )
            return self.ret(
                "TRNG_FEATURES of the five TRNG ids (ref 3.2)", eq(0 if x[1] in ids else _NOT_SUPPORTED)
            )
        if fid == smccc.TRNG_GET_UUID:
            return self.ret("TRNG_GET_UUID (ref 3.2)", *map(eq, trng.TRNG_UUID_WORDS))
        if fid in (smccc.TRNG_RND32, smccc.TRNG_RND64):
            size = 32 if fid == smccc.TRNG_RND32 else 64
            n = arg1_32
            if n > 3 * size:
                return self.ret(
                    "TRNG_RND with N > 3 * width: INVALID_PARAMETER (ref 3.2)",
                    eq(trng.TRNG_INVALID_PARAMETER),
                )
            # x3 holds the lowest `size` bits, x2 the next, x1 the highest; bits >= N are zero.
            return self.ret(
                f"TRNG_RND{size}({n}): entropy below bit N (ref 3.2)",
                eq(0),
                bits(min(size, n - 2 * size)),
                bits(min(size, n - size)),
                bits(min(size, n)),
            )
        raise OracleError(f"profile {p.name}: no fuzz rule for {smccc.name_of(fid)} in its function switch")

    def arch_features(self, feature: int) -> Expect:
        p = self.p
        why = f"SMCCC_ARCH_FEATURES({smccc.name_of(feature)}) (ref 3.4)"
        workaround = one_of(0, smccc.SMCCC_ARCH_WORKAROUND_RET_UNAFFECTED, _NOT_SUPPORTED)
        if feature == smccc.SMCCC_ARCH_WORKAROUND_1:
            return self.ret(why, workaround)
        if feature == smccc.SMCCC_ARCH_WORKAROUND_2:
            return self.ret(why, one_of(smccc.SmcccRet.NOT_REQUIRED, _NOT_SUPPORTED))
        if feature == smccc.SMCCC_ARCH_WORKAROUND_3 and p.has_workaround_3:
            return self.ret(why, workaround)
        if feature == smccc.PV_TIME_FEATURES and p.has_pvtime:
            # Since the 5.19 bitmaps only while STD_HYP_BMAP's PV_TIME bit is set.
            gated = getattr(p, "bitmap_gate", False) and not self.bitmap("STD_HYP_BMAP") & 1
            return self.ret(why, eq(_NOT_SUPPORTED if gated else 0))
        return self.not_supported(why)

    # -- PSCI (ref 4.3, 4.4) ---------------------------------------------------------------------

    def psci(self) -> Expect:
        fid, p = self.fid, self.p
        ver = p.psci_default_version  # every fuzzed vCPU has KVM_ARM_VCPU_PSCI_0_2
        minor = ver & 0xFFFF if ver >= psci.PSCI_1_0 else None
        x = list(self.x)
        narrow = fid in (psci.CPU_ON, psci.AFFINITY_INFO, psci.SYSTEM_RESET2, psci.SYSTEM_SUSPEND)
        if narrow:  # SMC32: x1..x3 narrowed in place (ref 4.5)
            x[1:4] = [v & M32 for v in x[1:4]]
        name = smccc.name_of(fid)
        why = f"{name} under PSCI {ver >> 16}.{ver & 0xFFFF} (ref 4.3, 4.4)"
        if fid == psci.PSCI_VERSION:
            return self.ret(why, eq(ver))
        if fid in (psci.CPU_SUSPEND, psci.CPU_SUSPEND64):
            return self.ret(why + ": WFI with no timer armed", eq(0), stop="idle")
        if fid == psci.CPU_OFF:
            return self.ret(why + ": the only running vCPU goes off", eq(0), stop="idle")
        if fid in (psci.CPU_ON, psci.CPU_ON64):
            return self.ret(why, eq(self.cpu_on(x[1])))
        if fid in (psci.AFFINITY_INFO, psci.AFFINITY_INFO64):
            return self.ret(why, eq(self.affinity_info(x[1], x[2])))
        if fid == psci.MIGRATE_INFO_TYPE:
            return self.ret(why, eq(psci.PSCI_0_2_TOS_MP))
        if fid in (psci.SYSTEM_OFF, psci.SYSTEM_RESET):
            kind = "SHUTDOWN" if fid == psci.SYSTEM_OFF else "RESET"
            ndata = 1 if p.system_event_has_ndata else 0
            return self.ret(
                why + ": x0 preloaded with INTERNAL_FAILURE",
                eq(psci.PsciRet.INTERNAL_FAILURE),
                stop=f"system_event {kind}",
                event=(1 if kind == "SHUTDOWN" else 2, ndata, (0,)),
            )
        if minor is not None and fid == psci.PSCI_FEATURES:
            return self.ret(
                f"PSCI_FEATURES({smccc.name_of(x[1] & M32)}) " + why, self.features(x[1] & M32, minor)
            )
        if minor is not None and minor >= 1 and fid in (psci.SYSTEM_RESET2, psci.SYSTEM_RESET2_64):
            reset_type = x[1] & M32
            if reset_type == 0 or reset_type >= 0x8000_0000:
                regs = {**self.untouched(), 0: eq(psci.PsciRet.INTERNAL_FAILURE)}
                regs.update({i: eq(x[i]) for i in (1, 2, 3)})
                return Expect(
                    "system_event RESET", regs, why + ": only x0 preloaded (ref 8.4)", event=(2, 1, (1,))
                )
            return self.ret(why, eq(psci.PsciRet.INVALID_PARAMS))
        if (
            minor is not None
            and fid
            in (
                psci.SYSTEM_SUSPEND,
                psci.SYSTEM_SUSPEND64,
                psci.SYSTEM_OFF2,
                psci.SYSTEM_OFF2_64,
            )
            and self._suspend_or_off2_supported(fid, minor)
        ):
            # An exit whose handling is the VMM's (ref 5.5): only that the host survives is checked.
            return Expect("any", dict.fromkeys(range(NREGS), ANY), why + " (VMM policy, not checked)")
        return self.not_supported(why + ": not implemented")

    def _suspend_or_off2_supported(self, fid: int, minor: int) -> bool:
        if fid in (psci.SYSTEM_OFF2, psci.SYSTEM_OFF2_64):
            return minor >= 3
        return any(c.name == "ARM_SYSTEM_SUSPEND" for c in self.caps)

    def features(self, feature: int, minor: int) -> Reg:
        supported = {
            psci.PSCI_VERSION,
            psci.CPU_SUSPEND,
            psci.CPU_SUSPEND64,
            psci.CPU_OFF,
            psci.CPU_ON,
            psci.CPU_ON64,
            psci.AFFINITY_INFO,
            psci.AFFINITY_INFO64,
            psci.MIGRATE_INFO_TYPE,
            psci.SYSTEM_OFF,
            psci.SYSTEM_RESET,
            psci.PSCI_FEATURES,
            smccc.SMCCC_VERSION,
        }
        if minor >= 1:
            supported |= {psci.SYSTEM_RESET2, psci.SYSTEM_RESET2_64}
        if any(c.name == "ARM_SYSTEM_SUSPEND" for c in self.caps):
            supported |= {psci.SYSTEM_SUSPEND, psci.SYSTEM_SUSPEND64}
        if minor >= 3 and feature in (psci.SYSTEM_OFF2, psci.SYSTEM_OFF2_64):
            return one_of(0, 1)  # a bitmap of supported off types (HIBERNATE_OFF = bit 0)
        return eq(0 if feature in supported else _NOT_SUPPORTED)

    def _affinity(self, value: int) -> int | None:
        if value & ~psci.MPIDR_HWID_BITMASK and self.p.psci_reject_reserved_affinity:
            return None
        return value & psci.MPIDR_HWID_BITMASK

    def cpu_on(self, target: int) -> int:
        aff = self._affinity(target)
        if aff is None:
            return smccc.u64(psci.PsciRet.INVALID_PARAMS)
        for i in range(self.case.cpus):
            if reset_mpidr(i) & psci.MPIDR_HWID_BITMASK == aff:
                # vCPU 0 runs the case; the others start powered off.
                return smccc.u64(psci.PsciRet.ALREADY_ON if i == 0 else psci.PsciRet.SUCCESS)
        return smccc.u64(psci.PsciRet.INVALID_PARAMS)

    def affinity_info(self, target: int, level: int) -> int:
        if level > 3:
            return smccc.u64(psci.PsciRet.INVALID_PARAMS)
        aff = self._affinity(target)
        if aff is None:
            return smccc.u64(psci.PsciRet.INVALID_PARAMS)
        mask = psci.MPIDR_HWID_BITMASK & ~((1 << (8 * level)) - 1)
        matched = [i for i in range(self.case.cpus) if reset_mpidr(i) & mask == aff & mask]
        if not matched:
            return smccc.u64(psci.PsciRet.INVALID_PARAMS)
        return psci.AffinityState.ON if 0 in matched else psci.AffinityState.OFF


def expect(case: Case) -> Expect:
    """What KVM under ``case.profile`` must do with this call."""
    return _Oracle(case).expect()


# -- checking ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One broken rule: ``reg`` is the register it concerns (None: the stop or the exits)."""

    rule: str
    reg: int | None = None
    expected: Reg | None = None

    def __str__(self) -> str:
        return self.rule


def violations(case: Case, outcome: Outcome, exp: Expect | None = None) -> list[Violation]:
    exp = exp or expect(case)
    out: list[Violation] = []
    if outcome.stop.startswith("host exception"):
        return [Violation(outcome.stop)]
    if exp.stop == "any":
        return out
    if outcome.stop != exp.stop:
        out.append(Violation(f"stop: expected {exp.stop}, got {outcome.stop} ({exp.why})"))
    if outcome.calls != 1:
        out.append(Violation(f"expected exactly one trapped call, the trace has {outcome.calls}"))
    if exp.event is not None and outcome.event is not None and outcome.event != exp.event:
        out.append(Violation(f"system event (type, ndata, data): expected {exp.event}, got {outcome.event}"))
    if outcome.exits != exp.exits:
        out.append(
            Violation(f"exits to the VMM: expected {list(exp.exits)}, got {list(outcome.exits)} ({exp.why})")
        )
    if outcome.regs:
        for i in range(NREGS):
            rule = exp.regs[i]
            if not rule.holds(outcome.regs[i]):
                out.append(
                    Violation(f"x{i} = {outcome.regs[i]:#x}, expected {rule.describe()} ({exp.why})", i, rule)
                )
    return out


def check_case(case: Case, determinism: bool = True, restore: bool = True) -> list[Violation]:
    """Every invariant for one case: the oracle's rules, then same inputs => same outcome."""
    outcome = run_case(case, restore=restore)
    found = violations(case, outcome)
    if not found and determinism:
        again = run_case(case, restore=restore)
        if again != outcome:
            found.append(Violation(f"not deterministic: first {outcome}, then {again}"))
    return found


# -- the reproducer ------------------------------------------------------------------------


def _print_lines(label: str, text: str) -> list[str]:
    lines = [
        f"    adr x19, {label}",
        "    movz x20, #0x0900, lsl #16",
        f"{label}_loop:",
        "    ldrb w21, [x19], #1",
        f"    cbz w21, {label}_done",
        "    strb w21, [x20]",
        f"    b {label}_loop",
        f"{label}_done:",
    ]
    return lines


def reproducer(case: Case, found: list[Violation]) -> str:
    """The case as an assembly program that checks the violated register rules in the guest."""
    exp = expect(case)
    head = [
        "// Minimal failing case found by `emu fuzz`.",
        f"// {case.describe()}",
        f"// Run: {' '.join(reproduce_command(case, '<this file>'))}",
        "// Prints `fuzz: PASS` and powers off (status 0) when the model follows the rules below,",
        "// `fuzz: FAIL` and stops at `brk #0xbad` (status 3) while it does not.",
        f"// Rule: {exp.why}",
    ]
    head += [f"// Violated: {v}" for v in found]
    body = [f"    {text}" for _, text in program_lines(case)[:-1]] + ["returned:"]
    checks: list[str] = []
    regs = sorted({v.reg for v in found if v.reg is not None})
    if exp.stop == "returned" and not regs:
        # It should have come back: check every register rule once it does.
        regs = [i for i in range(NREGS) if exp.regs[i].kind != "any"]
    if exp.stop != "returned":
        checks.append("    b fail")  # the call should not have come back at all
    for n, i in enumerate(regs if exp.stop == "returned" else []):
        rule = exp.regs[i]
        if rule.kind == "bits":
            checks += [
                f"    lsr x18, x{i}, #{rule.values[0]}" if rule.values[0] < 64 else "    mov x18, #0",
                "    cbnz x18, fail",
            ]
        else:
            for value in rule.values:
                checks += [f"    {t}" for _, t in _set_reg_lines(18, value)]
                checks += [f"    cmp x{i}, x18", f"    b.eq ok{n}"]
            checks += ["    b fail", f"ok{n}:"]
    tail = [
        *_print_lines("pass_msg", ""),
        "    movz x0, #0x8400, lsl #16",
        "    movk x0, #0x8",
        "    hvc #0",
        "fail:",
        *_print_lines("fail_msg", ""),
        f"    brk #{BRK_FAIL:#x}",
        "pass_msg:",
        '    .asciz "fuzz: PASS\\n"',
        "fail_msg:",
        '    .asciz "fuzz: FAIL\\n"',
    ]
    return "\n".join([*head, "", *body, *checks, *tail, ""])


def reproduce_command(case: Case, path: str) -> list[str]:
    cmd = [
        "emu",
        "run",
        path,
        "--profile",
        case.profile,
        "--cpus",
        str(case.cpus),
        "--mem",
        f"{FUZZ_MEM >> 20}M",
    ]
    for name in case.caps:
        cmd += ["--cap", Cap[name].flag_name]
    for base, nr, action in case.filters:
        cmd += ["--smccc-filter", f"{base:#x}:{nr:#x}:{_ACTIONS[action]}"]
    for name, value in case.fw_regs:
        cmd += ["--set-reg", f"{name}={value:#x}"]
    return cmd
