"""KVM_GET_ONE_REG / KVM_SET_ONE_REG / KVM_GET_REG_LIST: core registers and firmware registers.

Ids are KVM's: ``KVM_REG_ARM64 | KVM_REG_SIZE_U64 | coproc << 16 | index``. Core registers
(coproc 0x10) index ``struct kvm_regs`` in 32-bit words (ref 5.4): x_n = 2n, ``sp``
(SP_EL0, the ``user_pt_regs`` field) 0x3E, pc 0x40, pstate 0x42, then sp_el1 0x44 and
elr_el1 0x46. Firmware pseudo-registers (coproc 0x14 and 0x16, ref 7) say which PSCI
version the VM speaks, which Spectre workarounds the host offers and which
bitmap-gated services (ref 3.3) the guest may call; which of them exist, and what may be
written, depends on the profile.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from emu.abi import smccc
from emu.arm.host import HostCpu, Mitigation
from emu.errors import KvmError
from emu.smccc import psci

if TYPE_CHECKING:
    from emu.arm.regs import RegisterFile

KVM_REG_ARM64 = 0x6000_0000_0000_0000
KVM_REG_SIZE_U64 = 0x0030_0000_0000_0000
KVM_REG_ARM_CORE = 0x0010 << 16
KVM_REG_ARM_FW = 0x0014 << 16
KVM_REG_ARM_FW_FEAT_BMAP = 0x0016 << 16

_CORE = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE
_FW = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_FW
_BMAP = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_FW_FEAT_BMAP


def core_reg(index: int) -> int:
    """KVM_REG_ARM_CORE_REG for a 32-bit word offset into ``struct kvm_regs``."""
    return _CORE | index


KVM_REG_ARM_CORE_X = tuple(core_reg(2 * n) for n in range(31))
KVM_REG_ARM_CORE_SP = core_reg(0x3E)  # regs.sp: SP_EL0
KVM_REG_ARM_CORE_PC = core_reg(0x40)
KVM_REG_ARM_CORE_PSTATE = core_reg(0x42)
KVM_REG_ARM_CORE_SP_EL1 = core_reg(0x44)
KVM_REG_ARM_CORE_ELR_EL1 = core_reg(0x46)

KVM_REG_ARM_PSCI_VERSION = _FW | 0
KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1 = _FW | 1
KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2 = _FW | 2
KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_3 = _FW | 3
KVM_REG_ARM_STD_BMAP = _BMAP | 0
KVM_REG_ARM_STD_HYP_BMAP = _BMAP | 1
KVM_REG_ARM_VENDOR_HYP_BMAP = _BMAP | 2

# Workaround levels (fw-pseudo-registers.rst).
WA_NOT_AVAIL = 0
WA_AVAIL = 1
WA_NOT_REQUIRED = 2
WA2_NOT_AVAIL = 0
WA2_UNKNOWN = 1
WA2_AVAIL = 2
WA2_NOT_REQUIRED = 3
WA2_ENABLED = 1 << 4
KVM_REG_FEATURE_LEVEL_MASK = 0xF

# Bitmap bits (ref 3.3) and the bits each bitmap supports.
KVM_REG_ARM_STD_BIT_TRNG_V1_0 = 0
KVM_REG_ARM_STD_HYP_BIT_PV_TIME = 0
KVM_REG_ARM_VENDOR_HYP_BIT_FUNC_FEAT = 0
KVM_REG_ARM_VENDOR_HYP_BIT_PTP = 1
BITMAP_SUPPORTED = {
    KVM_REG_ARM_STD_BMAP: 0b1,
    KVM_REG_ARM_STD_HYP_BMAP: 0b1,
    KVM_REG_ARM_VENDOR_HYP_BMAP: 0b11,
}

FIRMWARE_REG_NAMES = {
    KVM_REG_ARM_PSCI_VERSION: "PSCI_VERSION",
    KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1: "SMCCC_ARCH_WORKAROUND_1",
    KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2: "SMCCC_ARCH_WORKAROUND_2",
    KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_3: "SMCCC_ARCH_WORKAROUND_3",
    KVM_REG_ARM_STD_BMAP: "STD_BMAP",
    KVM_REG_ARM_STD_HYP_BMAP: "STD_HYP_BMAP",
    KVM_REG_ARM_VENDOR_HYP_BMAP: "VENDOR_HYP_BMAP",
}

# Firmware registers by kernel: 5.13-5.16 have three; WA3 came in 5.17, the bitmaps in 5.19.
FW_REGS_5_13 = (
    KVM_REG_ARM_PSCI_VERSION,
    KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1,
    KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2,
)
FW_REGS_5_19 = (
    *FW_REGS_5_13,
    KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_3,
    KVM_REG_ARM_STD_BMAP,
    KVM_REG_ARM_STD_HYP_BMAP,
    KVM_REG_ARM_VENDOR_HYP_BMAP,
)

_CORE_NAMES = {**{rid: f"x{n}" for n, rid in enumerate(KVM_REG_ARM_CORE_X)}}
_CORE_NAMES.update(
    {
        KVM_REG_ARM_CORE_PC: "pc",
        KVM_REG_ARM_CORE_PSTATE: "pstate",
        KVM_REG_ARM_CORE_ELR_EL1: "elr_el1",
    }
)
CORE_REGS = (*KVM_REG_ARM_CORE_X, KVM_REG_ARM_CORE_SP, KVM_REG_ARM_CORE_PC, KVM_REG_ARM_CORE_PSTATE,
             KVM_REG_ARM_CORE_SP_EL1, KVM_REG_ARM_CORE_ELR_EL1)  # fmt: skip


@dataclass
class FirmwareBitmaps:
    """The VM-wide bitmap registers (kvm->arch.smccc_feat); every supported bit set at creation."""

    std_bmap: int = BITMAP_SUPPORTED[KVM_REG_ARM_STD_BMAP]
    std_hyp_bmap: int = BITMAP_SUPPORTED[KVM_REG_ARM_STD_HYP_BMAP]
    vendor_hyp_bmap: int = BITMAP_SUPPORTED[KVM_REG_ARM_VENDOR_HYP_BMAP]


_FIELDS = {
    KVM_REG_ARM_STD_BMAP: "std_bmap",
    KVM_REG_ARM_STD_HYP_BMAP: "std_hyp_bmap",
    KVM_REG_ARM_VENDOR_HYP_BMAP: "vendor_hyp_bmap",
}


class RegProfile(Protocol):
    """What the register code needs of a profile (``emu.kvm.profiles.Profile``)."""

    @property
    def name(self) -> str: ...

    @property
    def psci_versions(self) -> tuple[int, ...]: ...

    @property
    def firmware_regs(self) -> tuple[int, ...]: ...


class RegVm(Protocol):
    """What the register code needs of the VM."""

    host: HostCpu
    psci_version: int
    fw_bitmaps: FirmwareBitmaps

    @property
    def profile(self) -> RegProfile: ...

    @property
    def has_run(self) -> bool: ...


class RegVcpu(Protocol):
    """What the register code needs of the vCPU."""

    psci_0_2: bool
    regs: RegisterFile

    @property
    def vm(self) -> RegVm: ...


def parse_reg_name(text: str) -> int:
    """``STD_BMAP``, ``KVM_REG_ARM_STD_BMAP``, ``PSCI_VERSION``, ``x3`` or a hex id."""
    key = text.strip()
    try:
        return int(key, 0)
    except ValueError:
        pass
    norm = key.upper().removeprefix("KVM_REG_ARM_")
    for rid, name in FIRMWARE_REG_NAMES.items():
        if norm in (name, name.removeprefix("SMCCC_ARCH_")):
            return rid
    low = key.lower()
    for rid, name in _CORE_NAMES.items():
        if low == name:
            return rid
    known = ", ".join(FIRMWARE_REG_NAMES.values())
    raise ValueError(f"unknown register {text!r} (known: {known}, x0..x30, pc, pstate, or an id)")


def reg_name(reg_id: int) -> str:
    return (
        FIRMWARE_REG_NAMES.get(reg_id)
        or _CORE_NAMES.get(reg_id)
        or (
            "sp"
            if reg_id == KVM_REG_ARM_CORE_SP
            else "sp_el1"
            if reg_id == KVM_REG_ARM_CORE_SP_EL1
            else hex(reg_id)
        )
    )


# -- workaround levels the host offers (hypercalls.c get_kernel_wa_level) --------------------


def _wa_1_or_3_level(state: Mitigation) -> int:
    if state is Mitigation.MITIGATED:
        return WA_AVAIL
    if state is Mitigation.UNAFFECTED:
        return WA_NOT_REQUIRED
    return WA_NOT_AVAIL


def _wa_2_level(host: HostCpu) -> int:
    # Mitigated with SSBS everywhere: KVM pretends there is no firmware mitigation.
    if host.spectre_v4 is Mitigation.UNAFFECTED or (
        host.spectre_v4 is Mitigation.MITIGATED and not host.ssbs
    ):
        return WA2_NOT_REQUIRED
    return WA2_NOT_AVAIL


def _wa_level(host: HostCpu, reg_id: int) -> int:
    if reg_id == KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1:
        return _wa_1_or_3_level(host.spectre_v2)
    if reg_id == KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_3:
        return _wa_1_or_3_level(host.spectre_bhb)
    return _wa_2_level(host)


# -- the ioctls --------------------------------------------------------------------------------


def reg_list(vcpu: RegVcpu) -> list[int]:
    """KVM_GET_REG_LIST, restricted to what emu models: core registers, then firmware ones."""
    return [*CORE_REGS, *vcpu.vm.profile.firmware_regs]


def _unknown(reg_id: int, profile: RegProfile) -> KvmError:
    return KvmError(errno.ENOENT, f"ONE_REG: no register {reg_id:#x} under profile {profile.name}")


def _sp_name(vcpu: RegVcpu, el1: bool) -> str:
    # Unicorn's ``sp`` is the SP selected by PSTATE; the banked copy is only current otherwise.
    pstate = vcpu.regs.read("pstate")
    current_el1 = (pstate >> 2) & 3 == 1 and pstate & 1
    return "sp" if bool(current_el1) == el1 else ("sp_el1" if el1 else "sp_el0")


def get_one_reg(vcpu: RegVcpu, reg_id: int) -> int:
    vm = vcpu.vm
    profile = vm.profile
    name = _CORE_NAMES.get(reg_id)
    if name is not None:
        return vcpu.regs.read(name)
    if reg_id in (KVM_REG_ARM_CORE_SP, KVM_REG_ARM_CORE_SP_EL1):
        return vcpu.regs.read(_sp_name(vcpu, reg_id == KVM_REG_ARM_CORE_SP_EL1))
    if reg_id not in profile.firmware_regs:
        raise _unknown(reg_id, profile)
    if reg_id == KVM_REG_ARM_PSCI_VERSION:
        return vm.psci_version if vcpu.psci_0_2 else psci.PSCI_0_1  # kvm_psci_version()
    if reg_id in BITMAP_SUPPORTED:
        return getattr(vm.fw_bitmaps, _FIELDS[reg_id])
    return _wa_level(vm.host, reg_id)


def set_one_reg(vcpu: RegVcpu, reg_id: int, value: int) -> None:
    vm = vcpu.vm
    profile = vm.profile
    value &= smccc.MASK64
    name = _CORE_NAMES.get(reg_id)
    if name is not None:
        vcpu.regs.write(name, value)
        return
    if reg_id in (KVM_REG_ARM_CORE_SP, KVM_REG_ARM_CORE_SP_EL1):
        vcpu.regs.write(_sp_name(vcpu, reg_id == KVM_REG_ARM_CORE_SP_EL1), value)
        return
    if reg_id not in profile.firmware_regs:
        raise _unknown(reg_id, profile)
    what = f"KVM_SET_ONE_REG {FIRMWARE_REG_NAMES[reg_id]}"
    if reg_id == KVM_REG_ARM_PSCI_VERSION:
        # Checked against this vCPU's KVM_ARM_VCPU_PSCI_0_2 feature, stored VM-wide (ref 4.1).
        if value == psci.PSCI_0_1:
            ok = not vcpu.psci_0_2
        else:
            ok = vcpu.psci_0_2 and value in profile.psci_versions
        if not ok:
            raise KvmError(
                errno.EINVAL,
                f"{what}: {value:#x} not accepted for this vCPU under profile {profile.name}",
            )
        vm.psci_version = value
        return
    if reg_id in BITMAP_SUPPORTED:
        if value & ~BITMAP_SUPPORTED[reg_id]:
            raise KvmError(errno.EINVAL, f"{what}: unsupported bits in {value:#x}")
        field = _FIELDS[reg_id]
        if vm.has_run and value != getattr(vm.fw_bitmaps, field):
            # The same value is accepted after a run, so a VMM can rewrite it on reboot.
            raise KvmError(errno.EBUSY, f"{what}: the VM has run; only the current value may be written")
        setattr(vm.fw_bitmaps, field, value)
        return
    level = _wa_level(vm.host, reg_id)
    allowed = KVM_REG_FEATURE_LEVEL_MASK
    if reg_id == KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2:
        allowed |= WA2_ENABLED
    if value & ~allowed:
        raise KvmError(errno.EINVAL, f"{what}: {value:#x} is not a workaround level")
    if reg_id == KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2:
        # The ENABLED bit only goes with AVAIL; every incoming state then maps to
        # NOT_AVAIL or NOT_REQUIRED (hypercalls.c kvm_arm_set_fw_reg).
        if value & WA2_ENABLED and value & KVM_REG_FEATURE_LEVEL_MASK != WA2_AVAIL:
            raise KvmError(errno.EINVAL, f"{what}: ENABLED needs level AVAIL")
        value &= KVM_REG_FEATURE_LEVEL_MASK
        if value in (WA2_NOT_AVAIL, WA2_UNKNOWN):
            value = WA2_NOT_AVAIL
        elif value in (WA2_AVAIL, WA2_NOT_REQUIRED):
            value = WA2_NOT_REQUIRED
        else:
            raise KvmError(errno.EINVAL, f"{what}: {value:#x} is not a workaround level")
    if value > level:
        # A VM may not claim more protection than the host gives it (migration check).
        raise KvmError(errno.EINVAL, f"{what}: level {value} above the host's {level}")
