"""Modelled kernels, as data plus a few strategy hooks.

Each profile is a mainline ``.0`` release; stable backports are not modelled.

A ``Profile`` names everything that differs between the kernels emu models: versions it
advertises, the explicit function switch, what happens to SMC, where unhandled calls go,
PSCI policy details and the capabilities it offers. ``KvmModel`` runs the same pipeline
for every profile.

``rfc-2021``: Linux v5.13 plus the RFC series "KVM: arm64: Pass hypercalls to userspace"
(J-P Brucker, June 2021; patches 3/5 MP_HALTED, 4/5 HVC_TO_USER, 5/5 PSCI_TO_USER).
``linux-5.15``, ``linux-6.1``, ``linux-6.6``, ``linux-6.13``: mainline (reference section 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from emu.abi import smccc
from emu.abi.exits import Exit, HypercallExit, MpState, SystemEvent, SystemEventExit
from emu.kvm import one_reg
from emu.kvm.caps import Cap
from emu.kvm.filter import SmcccFilter
from emu.smccc import arch as smccc_arch
from emu.smccc import psci, pvtime, trng, vendor_hyp
from emu.smccc.call import Call, ServiceVm
from emu.smccc.psci import Psci


class ModelVm(ServiceVm, Protocol):
    """The VM as the KVM model sees it: the services' view plus the enabled caps."""

    caps: set[Cap]
    smccc_filter: SmcccFilter
    fw_bitmaps: one_reg.FirmwareBitmaps

    @property
    def profile(self) -> Profile: ...


class Dispatcher(Protocol):
    """The KVM model's building blocks a profile's strategies combine (``emu.kvm_model``)."""

    vm: ModelVm
    profile: Profile
    psci: Psci

    def deny(self, call: Call) -> None: ...

    def exit_hypercall(self, call: Call, nr: int, args: tuple[int, ...]) -> HypercallExit: ...

    def smccc_call(self, call: Call) -> Exit | None: ...


Handler = Callable[[Call], None]
Strategy = Callable[[Dispatcher, Call], "Exit | None"]


@dataclass(frozen=True)
class Profile:
    """One modelled kernel: data the pipeline consults plus two strategy hooks."""

    name: str
    summary: str
    smccc_version: int
    psci_default_version: int
    # PSCI versions KVM_REG_ARM_PSCI_VERSION accepts for vCPUs with KVM_ARM_VCPU_PSCI_0_2.
    psci_versions: tuple[int, ...]
    # W0 values answered by the EL2 vector for HVC (hyp-entry.S, ref 1.4).
    hvc_fast_path: frozenset[int]
    # Explicit cases of the C function switch.
    handlers: dict[int, Handler]
    # Highest Standard Secure function number routed to PSCI (DEN0028 gives PSCI 0x00-0x1F).
    psci_fn_last: int
    # v5.15+: CPU_ON/AFFINITY_INFO reject affinity values with reserved bits set.
    psci_reject_reserved_affinity: bool
    # v5.18+ KVM_CAP_SYSTEM_EVENT_DATA: system_event.ndata is filled in.
    system_event_has_ndata: bool
    has_workaround_3: bool
    has_pvtime: bool
    # The number this kernel gives each capability it knows (ref 6.1), and what
    # check_extension() answers; enable_cap() accepts these where they are enableable.
    cap_numbers: dict[Cap, int]
    caps: dict[Cap, int]
    enableable_caps: frozenset[Cap]
    # States KVM_SET_MP_STATE accepts.
    settable_mp_states: tuple[MpState, ...]
    handle_smc: Strategy
    route_unhandled: Strategy
    # v6.4+: the SMCCC filter VM attribute (ref 6.2).
    smccc_filter: bool = False
    # v5.19+: calls outside the default-allowed set need their bit in a bitmap register (ref 3.3).
    bitmap_gate: bool = False
    # ONE_REG firmware registers this kernel has (ref 7).
    firmware_regs: tuple[int, ...] = one_reg.FW_REGS_5_13
    # v6.4+: handle_hvc/handle_smc return handler errors from KVM_RUN instead of x0 = -1.
    hvc_errors_to_user: bool = False
    # Before v5.15 a CPU_ON target was reset on its next KVM_RUN, not at once.
    cpu_on_reset_at_run: bool = False

    def system_event_exit(self, vcpu_id: int, kind: SystemEvent, flags: int = 0) -> SystemEventExit:
        """The system_event union as this kernel fills it for OFF/RESET (ref 5.5).

        ``data[0]`` doubles as the legacy ``flags`` field, valid on every kernel; before
        5.18 the ``ndata`` slot is zeroed padding.
        """
        ndata = 1 if self.system_event_has_ndata else 0
        return SystemEventExit(vcpu=vcpu_id, type=kind, ndata=ndata, data=(flags,))

    def is_psci_fid(self, fid: int) -> bool:
        """KVM's 0.1 ids, or Standard Secure fn 0..psci_fn_last in either convention."""
        if psci.KVM_PSCI_FN_BASE <= fid <= psci.KVM_PSCI_MIGRATE:
            return True
        fn = fid - 0x8400_0000 if fid < 0xC400_0000 else fid - 0xC400_0000
        return 0 <= fn <= self.psci_fn_last

    def cap_by_number(self, number: int) -> Cap | None:
        """The capability this kernel gives ``number`` to (None if it has none)."""
        for cap, n in self.cap_numbers.items():
            if n == number:
                return cap
        return None

    @property
    def forwards_with_fid(self) -> bool:
        """Upstream KVM_EXIT_HYPERCALL: nr = function id, args zeroed (ref 5.4)."""
        return self.smccc_filter


# -- strategies ---------------------------------------------------------------------------


def smc_not_dispatched(model: Dispatcher, call: Call) -> Exit | None:
    """v4.16-v6.3 handle_smc() for EL1: x0 = ~0 and nothing else, x1..x3 untouched (ref 1.6, 1.8)."""
    call.ret = (smccc.MASK64,)
    return None


def smc_dispatched(model: Dispatcher, call: Call) -> Exit | None:
    """v6.4+ handle_smc(): imm16 != 0 gets x0 = ~0 (reserved, DEN0028 2.9); SMC #0 takes
    exactly the HVC path, minus the EL2 workaround vector (ref 1.6)."""
    if call.esr & 0xFFFF:
        call.ret = (smccc.MASK64,)
        return None
    return model.smccc_call(call)


def rfc_route(model: Dispatcher, call: Call) -> Exit | None:
    """RFC 4/5 default case: PSCI ranges to kvm_psci_call, the rest to kvm_hvc_user (ref 3.5)."""
    caps = model.vm.caps
    if model.profile.is_psci_fid(call.fid):
        if Cap.ARM_PSCI_TO_USER in caps and not _is_features_of_smccc_version(call):
            return _rfc_exit(model, call)
        return model.psci.call(call)
    if Cap.ARM_HVC_TO_USER in caps:
        return _rfc_exit(model, call)
    model.deny(call)
    return None


def upstream_route(model: Dispatcher, call: Call) -> Exit | None:
    """Mainline default case: everything the switch lacks goes to kvm_psci_call, which
    answers NOT_SUPPORTED (x1..x3 = 0) for what is not PSCI (ref 3.1, 3.2)."""
    if model.profile.is_psci_fid(call.fid):
        return model.psci.call(call)
    model.deny(call)
    return None


def _rfc_exit(model: Dispatcher, call: Call) -> Exit:
    # RFC shape: nr = the immediate, args = x0..x5, registers untouched (ref 5.3).
    return model.exit_hypercall(call, call.esr & 0xFFFF, call.args)


def _is_features_of_smccc_version(call: Call) -> bool:
    # RFC 5/5 keeps PSCI_FEATURES(SMCCC_VERSION) in the kernel so guests still find
    # SMCCC 1.1 and the Spectre workarounds. It compares the whole of x1 (an unsigned
    # long) with ARM_SMCCC_VERSION_FUNC_ID, so 0xFFFFFFFF80000000 is forwarded.
    return call.fid == psci.PSCI_FEATURES and call.args[1] == smccc.SMCCC_VERSION


# What ``emu profiles`` prints for each strategy.
STRATEGY_LABELS: dict[Strategy, str] = {
    smc_not_dispatched: "x0 = -1, PC + 4, never dispatched",
    smc_dispatched: "imm 0: like HVC (no WA fast path); imm != 0: x0 = -1",
    rfc_route: "-1; EXIT_HYPERCALL nr=imm, args=x0..x5 with HVC_TO_USER",
    upstream_route: "-1 (x1..x3 = 0)",
}


# -- the v5.13 function switch ------------------------------------------------------------

V5_13_HANDLERS: dict[int, Handler] = {
    smccc.SMCCC_VERSION: smccc_arch.smccc_version,
    smccc.SMCCC_ARCH_FEATURES: smccc_arch.arch_features,
    smccc.PV_TIME_FEATURES: pvtime.features,
    smccc.PV_TIME_ST: pvtime.stolen_time,
    smccc.VENDOR_HYP_CALL_UID: vendor_hyp.call_uid,
    smccc.VENDOR_HYP_KVM_FEATURES: vendor_hyp.kvm_features,
    smccc.VENDOR_HYP_KVM_PTP: vendor_hyp.ptp,
    smccc.TRNG_VERSION: trng.version,
    smccc.TRNG_FEATURES: trng.features,
    smccc.TRNG_GET_UUID: trng.get_uuid,
    smccc.TRNG_RND32: trng.rnd32,
    smccc.TRNG_RND64: trng.rnd64,
}

# v5.17 added ARCH_WORKAROUND_3 to the switch's ARCH_FEATURES answers and the EL2 vector.
_FAST_PATH_5_13 = frozenset({smccc.SMCCC_ARCH_WORKAROUND_1, smccc.SMCCC_ARCH_WORKAROUND_2})
_FAST_PATH_5_17 = _FAST_PATH_5_13 | {smccc.SMCCC_ARCH_WORKAROUND_3}

# Upstream capability numbers (include/uapi/linux/kvm.h, ref 6.1).
_UPSTREAM_CAP_NUMBERS = {
    Cap.ARM_PSCI: 87,
    Cap.ARM_PSCI_0_2: 102,
    Cap.PTP_KVM: 198,
    Cap.SYSTEM_EVENT_DATA: 215,
    Cap.ARM_SYSTEM_SUSPEND: 216,
}
_PSCI_0_2_1_0 = (psci.PSCI_0_2, psci.PSCI_1_0)
_PSCI_TO_1_1 = (*_PSCI_0_2_1_0, psci.PSCI_1_1)
_PSCI_TO_1_3 = (*_PSCI_TO_1_1, psci.PSCI_1_2, psci.PSCI_1_3)
_STATES_5_13 = (MpState.RUNNABLE, MpState.STOPPED)
_STATES_5_19 = (MpState.RUNNABLE, MpState.STOPPED, MpState.SUSPENDED)

RFC_2021 = Profile(
    name="rfc-2021",
    summary="Linux v5.13 + RFC 'KVM: arm64: Pass hypercalls to userspace' (2021, never merged)",
    smccc_version=smccc.SMCCC_VERSION_1_1,
    psci_default_version=psci.PSCI_1_0,
    psci_versions=_PSCI_0_2_1_0,
    hvc_fast_path=_FAST_PATH_5_13,
    handlers=V5_13_HANDLERS,
    # The RFC as posted used 0x3F, which also swallowed SDEI (0x20-0x3F) into KVM's PSCI
    # code. DEN0028 table 6-4 reserves only 0x00-0x1F for PSCI, and the RFC's author
    # later said that was the intended boundary (ref 2.4), so SDEI reaches userspace.
    psci_fn_last=0x1F,
    psci_reject_reserved_affinity=False,
    cpu_on_reset_at_run=True,
    system_event_has_ndata=False,
    has_workaround_3=False,
    has_pvtime=True,
    cap_numbers={
        Cap.ARM_PSCI: 87,
        Cap.ARM_PSCI_0_2: 102,
        Cap.PTP_KVM: 198,
        Cap.ARM_MP_HALTED: 199,
        Cap.ARM_HVC_TO_USER: 200,
        Cap.ARM_PSCI_TO_USER: 201,
    },
    caps={
        Cap.ARM_PSCI: 1,
        Cap.ARM_PSCI_0_2: 1,
        Cap.PTP_KVM: 1,
        Cap.ARM_MP_HALTED: 1,
        Cap.ARM_HVC_TO_USER: 1,
        Cap.ARM_PSCI_TO_USER: 1,
    },
    # RFC 3/5 reports MP_HALTED from check_extension and accepts KVM_MP_STATE_HALTED in
    # SET_MP_STATE without any enable; KVM_ENABLE_CAP has no case for it (EINVAL).
    enableable_caps=frozenset({Cap.ARM_HVC_TO_USER, Cap.ARM_PSCI_TO_USER}),
    # SUSPENDED arrived with SYSTEM_SUSPEND in 5.19.
    settable_mp_states=(MpState.RUNNABLE, MpState.HALTED, MpState.STOPPED),
    handle_smc=smc_not_dispatched,
    route_unhandled=rfc_route,
)

# Each mainline kernel is the one before it plus what it changed.
LINUX_5_15 = replace(
    RFC_2021,
    name="linux-5.15",
    summary="Linux v5.15: v5.13 plus the CPU_ON fixes (reserved affinity bits, reset state)",
    psci_reject_reserved_affinity=True,
    cpu_on_reset_at_run=False,
    cap_numbers={c: n for c, n in _UPSTREAM_CAP_NUMBERS.items() if n < 215},
    caps={Cap.ARM_PSCI: 1, Cap.ARM_PSCI_0_2: 1, Cap.PTP_KVM: 1},
    enableable_caps=frozenset(),
    settable_mp_states=_STATES_5_13,
    route_unhandled=upstream_route,
)

LINUX_6_1 = replace(
    LINUX_5_15,
    name="linux-6.1",
    summary="Linux v6.1: PSCI 1.1 (SYSTEM_RESET2), SYSTEM_SUSPEND, firmware bitmaps, ARCH_WORKAROUND_3",
    psci_default_version=psci.PSCI_1_1,
    psci_versions=_PSCI_TO_1_1,
    hvc_fast_path=_FAST_PATH_5_17,
    system_event_has_ndata=True,
    has_workaround_3=True,
    cap_numbers=_UPSTREAM_CAP_NUMBERS,
    caps={
        Cap.ARM_PSCI: 1,
        Cap.ARM_PSCI_0_2: 1,
        Cap.PTP_KVM: 1,
        Cap.SYSTEM_EVENT_DATA: 1,
        Cap.ARM_SYSTEM_SUSPEND: 1,
    },
    enableable_caps=frozenset({Cap.ARM_SYSTEM_SUSPEND}),
    settable_mp_states=_STATES_5_19,
    bitmap_gate=True,
    firmware_regs=one_reg.FW_REGS_5_19,
)

LINUX_6_6 = replace(
    LINUX_6_1,
    name="linux-6.6",
    summary="Linux v6.6: + SMCCC filter, KVM_EXIT_HYPERCALL with nr = function id, SMC #0 like HVC",
    handle_smc=smc_dispatched,
    smccc_filter=True,
    hvc_errors_to_user=True,
)

LINUX_6_13 = replace(
    LINUX_6_6,
    name="linux-6.13",
    summary="Linux v6.13: + PSCI 1.2/1.3 (default 1.3), SYSTEM_OFF2 (hibernate)",
    psci_default_version=psci.PSCI_1_3,
    psci_versions=_PSCI_TO_1_3,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (RFC_2021, LINUX_5_15, LINUX_6_1, LINUX_6_6, LINUX_6_13)}
# ``latest`` names the newest modelled kernel.
ALIASES: dict[str, str] = {"latest": LINUX_6_13.name}
DEFAULT_PROFILE = RFC_2021.name


def get_profile(name: str) -> Profile:
    """Look a profile (or an alias such as ``latest``) up by name; the error lists the known ones."""
    try:
        return PROFILES[ALIASES.get(name, name)]
    except KeyError:
        known = ", ".join([*PROFILES, *ALIASES])
        raise ValueError(f"unknown profile {name!r} (known: {known})") from None
