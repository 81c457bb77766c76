"""SMC Calling Convention vocabulary: function-id layout, owners, names, return codes.

Everything here is plain data about Arm DEN0028 (SMCCC) and the ids KVM knows; the
behaviour of each call lives in the service modules and in ``kvm_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

MASK32 = 0xFFFF_FFFF
MASK64 = 0xFFFF_FFFF_FFFF_FFFF


def u64(value: int) -> int:
    """Two's-complement a (possibly negative) return code into a 64-bit register value."""
    return value & MASK64


def s64(value: int) -> int:
    """Read a 64-bit register value as signed (for decoding return codes)."""
    value &= MASK64
    return value - (1 << 64) if value >> 63 else value


class Owner(IntEnum):
    """Owning Entity Numbers, DEN0028 table 6-2 (function id bits 29:24)."""

    ARCH = 0
    CPU = 1
    SIP = 2
    OEM = 3
    STD = 4
    STD_HYP = 5
    VENDOR_HYP = 6


def owner_name(oen: int) -> str:
    """Name of an OEN, including the ranges that are not single values."""
    if oen in Owner._value2member_map_:
        return Owner(oen).name
    if 48 <= oen <= 49:
        return "TRUSTED_APP"
    if 50 <= oen <= 63:
        return "TRUSTED_OS"
    return "RESERVED"


@dataclass(frozen=True)
class FidFields:
    """The fields of a 32-bit SMCCC function id."""

    fast: bool
    is64: bool
    owner: int
    fn: int
    mbz: int

    @classmethod
    def of(cls, fid: int) -> FidFields:
        fid &= MASK32
        return cls(
            bool(fid >> 31), bool((fid >> 30) & 1), (fid >> 24) & 0x3F, fid & 0xFFFF, (fid >> 16) & 0xFF
        )


# Arm Architecture calls (OEN 0).
SMCCC_VERSION = 0x8000_0000
SMCCC_ARCH_FEATURES = 0x8000_0001
SMCCC_ARCH_SOC_ID = 0x8000_0002
SMCCC_ARCH_WORKAROUND_1 = 0x8000_8000
SMCCC_ARCH_WORKAROUND_2 = 0x8000_7FFF
SMCCC_ARCH_WORKAROUND_3 = 0x8000_3FFF

SMCCC_VERSION_1_1 = 0x10001

# Standard Hypervisor service (OEN 5), DEN0057A.
PV_TIME_FEATURES = 0xC500_0020
PV_TIME_ST = 0xC500_0021

# Vendor-specific Hypervisor service (OEN 6): KVM's own ABI (reference 2.6).
VENDOR_HYP_CALL_UID = 0x8600_FF01
VENDOR_HYP_KVM_FEATURES = 0x8600_0000
VENDOR_HYP_KVM_PTP = 0x8600_0001
# KVM's vendor-hyp UID 28b46fb6-2ec5-11e9-a9ca-4b564d003a74 as returned in x0..x3.
KVM_UID_WORDS = (0xB66F_B428, 0xE911_C52E, 0x564B_CAA9, 0x743A_004D)

# TRNG (DEN0098) in the Standard Secure range.
TRNG_VERSION = 0x8400_0050
TRNG_FEATURES = 0x8400_0051
TRNG_GET_UUID = 0x8400_0052
TRNG_RND32 = 0x8400_0053
TRNG_RND64 = 0xC400_0053

# SDEI (DEN0054) occupies Standard Secure function numbers 0x20-0x3F.
SDEI_VERSION = 0xC400_0020


class SmcccRet(IntEnum):
    """Generic SMCCC return codes (DEN0028 7.1) as KVM uses them."""

    SUCCESS = 0
    NOT_SUPPORTED = -1
    NOT_REQUIRED = -2
    INVALID_PARAMETER = -3


# SMCCC_ARCH_FEATURES(ARCH_WORKAROUND_1/3) answer when the host is not affected.
SMCCC_ARCH_WORKAROUND_RET_UNAFFECTED = 1

_NAMES: dict[int, str] = {
    SMCCC_VERSION: "SMCCC_VERSION",
    SMCCC_ARCH_FEATURES: "SMCCC_ARCH_FEATURES",
    SMCCC_ARCH_SOC_ID: "SMCCC_ARCH_SOC_ID",
    0xC000_0002: "SMCCC_ARCH_SOC_ID",
    SMCCC_ARCH_WORKAROUND_1: "SMCCC_ARCH_WORKAROUND_1",
    SMCCC_ARCH_WORKAROUND_2: "SMCCC_ARCH_WORKAROUND_2",
    SMCCC_ARCH_WORKAROUND_3: "SMCCC_ARCH_WORKAROUND_3",
    PV_TIME_FEATURES: "PV_TIME_FEATURES",
    PV_TIME_ST: "PV_TIME_ST",
    VENDOR_HYP_CALL_UID: "VENDOR_HYP_CALL_UID",
    VENDOR_HYP_KVM_FEATURES: "KVM_FEATURES",
    VENDOR_HYP_KVM_PTP: "KVM_PTP",
    TRNG_VERSION: "TRNG_VERSION",
    TRNG_FEATURES: "TRNG_FEATURES",
    TRNG_GET_UUID: "TRNG_GET_UUID",
    TRNG_RND32: "TRNG_RND32",
    TRNG_RND64: "TRNG_RND64",
    0x8400_FF01: "STD_CALL_UID",
    0x8400_FF03: "STD_REVISION",
}

_SDEI_NAMES = (
    "VERSION",
    "EVENT_REGISTER",
    "EVENT_ENABLE",
    "EVENT_DISABLE",
    "EVENT_CONTEXT",
    "EVENT_COMPLETE",
    "EVENT_COMPLETE_AND_RESUME",
    "EVENT_UNREGISTER",
    "EVENT_STATUS",
    "EVENT_GET_INFO",
    "EVENT_ROUTING_SET",
    "PE_MASK",
    "PE_UNMASK",
    "INTERRUPT_BIND",
    "INTERRUPT_RELEASE",
    "PRIVATE_RESET",
    "SHARED_RESET",
    "EVENT_REGISTER_EVENT_SIGNAL",
    "FEATURES",
)


def register_names(names: dict[int, str]) -> None:
    """Let a service module (e.g. PSCI) contribute its function names to ``name_of``."""
    _NAMES.update(names)


def name_of(fid: int) -> str:
    """Best human name for a function id: a known name, else e.g. ``VENDOR_HYP64:0x0040``."""
    fid &= MASK32
    name = _NAMES.get(fid)
    if name:
        return name
    f = FidFields.of(fid)
    if f.owner == Owner.STD and 0x20 <= f.fn < 0x20 + len(_SDEI_NAMES):
        return "SDEI_" + _SDEI_NAMES[f.fn - 0x20]
    width = "64" if f.is64 else "32"
    kind = "" if f.fast else "_YIELDING"
    return f"{owner_name(f.owner)}{width}{kind}:{f.fn:#06x}"
