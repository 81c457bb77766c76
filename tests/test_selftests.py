"""The intent of KVM's own selftests, tools/testing/selftests/kvm/aarch64/{psci_test,
smccc_filter,hypercalls}.c, through emu's Python API and real guest code (reference 8)."""

from __future__ import annotations

import errno

import pytest

from emu import (
    KVM_ARM_VM_SMCCC_CTRL,
    KVM_ARM_VM_SMCCC_FILTER,
    KVM_REG_ARM_CORE_PC,
    KVM_REG_ARM_CORE_PSTATE,
    KVM_REG_ARM_CORE_X,
    KVM_REG_ARM_PSCI_VERSION,
    KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1,
    KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2,
    KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_3,
    KVM_REG_ARM_STD_BMAP,
    KVM_REG_ARM_STD_HYP_BMAP,
    KVM_REG_ARM_VENDOR_HYP_BMAP,
    LOAD_ADDR,
    Cap,
    HostCpu,
    Mitigation,
    MpState,
    SmcccFilterAction,
    Vm,
)
from emu.abi.exits import FaultExit, HypercallExit, SystemEvent, SystemEventExit
from emu.errors import KvmError
from emu.kvm.filter import pack_filter
from emu.smccc import psci
from tests.conftest import make_vm

M64 = 2**64 - 1
DENY, FWD = SmcccFilterAction.DENY, SmcccFilterAction.FWD_TO_USER


def errno_of(call) -> int:
    with pytest.raises(KvmError) as err:
        call()
    return err.value.errno


# -- psci_test.c ------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["linux-5.15", "linux-6.1", "linux-6.6", "linux-6.13"])
def test_psci_cpu_on_target_state_visible_before_it_runs(profile: str) -> None:
    # host_test_cpu_on: after the source's CPU_ON, the VMM reads the target's registers
    # before the target ever ran and sees the reset state with the entry point (v5.15).
    src = "ldr x0, =0xc4000003\nmov x1, #1\nldr x2, =0x40090000\nldr x3, =0xcafe\nhvc #0\nbrk #0\n"
    vm, source = make_vm(src, profile=profile)
    target = vm.create_vcpu(1, power_off=True)
    target.set_one_reg(KVM_REG_ARM_CORE_X[5], 0x55)
    assert isinstance(source.run(), FaultExit)
    assert source.get_reg("x0") == 0
    assert target.mp_state == MpState.RUNNABLE
    assert target.get_one_reg(KVM_REG_ARM_CORE_PC) == 0x4009_0000
    assert target.get_one_reg(KVM_REG_ARM_CORE_X[0]) == 0xCAFE
    assert target.get_one_reg(KVM_REG_ARM_CORE_X[5]) == 0
    assert target.get_one_reg(KVM_REG_ARM_CORE_PSTATE) == 0x3C5


def test_rfc_2021_resets_the_cpu_on_target_when_it_runs() -> None:
    # v5.13: KVM_REQ_VCPU_RESET is handled on the target's next KVM_RUN (gotcha 2).
    src = "ldr x0, =0xc4000003\nmov x1, #1\nldr x2, =0x40090000\nldr x3, =0xcafe\nhvc #0\nbrk #0\n"
    vm, source = make_vm(src, profile="rfc-2021")
    vm.load_asm("brk #1\n", 0x4009_0000)
    target = vm.create_vcpu(1, power_off=True)
    target.set_one_reg(KVM_REG_ARM_CORE_X[5], 0x55)
    source.run()
    assert target.mp_state == MpState.RUNNABLE
    assert target.get_one_reg(KVM_REG_ARM_CORE_X[5]) == 0x55  # not reset yet
    stop = target.run()
    assert isinstance(stop, FaultExit) and stop.pc == 0x4009_0000
    assert (target.get_reg("x0"), target.get_reg("x5")) == (0xCAFE, 0)


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.6", "linux-6.13"])
def test_psci_system_suspend(profile: str) -> None:
    # host_test_system_suspend: discoverable through PSCI_FEATURES, exits with SUSPEND.
    src = """
        ldr x0, =0x8400000a
        ldr x1, =0x8400000e
        hvc #0
        mov x19, x0
        ldr x0, =0x8400000a
        ldr x1, =0xc400000e
        hvc #0
        mov x20, x0
        ldr x0, =0xc400000e
        ldr x1, =0x40090000
        mov x2, #0x2a
        hvc #0
        brk #0
    """
    vm, source = make_vm(src, profile=profile)
    vm.enable_cap(Cap.ARM_SYSTEM_SUSPEND)
    vm.create_vcpu(1, power_off=True)
    exit_ = source.run()
    assert isinstance(exit_, SystemEventExit) and exit_.type == SystemEvent.SUSPEND
    assert (source.get_reg("x19"), source.get_reg("x20")) == (0, 0)


def test_psci_system_off2() -> None:
    # host_test_system_off2 (6.13): discoverable, a cookie is INVALID_PARAMS, types 1 and 0
    # shut down with the OFF2 flag; the VMM restarts the vCPU, which sees INTERNAL_FAILURE.
    src = """
        ldr x0, =0x8400000a
        ldr x1, =0x84000015
        hvc #0
        tbz x0, #0, fail
        ldr x0, =0x8400000a
        ldr x1, =0xc4000015
        hvc #0
        tbz x0, #0, fail
        ldr x0, =0xc4000015
        mov x1, #1
        mov x2, #1
        hvc #0
        cmn x0, #2
        b.ne fail
        ldr x0, =0xc4000015
        mov x1, #1
        mov x2, #0
        hvc #0
        cmn x0, #6
        b.ne fail
        ldr x0, =0xc4000015
        mov x1, #0
        mov x2, #0
        hvc #0
        cmn x0, #6
        b.ne fail
        brk #0x900d
    fail:
        brk #1
    """
    vm, source = make_vm(src, profile="linux-6.13")
    target = vm.create_vcpu(1, power_off=True)
    assert target.get_one_reg(KVM_REG_ARM_PSCI_VERSION) >= psci.PSCI_1_3
    shutdowns = 0
    exit_ = source.run()
    while isinstance(exit_, SystemEventExit):
        assert exit_.type == SystemEvent.SHUTDOWN and exit_.ndata >= 1 and exit_.data[0] & 1
        shutdowns += 1
        source.mp_state = MpState.RUNNABLE
        exit_ = source.run()
    assert isinstance(exit_, FaultExit) and exit_.insn == "brk #0x900d"
    assert shutdowns == 2


# -- smccc_filter.c ---------------------------------------------------------------------------

PSCI_VERSION = 0x8400_0000
CPU_ON64 = 0xC400_0003


@pytest.mark.parametrize("profile", ["linux-6.6", "linux-6.13"])
def test_filter_errors(profile: str) -> None:
    vm = Vm(profile)
    attr = (KVM_ARM_VM_SMCCC_CTRL, KVM_ARM_VM_SMCCC_FILTER)
    # test_pad_must_be_zero
    bad_pad = pack_filter(PSCI_VERSION, 1, DENY, pad=b"\x01" + bytes(14))
    assert errno_of(lambda: vm.set_device_attr(*attr, bad_pad)) == errno.EINVAL
    # test_invalid_nr: an empty range
    assert errno_of(lambda: vm.set_smccc_filter(CPU_ON64, 0, DENY)) == errno.EINVAL
    # a wrapping range
    assert errno_of(lambda: vm.set_smccc_filter(0xFFFF_FFF0, 0x20, DENY)) == errno.EINVAL
    # test_bad_action
    assert errno_of(lambda: vm.set_smccc_filter(CPU_ON64, 1, 3)) == errno.EINVAL
    # test_filter_reserved_range: the Arm Architecture calls, both conventions
    for base in (0x8000_8000, 0xC000_0000, 0x8000_FFFF):
        assert errno_of(lambda base=base: vm.set_smccc_filter(base, 1, DENY)) == errno.EEXIST
    # base 0 with nr 0 covers the whole u32 space, and so the reserved ranges (ref 6.2)
    assert errno_of(lambda: vm.set_smccc_filter(0, 0, DENY)) == errno.EEXIST
    vm.set_smccc_filter(0x8001_0000, 1, DENY)  # just past the reserved range
    # test_overlap_nr
    vm.set_smccc_filter(CPU_ON64, 1, DENY)
    assert errno_of(lambda: vm.set_smccc_filter(CPU_ON64 - 1, 2, FWD)) == errno.EEXIST
    assert errno_of(lambda: vm.set_smccc_filter(CPU_ON64, 1, DENY)) == errno.EEXIST
    vm.set_smccc_filter(CPU_ON64 + 1, 1, FWD)  # adjacent ranges are fine
    # short buffer
    assert errno_of(lambda: vm.set_device_attr(*attr, bytes(16))) == errno.EFAULT


@pytest.mark.parametrize("conduit", ["hvc", "smc"])
def test_filter_denied(conduit: str) -> None:
    vm, vcpu = make_vm(f"movz x0, #0x8400, lsl #16\nmov x1, #9\n{conduit} #0\nbrk #0\n", profile="linux-6.6")
    vm.set_smccc_filter(PSCI_VERSION, 1, DENY)
    assert isinstance(vcpu.run(), FaultExit)
    assert (vcpu.get_reg("x0"), vcpu.get_reg("x1")) == (M64, 0)


@pytest.mark.parametrize("conduit, flags", [("hvc", 0), ("smc", 1)])
def test_filter_fwd_to_user(conduit: str, flags: int) -> None:
    vm, vcpu = make_vm(f"movz x0, #0x8400, lsl #16\n{conduit} #0\nbrk #0\n", profile="linux-6.13")
    vm.set_smccc_filter(PSCI_VERSION, 1, FWD)
    exit_ = vcpu.run()
    assert isinstance(exit_, HypercallExit)
    assert (exit_.nr, exit_.flags, exit_.args, exit_.ret) == (PSCI_VERSION, flags, (0,) * 6, 0)
    # Nothing written back: the guest resumes with x0 == its own function id (gotcha 9).
    vcpu.run()
    assert vcpu.get_reg("x0") == PSCI_VERSION


def test_filter_frozen_after_run_but_probe_still_works() -> None:
    vm, vcpu = make_vm("brk #0\n", profile="linux-6.6")
    vcpu.run()
    assert errno_of(lambda: vm.set_smccc_filter(CPU_ON64, 1, DENY)) == errno.EBUSY
    vm.has_device_attr(KVM_ARM_VM_SMCCC_CTRL, KVM_ARM_VM_SMCCC_FILTER)


# -- hypercalls.c -------------------------------------------------------------------------------

GATED = [
    (KVM_REG_ARM_STD_BMAP, 0, 0x8400_0050),  # TRNG_VERSION
    (KVM_REG_ARM_STD_BMAP, 0, 0xC400_0053),  # TRNG_RND64
    (KVM_REG_ARM_STD_HYP_BMAP, 0, 0xC500_0020),  # PV_TIME_FEATURES
    (KVM_REG_ARM_VENDOR_HYP_BMAP, 0, 0x8600_0000),  # KVM FEATURES
    (KVM_REG_ARM_VENDOR_HYP_BMAP, 1, 0x8600_0001),  # PTP_KVM
]


def _gated_guest() -> str:
    lines = []
    for i, (_, _, fid) in enumerate(GATED):
        lines += [f"ldr x0, ={fid:#x}", "mov x1, #0", "hvc #0", f"mov x{19 + i}, x0"]
    return "\n".join([*lines, "brk #0", ""])


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.6", "linux-6.13"])
def test_hypercalls_register_interface(profile: str) -> None:
    vm = Vm(profile)
    vcpu = vm.create_vcpu(0)
    regs = vcpu.get_reg_list()
    for reg, value in (
        (KVM_REG_ARM_STD_BMAP, 1),
        (KVM_REG_ARM_STD_HYP_BMAP, 1),
        (KVM_REG_ARM_VENDOR_HYP_BMAP, 3),
    ):
        assert reg in regs and vcpu.get_one_reg(reg) == value  # every supported bit, at reset
        assert errno_of(lambda reg=reg, value=value: vcpu.set_one_reg(reg, value | 1 << 5)) == errno.EINVAL
    assert errno_of(lambda: vcpu.get_one_reg(0x6030_0000_0016_0003)) == errno.ENOENT  # BMAP_2: 6.15


@pytest.mark.parametrize("enabled", [False, True])
def test_hypercalls_bitmaps_gate_the_guest(enabled: bool) -> None:
    _vm, vcpu = make_vm(_gated_guest(), profile="linux-6.13")
    vcpu.pvtime_ipa = 0x4010_0000
    for reg in (KVM_REG_ARM_STD_BMAP, KVM_REG_ARM_STD_HYP_BMAP, KVM_REG_ARM_VENDOR_HYP_BMAP):
        vcpu.set_one_reg(reg, vcpu.get_one_reg(reg) if enabled else 0)
    assert isinstance(vcpu.run(), FaultExit)
    results = [vcpu.get_reg(f"x{19 + i}") for i in range(len(GATED))]
    if enabled:
        assert results[0] == 0x10000 and results[1] == 0 and results[3] == 3
        assert M64 not in (results[0], results[1], results[3], results[4])
    else:
        assert results == [M64] * len(GATED)
    # After the first run: a different value is EBUSY, the same value is accepted.
    current = vcpu.get_one_reg(KVM_REG_ARM_STD_BMAP)
    assert errno_of(lambda: vcpu.set_one_reg(KVM_REG_ARM_STD_BMAP, current ^ 1)) == errno.EBUSY
    vcpu.set_one_reg(KVM_REG_ARM_STD_BMAP, current)


@pytest.mark.parametrize("profile", ["rfc-2021", "linux-5.15"])
def test_no_bitmap_registers_before_5_19(profile: str) -> None:
    vcpu = Vm(profile).create_vcpu(0)
    assert KVM_REG_ARM_STD_BMAP not in vcpu.get_reg_list()
    assert KVM_REG_ARM_PSCI_VERSION in vcpu.get_reg_list()
    for reg in (KVM_REG_ARM_STD_BMAP, KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_3):
        assert errno_of(lambda reg=reg: vcpu.set_one_reg(reg, 0)) == errno.ENOENT
        assert errno_of(lambda reg=reg: vcpu.get_one_reg(reg)) == errno.ENOENT


@pytest.mark.parametrize(
    "host, wa1, wa2",
    [
        (HostCpu(), 1, 3),
        (HostCpu(spectre_v2=Mitigation.UNAFFECTED, spectre_v4=Mitigation.UNAFFECTED), 2, 3),
        (HostCpu(spectre_v2=Mitigation.VULNERABLE, spectre_v4=Mitigation.VULNERABLE), 0, 0),
        (HostCpu(ssbs=True), 1, 0),
    ],
)
def test_workaround_registers(host: HostCpu, wa1: int, wa2: int) -> None:
    vcpu = Vm("linux-6.6", host=host).create_vcpu(0)
    assert vcpu.get_one_reg(KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1) == wa1
    assert vcpu.get_one_reg(KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2) == wa2
    assert vcpu.get_one_reg(KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_3) == 1
    for level in range(3):  # a level at or below the host's is accepted, above is EINVAL
        set_wa1 = lambda level=level: vcpu.set_one_reg(KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1, level)  # noqa: E731
        if level <= wa1:
            set_wa1()
        else:
            assert errno_of(set_wa1) == errno.EINVAL
    assert errno_of(lambda: vcpu.set_one_reg(KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1, 0x10)) == errno.EINVAL
    # WA2: NOT_AVAIL/UNKNOWN map to NOT_AVAIL, AVAIL/NOT_REQUIRED to NOT_REQUIRED.
    vcpu.set_one_reg(KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2, 1)
    set_avail = lambda: vcpu.set_one_reg(KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2, 2)  # noqa: E731
    set_enabled = lambda: vcpu.set_one_reg(KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2, 0x12)  # noqa: E731
    if wa2 == 3:
        set_avail()
        set_enabled()  # ENABLED | AVAIL
    else:
        assert errno_of(set_avail) == errno.EINVAL
        assert errno_of(set_enabled) == errno.EINVAL
    # ENABLED with any other level, or bits above it, are refused on every host.
    for bad in (0x13, 0x10, 0x20):
        assert (
            errno_of(lambda bad=bad: vcpu.set_one_reg(KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2, bad))
            == errno.EINVAL
        )


def test_core_registers_round_trip() -> None:
    _vm, vcpu = make_vm("brk #0\n", profile="linux-6.6")
    vcpu.set_one_reg(KVM_REG_ARM_CORE_X[7], 0x1234)
    assert vcpu.get_reg("x7") == 0x1234
    assert vcpu.get_one_reg(KVM_REG_ARM_CORE_PC) == LOAD_ADDR
    assert vcpu.get_reg_list()[:31] == list(KVM_REG_ARM_CORE_X)
    assert KVM_REG_ARM_CORE_X[30] == 0x6030_0000_0010_003C
    assert errno_of(lambda: vcpu.get_one_reg(0x6030_0000_0010_0001)) == errno.ENOENT
