"""Modelled kernels, as data plus a few strategy hooks.

A ``Profile`` names everything that differs between the kernels emu models: versions it
advertises, the explicit function switch, what happens to SMC, where unhandled calls go,
PSCI policy details and the capabilities it offers. ``KvmModel`` runs the same pipeline
for every profile.

``rfc-2021``: Linux v5.13 plus the RFC series "KVM: arm64: Pass hypercalls to userspace"
(J-P Brucker, June 2021; patches 3/5 MP_HALTED, 4/5 HVC_TO_USER, 5/5 PSCI_TO_USER).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from emu.abi import smccc
from emu.abi.exits import Exit, HypercallExit, MpState, SystemEvent, SystemEventExit
from emu.kvm.caps import Cap
from emu.smccc import arch as smccc_arch
from emu.smccc import psci, pvtime, trng, vendor_hyp
from emu.smccc.call import Call, ServiceVm
from emu.smccc.psci import Psci


class ModelVm(ServiceVm, Protocol):
    """The VM as the KVM model sees it: the services' view plus the enabled caps."""

    caps: set[Cap]

    @property
    def profile(self) -> Profile: ...


class Dispatcher(Protocol):
    """The KVM model's building blocks a profile's strategies combine (``emu.kvm_model``)."""

    vm: ModelVm
    profile: Profile
    psci: Psci

    def deny(self, call: Call) -> None: ...

    def exit_hypercall(self, call: Call, nr: int, args: tuple[int, ...]) -> HypercallExit: ...


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
    # check_extension() answers; enable_cap() accepts these where they are enableable.
    caps: dict[Cap, int]
    enableable_caps: frozenset[Cap]
    # States KVM_SET_MP_STATE accepts (HALTED comes with the RFC's MP_HALTED cap).
    settable_mp_states: tuple[MpState, ...]
    handle_smc: Strategy
    route_unhandled: Strategy

    def system_event_exit(self, vcpu_id: int, kind: SystemEvent, flags: int) -> SystemEventExit:
        """The system_event union as this kernel fills it (ref 5.5).

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


# -- strategies ---------------------------------------------------------------------------


def smc_not_dispatched(model: Dispatcher, call: Call) -> Exit | None:
    """v4.16-v6.2 handle_smc(): x0 = ~0 and nothing else, x1..x3 untouched (ref 1.6, 1.8)."""
    call.ret = (smccc.MASK64,)
    return None


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


def _rfc_exit(model: Dispatcher, call: Call) -> Exit:
    # RFC shape: nr = the immediate, args = x0..x5, registers untouched (ref 5.3).
    return model.exit_hypercall(call, call.esr & 0xFFFF, call.args)


def _is_features_of_smccc_version(call: Call) -> bool:
    # RFC 5/5 keeps PSCI_FEATURES(SMCCC_VERSION) in the kernel so guests still find
    # SMCCC 1.1 and the Spectre workarounds.
    return call.fid == psci.PSCI_FEATURES and (call.args[1] & smccc.MASK32) == smccc.SMCCC_VERSION


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

RFC_2021 = Profile(
    name="rfc-2021",
    summary="Linux v5.13 + RFC 'KVM: arm64: Pass hypercalls to userspace' (2021)",
    smccc_version=smccc.SMCCC_VERSION_1_1,
    psci_default_version=psci.PSCI_1_0,
    psci_versions=(psci.PSCI_0_2, psci.PSCI_1_0),
    hvc_fast_path=frozenset({smccc.SMCCC_ARCH_WORKAROUND_1, smccc.SMCCC_ARCH_WORKAROUND_2}),
    handlers=V5_13_HANDLERS,
    # The RFC as posted used 0x3F, which also swallowed SDEI (0x20-0x3F) into KVM's PSCI
    # code. DEN0028 table 6-4 reserves only 0x00-0x1F for PSCI, and the RFC's author
    # later said that was the intended boundary (ref 2.4), so SDEI reaches userspace.
    psci_fn_last=0x1F,
    psci_reject_reserved_affinity=False,
    system_event_has_ndata=False,
    has_workaround_3=False,
    has_pvtime=True,
    caps={
        Cap.ARM_PSCI: 1,
        Cap.ARM_PSCI_0_2: 1,
        Cap.PTP_KVM: 1,
        Cap.ARM_MP_HALTED: 1,
        Cap.ARM_HVC_TO_USER: 1,
        Cap.ARM_PSCI_TO_USER: 1,
    },
    enableable_caps=frozenset({Cap.ARM_MP_HALTED, Cap.ARM_HVC_TO_USER, Cap.ARM_PSCI_TO_USER}),
    # SUSPENDED arrived with SYSTEM_SUSPEND in 5.19.
    settable_mp_states=(MpState.RUNNABLE, MpState.STOPPED),
    handle_smc=smc_not_dispatched,
    route_unhandled=rfc_route,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (RFC_2021,)}
DEFAULT_PROFILE = RFC_2021.name


def get_profile(name: str) -> Profile:
    """Look a profile up by name; the error lists the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ValueError(f"unknown profile {name!r} (known: {known})") from None
