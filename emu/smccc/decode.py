"""Human-readable hypercalls: argument names per function and decoded return codes.

``describe_call(0xC4000003, args)`` gives ``PSCI_CPU_ON64(target=0x1, entry=0x40080100,
ctx=0x2a)``; ``describe_result(fid, x0)`` gives ``SUCCESS``, ``ALREADY_ON (-4)`` or
``0x10000`` depending on what the function returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from emu.abi import smccc
from emu.smccc import psci, trng

_ARG_NAMES: dict[int, tuple[str, ...]] = {
    smccc.SMCCC_ARCH_FEATURES: ("fid",),
    smccc.SMCCC_ARCH_SOC_ID: ("type",),
    smccc.PV_TIME_FEATURES: ("fid",),
    smccc.VENDOR_HYP_KVM_PTP: ("counter",),
    smccc.TRNG_FEATURES: ("fid",),
    smccc.TRNG_RND32: ("bits",),
    smccc.TRNG_RND64: ("bits",),
    psci.PSCI_FEATURES: ("fid",),
    psci.KVM_PSCI_CPU_ON: ("target", "entry", "ctx"),
    psci.KVM_PSCI_CPU_SUSPEND: ("power_state", "entry", "ctx"),
}
for _fid in (psci.CPU_ON, psci.CPU_ON64):
    _ARG_NAMES[_fid] = ("target", "entry", "ctx")
for _fid in (psci.CPU_SUSPEND, psci.CPU_SUSPEND64):
    _ARG_NAMES[_fid] = ("power_state", "entry", "ctx")
for _fid in (psci.AFFINITY_INFO, psci.AFFINITY_INFO64):
    _ARG_NAMES[_fid] = ("target", "level")
for _fid in (psci.SYSTEM_SUSPEND, psci.SYSTEM_SUSPEND64):
    _ARG_NAMES[_fid] = ("entry", "ctx")
for _fid in (psci.SYSTEM_RESET2, psci.SYSTEM_RESET2_64, psci.SYSTEM_OFF2, psci.SYSTEM_OFF2_64):
    _ARG_NAMES[_fid] = ("type", "cookie")
for _fid in (psci.MIGRATE_INFO_UP_CPU, psci.MIGRATE_INFO_UP_CPU64, psci.MIGRATE, psci.MIGRATE64):
    _ARG_NAMES[_fid] = ("target",)

# Functions that take no arguments at all.
_NO_ARGS = frozenset(
    {
        smccc.SMCCC_VERSION,
        smccc.VENDOR_HYP_CALL_UID,
        smccc.VENDOR_HYP_KVM_FEATURES,
        smccc.PV_TIME_ST,
        smccc.TRNG_VERSION,
        smccc.TRNG_GET_UUID,
        psci.PSCI_VERSION,
        psci.CPU_OFF,
        psci.KVM_PSCI_CPU_OFF,
        psci.MIGRATE_INFO_TYPE,
        psci.SYSTEM_OFF,
        psci.SYSTEM_RESET,
        smccc.SMCCC_ARCH_WORKAROUND_1,
        smccc.SMCCC_ARCH_WORKAROUND_2,
        smccc.SMCCC_ARCH_WORKAROUND_3,
    }
)

# Non-PSCI functions whose x0 is a status code (0 = SUCCESS) rather than a value.
_STATUS_RESULTS = frozenset(
    {
        smccc.SMCCC_ARCH_FEATURES,
        smccc.SMCCC_ARCH_WORKAROUND_1,
        smccc.SMCCC_ARCH_WORKAROUND_2,
        smccc.SMCCC_ARCH_WORKAROUND_3,
        smccc.PV_TIME_FEATURES,
        smccc.TRNG_FEATURES,
        smccc.TRNG_RND32,
        smccc.TRNG_RND64,
    }
)


class TrngRet(IntEnum):
    SUCCESS = trng.TRNG_SUCCESS
    NOT_SUPPORTED = trng.TRNG_NOT_SUPPORTED
    INVALID_PARAMETER = trng.TRNG_INVALID_PARAMETER
    NO_ENTROPY = trng.TRNG_NO_ENTROPY


def _is_psci(fid: int) -> bool:
    return fid in psci.NAMES


def describe_call(fid: int, args: Sequence[int]) -> str:
    """``NAME(arg=0x.., ...)`` with the function's own argument names (x1 onwards)."""
    fid &= smccc.MASK32
    name = smccc.name_of(fid)
    if fid in _NO_ARGS:
        return f"{name}()"
    names = _ARG_NAMES.get(fid)
    if names is None:
        shown = ", ".join(f"x{i}={a:#x}" for i, a in enumerate(args[1:6], 1))
    else:
        shown = ", ".join(f"{n}={a:#x}" for n, a in zip(names, args[1:], strict=False))
    return f"{name}({shown})"


def describe_result(fid: int, x0: int) -> str:
    """Decode x0 after ``fid``: a named return code, an affinity state, or hex."""
    fid &= smccc.MASK32
    value = smccc.s64(x0)
    if fid in (psci.AFFINITY_INFO, psci.AFFINITY_INFO64) and value in (0, 1, 2):
        return psci.AffinityState(value).name
    if value < 0:
        if _is_psci(fid):
            table: type[IntEnum] = psci.PsciRet
        elif smccc.TRNG_VERSION <= fid <= smccc.TRNG_RND32 or fid == smccc.TRNG_RND64:
            table = TrngRet
        else:
            table = smccc.SmcccRet
        try:
            return f"{table(value).name} ({value})"
        except ValueError:
            return str(value)
    if value == 0 and (fid in _STATUS_RESULTS or (_is_psci(fid) and fid != psci.PSCI_VERSION)):
        return "SUCCESS"
    return f"{x0:#x}"
