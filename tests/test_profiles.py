"""Profiles side by side: every firmware flow on every profile, and the rules that differ.

The per-profile expectations are stated here, from the reference (sections 0, 1.6, 4, 5.5,
6, 7), so a model change that moves a profile's answer fails a test.
"""

from __future__ import annotations

import errno

import pytest

from emu import (
    KVM_ARM_VM_SMCCC_CTRL,
    KVM_ARM_VM_SMCCC_FILTER,
    KVM_REG_ARM_PSCI_VERSION,
    KVM_REG_ARM_STD_BMAP,
    LOAD_ADDR,
    PROFILES,
    Cap,
    MpState,
    SmcccFilterAction,
    Vm,
)
from emu.abi.exits import HypercallExit, SystemEvent, SystemEventExit
from emu.errors import KvmError
from emu.kvm.filter import pack_filter
from emu.kvm.profiles import get_profile
from emu.smccc import psci
from emu.vmm.boot import boot
from tests.conftest import FIRMWARE, make_vm, run_cli

ALL = list(PROFILES)
UPSTREAM = [p for p in ALL if p != "rfc-2021"]
FILTER = ["linux-6.6", "linux-6.13"]
NO_FILTER = ["rfc-2021", "linux-5.15", "linux-6.1"]
SHARED = 0x4010_0000
M64 = 2**64 - 1
FWD = SmcccFilterAction.FWD_TO_USER
PSCI_RANGES = [(0x8400_0000, 0x20, FWD), (0xC400_0000, 0x20, FWD)]


def test_latest_is_the_newest_profile() -> None:
    assert get_profile("latest") is PROFILES["linux-6.13"]
    assert Vm("latest").profile.name == "linux-6.13"
    assert len(PROFILES) == 5


# -- every firmware flow on every profile -----------------------------------------------------


@pytest.mark.parametrize("profile", ALL)
def test_firmware_flows(profile: str) -> None:
    smp = boot(FIRMWARE / "smp_boot.S", cpus=4, profile=profile)
    smp.assert_system_event("SHUTDOWN")
    assert smp.psci_results("PSCI_CPU_ON64") == ["SUCCESS"] * 3 + ["INVALID_PARAMS (-2)"]
    assert smp.power() == ["off"] * 4
    hot = boot(FIRMWARE / "hotplug.S", cpus=2, profile=profile)
    hot.assert_system_event("SHUTDOWN")
    assert hot.psci_results("PSCI_CPU_ON64") == ["SUCCESS", "ALREADY_ON (-4)"] * 4
    race = boot(FIRMWARE / "cpu_on_race.S", cpus=4, profile=profile)
    race.assert_system_event("SHUTDOWN")
    assert sorted(race.u64(SHARED + 0x100, 3)) == [0, 2**64 - 4, 2**64 - 4]
    reset = boot(FIRMWARE / "system_reset.S", cpus=2, reboots=2, profile=profile)
    assert [e.type.name for e in reset.exits] == ["RESET", "RESET", "SHUTDOWN"]
    ndata = 0 if profile in ("rfc-2021", "linux-5.15") else 1
    assert [e.ndata for e in reset.exits] == [ndata] * 3  # KVM_CAP_SYSTEM_EVENT_DATA, 5.18
    boot(FIRMWARE / "cpu_suspend.S", profile=profile).assert_system_event("SHUTDOWN")
    trng = boot(FIRMWARE / "trng.S", profile=profile)
    trng.assert_system_event("SHUTDOWN")
    boot(FIRMWARE / "exceptions.S", profile=profile).assert_system_event("SHUTDOWN")
    smc = boot(FIRMWARE / "smc_conduit.S", profile=profile)
    smc.assert_system_event("SHUTDOWN")
    conduits = [(e.conduit, e.imm) for e in smc.hypercalls]
    if profile in FILTER:  # v6.4: SMC #0 is dispatched, SMC #1 is not
        assert conduits == [("smc", 0), ("smc", 1), ("smc", 0)]
    else:
        assert conduits == [("smc", 0), ("hvc", 0), ("hvc", 0)]


@pytest.mark.parametrize("profile", ALL)
def test_vendor_call_reaches_the_vmm(profile: str) -> None:
    kw = {"caps": ["hvc-to-user"]} if profile == "rfc-2021" else {}
    if profile in FILTER:
        kw = {"filters": [(0xC600_0040, 1, FWD)]}
    result = boot(FIRMWARE / "vendor_call.S", profile=profile, vmm=FIRMWARE / "vendor_call_vmm.py", **kw)
    if profile in ("linux-5.15", "linux-6.1"):
        # No way to forward a call to userspace: KVM answers NOT_SUPPORTED (guest: brk #1).
        result.assert_fault("brk #1")
        return
    result.assert_system_event("SHUTDOWN")
    exit_ = result.exits[0]
    assert isinstance(exit_, HypercallExit)
    if profile == "rfc-2021":
        assert (exit_.nr, exit_.args[:3]) == (0x1234, (0xC600_0040, 40, 2))
    else:
        assert (exit_.nr, exit_.args, exit_.flags) == (0xC600_0040, (0,) * 6, 0)
    assert result.u64(SHARED) == 42


@pytest.mark.parametrize("profile", ["rfc-2021", *FILTER])
def test_hotadd_with_userspace_psci(profile: str) -> None:
    # rfc-2021: PSCI_TO_USER; linux-6.6+: a FWD_TO_USER filter over the PSCI ranges (ref 3.6).
    if profile == "rfc-2021":
        kw = {"caps": ["hvc-to-user", "psci-to-user"]}
    else:
        kw = {"filters": PSCI_RANGES}
    result = boot(FIRMWARE / "hotadd.S", cpus=3, profile=profile, vmm=FIRMWARE / "hotadd_vmm.py", **kw)
    result.assert_system_event("SHUTDOWN")
    assert result.psci_results("PSCI_CPU_ON64") == ["DENIED (-3)", "SUCCESS"]
    assert {e.handled for e in result.psci} == {"user"}
    nrs = {e.nr for e in result.exits if isinstance(e, HypercallExit)}
    assert nrs == ({0} if profile == "rfc-2021" else {0xC400_0003, 0xC400_0004, 0x8400_0002, 0x8400_0008})


# -- the done-when checks, through the Python API ------------------------------------------------


def _vendor_smc(n: int) -> str:
    return f"ldr x0, ={0xC600_0000 + n:#x}\nmov x1, #7\nsmc #0\nbrk #0x5ec\n"


@pytest.mark.parametrize("n", [0, 5, 63])
def test_filter_forwards_vendor_smc_to_the_vmm(n: int) -> None:
    vm, vcpu = make_vm(_vendor_smc(n), profile="linux-6.6")
    vm.set_smccc_filter(0xC600_0000, 64, SmcccFilterAction.FWD_TO_USER)
    exit_ = vcpu.run()
    assert isinstance(exit_, HypercallExit)
    assert exit_.nr == 0xC600_0000 + n and exit_.flags & 1 and exit_.args == (0,) * 6 and exit_.ret == 0
    # Registers untouched, PC past the SMC (ref 5.4).
    assert (vcpu.get_reg("x0"), vcpu.get_reg("x1"), vcpu.pc) == (0xC600_0000 + n, 7, LOAD_ADDR + 12)
    vcpu.complete_hypercall(0, 99)
    vcpu.run()
    assert vcpu.get_reg("x1") == 99


def test_filter_over_the_arch_range_is_eexist() -> None:
    vm = Vm("linux-6.6")
    with pytest.raises(KvmError) as err:
        vm.set_smccc_filter(0x8000_0000, 1, SmcccFilterAction.DENY)
    assert err.value.errno == errno.EEXIST


def test_filter_after_run_is_ebusy() -> None:
    vm, vcpu = make_vm("brk #0\n", profile="linux-6.6")
    vcpu.run()
    with pytest.raises(KvmError) as err:
        vm.set_smccc_filter(0xC600_0000, 64, SmcccFilterAction.FWD_TO_USER)
    assert err.value.errno == errno.EBUSY


def test_system_off2_hibernate() -> None:
    _vm, vcpu = make_vm("ldr x0, =0xc4000015\nmov x1, #1\nhvc #0\nbrk #0\n", profile="linux-6.13")
    exit_ = vcpu.run()
    assert isinstance(exit_, SystemEventExit)
    assert (exit_.type, exit_.ndata, exit_.data[0]) == (SystemEvent.SHUTDOWN, 1, 1)
    assert vcpu.get_regs()["x0"] == 2**64 - 6 and vcpu.get_reg("x1") == 0


def test_system_reset2_vendor_type() -> None:
    src = "ldr x0, =0xc4000012\nldr x1, =0x80000000\nmov x2, #0x55\nhvc #0\nbrk #0\n"
    _vm, vcpu = make_vm(src, profile="linux-6.13")
    exit_ = vcpu.run()
    assert isinstance(exit_, SystemEventExit)
    assert (exit_.type, exit_.ndata, exit_.data[0]) == (SystemEvent.RESET, 1, 1)
    # Only x0 is preloaded: userspace can still read the reset type and the cookie.
    assert [vcpu.get_reg(r) for r in ("x0", "x1", "x2")] == [2**64 - 6, 0x8000_0000, 0x55]


def test_system_suspend_exits_and_resumes_with_x0_untouched() -> None:
    src = "ldr x0, =0xc400000e\nldr x1, =0x40080100\nmov x2, #3\nhvc #0\nbrk #0\n"
    vm, vcpu = make_vm(src, profile="linux-6.13")
    vm.enable_cap(Cap.ARM_SYSTEM_SUSPEND)
    exit_ = vcpu.run()
    assert isinstance(exit_, SystemEventExit)
    assert (exit_.type, exit_.ndata, exit_.data) == (SystemEvent.SUSPEND, 0, ())
    stop = vcpu.run()
    assert stop.insn == "brk #0" and vcpu.get_reg("x0") == 0xC400_000E and vcpu.get_reg("x2") == 3


@pytest.mark.parametrize("profile", ["rfc-2021", "linux-5.15"])
def test_system_suspend_without_the_kernel_support(profile: str) -> None:
    vm, vcpu = make_vm("ldr x0, =0xc400000e\nhvc #0\nbrk #0\n", profile=profile)
    with pytest.raises(KvmError):
        vm.enable_cap(Cap.ARM_SYSTEM_SUSPEND)
    vcpu.run()
    assert vcpu.get_reg("x0") == M64


SUSPEND_GUEST = """
    mrs     x9, cntvct_el0          // wake-up source: the virtual timer, 1 ms ahead
    mrs     x10, cntfrq_el0
    mov     x11, #1000
    udiv    x10, x10, x11
    add     x9, x9, x10
    msr     cntv_cval_el0, x9
    mov     x9, #1
    msr     cntv_ctl_el0, x9
    ldr     x20, =0x40100000
    ldr     x0, =0xc400000e
    adr     x1, resumed
    mov     x2, #0x77
    hvc     #0
    str     x0, [x20]              // DENIED lands here
    ldr     x0, =0x84000008
    hvc     #0
resumed:                           // reset state: x0 = context id, other GPRs 0
    ldr     x20, =0x40100000
    str     x0, [x20, #8]
    ldr     x0, =0x84000008
    hvc     #0
"""


@pytest.mark.parametrize("cpus", [1, 2])
def test_default_vmm_system_suspend(cpus: int) -> None:
    # The default VMM denies SYSTEM_SUSPEND while another vCPU is on (DEN0022D.b 5.19.2) and
    # otherwise suspends the caller (KVM_MP_STATE_SUSPENDED) until the timer's WAKEUP exit,
    # then resumes it at its entry point with the context id.
    src = SUSPEND_GUEST
    if cpus == 2:
        src = "ldr x0, =0xc4000003\nmov x1, #1\nadr x2, spin\nmov x3, #0\nhvc #0\n" + src
        src += "spin: wfe\nb spin\n"
    result = boot(source=src, cpus=cpus, profile="linux-6.6", caps=["system-suspend"])
    result.assert_system_event("SHUTDOWN")
    if cpus == 2:
        assert [e.type.name for e in result.exits] == ["SUSPEND", "SHUTDOWN"]
        assert result.u64(SHARED) == 2**64 - 3  # DENIED
    else:
        assert [e.type.name for e in result.exits] == ["SUSPEND", "WAKEUP", "SHUTDOWN"]
        assert result.u64(SHARED + 8) == 0x77
        assert result.vm.clock.ns >= 1_000_000  # woken by the timer, not at once


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.13"])
def test_suspended_vcpu_wakes_with_a_wakeup_exit(profile: str) -> None:
    src = "mrs x9, cntvct_el0\nadd x9, x9, #100\nmsr cntv_cval_el0, x9\nmov x9, #1\nmsr cntv_ctl_el0, x9\nbrk #0\n"
    _vm, vcpu = make_vm(src, profile=profile)
    vcpu.run()
    vcpu.mp_state = MpState.SUSPENDED
    for _ in range(2):  # sticky: WAKEUP again until userspace makes it RUNNABLE
        exit_ = vcpu.run()
        assert isinstance(exit_, SystemEventExit)
        assert (exit_.type, exit_.ndata) == (SystemEvent.WAKEUP, 0)
        assert vcpu.mp_state == MpState.SUSPENDED
    vcpu.mp_state = MpState.RUNNABLE
    assert vcpu.run().insn == "brk #0"


def test_suspended_vcpu_without_a_wake_source_is_idle() -> None:
    vm, vcpu = make_vm("brk #0\n", profile="linux-6.6")
    vm.create_vcpu(1, power_off=True)
    vcpu.mp_state = MpState.SUSPENDED
    assert vm.run().reason.value == "idle"


# -- capabilities by name, numbers per profile ----------------------------------------------------


@pytest.mark.parametrize("profile", UPSTREAM)
def test_rfc_cap_numbers_mean_nothing_upstream(profile: str) -> None:
    vm = Vm(profile)
    for number in (199, 200, 201):
        assert vm.check_extension(number) == 0
        with pytest.raises(KvmError) as err:
            vm.enable_cap(number)
        assert err.value.errno == errno.EINVAL
    assert vm.check_extension(Cap.ARM_HVC_TO_USER) == 0
    with pytest.raises(KvmError):
        vm.enable_cap(Cap.ARM_HVC_TO_USER)
    assert vm.check_extension(Cap.ARM_PSCI_0_2) == 1 and vm.cap_number(Cap.ARM_PSCI_0_2) == 102


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.6", "linux-6.13"])
def test_system_suspend_cap_by_number(profile: str) -> None:
    vm = Vm(profile)
    assert vm.check_extension(216) == 1 and vm.check_extension(215) == 1
    vm.enable_cap(216)
    assert vm.enabled_caps == (Cap.ARM_SYSTEM_SUSPEND,)
    with pytest.raises(KvmError):
        vm.enable_cap(Cap.SYSTEM_EVENT_DATA)  # reported, not enableable on arm64


def test_rfc_cap_numbers() -> None:
    vm = Vm("rfc-2021")
    assert vm.check_extension(200) == 1 and vm.check_extension(216) == 0
    vm.enable_cap(200)
    assert vm.enabled_caps == (Cap.ARM_HVC_TO_USER,)


# -- VM attributes ------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", NO_FILTER)
def test_no_filter_before_6_4(profile: str) -> None:
    vm = Vm(profile)
    for call in (
        lambda: vm.has_device_attr(KVM_ARM_VM_SMCCC_CTRL, KVM_ARM_VM_SMCCC_FILTER),
        lambda: vm.set_smccc_filter(0xC600_0000, 1, SmcccFilterAction.DENY),
    ):
        with pytest.raises(KvmError) as err:
            call()
        assert err.value.errno == errno.ENXIO


@pytest.mark.parametrize("profile", FILTER)
def test_filter_attribute_exists(profile: str) -> None:
    vm = Vm(profile)
    vm.has_device_attr(KVM_ARM_VM_SMCCC_CTRL, KVM_ARM_VM_SMCCC_FILTER)
    with pytest.raises(KvmError) as err:
        vm.has_device_attr(KVM_ARM_VM_SMCCC_CTRL, 1)
    assert err.value.errno == errno.ENXIO
    vm.set_device_attr(KVM_ARM_VM_SMCCC_CTRL, KVM_ARM_VM_SMCCC_FILTER, pack_filter(0xC200_0000, 16, 1))
    assert vm.smccc_filter.to_json() == [{"base": 0xC200_0000, "nr_functions": 16, "action": "deny"}]


# -- PSCI_VERSION per vCPU, PV time, SCTLR ---------------------------------------------------------


@pytest.mark.parametrize("profile", ALL)
def test_psci_version_register_per_vcpu(profile: str) -> None:
    vm = Vm(profile)
    v02 = vm.create_vcpu(0)
    v01 = vm.create_vcpu(1, psci_0_2=False)
    assert v02.get_one_reg(KVM_REG_ARM_PSCI_VERSION) == get_profile(profile).psci_default_version
    assert v01.get_one_reg(KVM_REG_ARM_PSCI_VERSION) == psci.PSCI_0_1
    for vcpu, bad in ((v02, psci.PSCI_0_1), (v01, psci.PSCI_0_2), (v01, psci.PSCI_1_0)):
        with pytest.raises(KvmError) as err:
            vcpu.set_one_reg(KVM_REG_ARM_PSCI_VERSION, bad)
        assert err.value.errno == errno.EINVAL
    v02.set_one_reg(KVM_REG_ARM_PSCI_VERSION, psci.PSCI_0_2)
    assert vm.psci_version_for(v02) == psci.PSCI_0_2
    newest = get_profile(profile).psci_versions[-1]
    with pytest.raises(KvmError):
        v02.set_one_reg(KVM_REG_ARM_PSCI_VERSION, newest + 1)
    # The VM-wide convenience writes the register through every vCPU: v01 refuses 0.2.
    with pytest.raises(KvmError):
        vm.set_psci_version(psci.PSCI_0_2)


@pytest.mark.parametrize(
    "version", [psci.PSCI_0_2, psci.PSCI_1_0, psci.PSCI_1_1, psci.PSCI_1_2, psci.PSCI_1_3]
)
def test_guest_sees_the_selected_psci_version(version: int) -> None:
    src = "movz x0, #0x8400, lsl #16\nhvc #0\nmov x19, x0\nldr x0, =0x8400000a\nldr x1, =0x84000015\nhvc #0\nbrk #0\n"
    _vm, vcpu = make_vm(src, profile="linux-6.13")
    vcpu.set_one_reg(KVM_REG_ARM_PSCI_VERSION, version)
    vcpu.run()
    assert vcpu.get_reg("x19") == version
    # PSCI_FEATURES(SYSTEM_OFF2): the HIBERNATE_OFF bitmask from 1.3, else NOT_SUPPORTED.
    want = 1 if version == psci.PSCI_1_3 else M64
    assert vcpu.get_reg("x0") == want


def test_pvtime_ipa_rules() -> None:
    vm = Vm()
    vcpu = vm.create_vcpu(0)
    for bad, code in ((0x4010_0020, errno.EINVAL), (0x1000, errno.EINVAL)):
        with pytest.raises(KvmError) as err:
            vcpu.pvtime_ipa = bad
        assert err.value.errno == code
    vcpu.pvtime_ipa = 0x4010_0040
    with pytest.raises(KvmError) as err:
        vcpu.pvtime_ipa = 0x4010_0080
    assert err.value.errno == errno.EEXIST


@pytest.mark.parametrize("profile", ["rfc-2021", "linux-6.13"])
def test_sctlr_reset_value(profile: str) -> None:
    src = "mrs x19, sctlr_el1\nldr x0, =0xc4000003\nmov x1, #1\nadr x2, sec\nmov x3, #0\nhvc #0\nb .\nsec: mrs x20, sctlr_el1\nbrk #0\n"
    vm, vcpu = make_vm(src, profile=profile)
    vm.create_vcpu(1, power_off=True)
    vm.run()
    assert vcpu.get_reg("x19") == 0x00C5_0078
    vm.vcpus[1].run()
    assert vm.vcpus[1].get_reg("x20") == 0x00C5_0078


def test_psci_to_user_exemption_compares_all_of_x1() -> None:
    src = "ldr x0, =0x8400000a\nldr x1, =0xffffffff80000000\nhvc #0\nbrk #0\n"
    _vm, vcpu = make_vm(src, Cap.ARM_HVC_TO_USER, Cap.ARM_PSCI_TO_USER)
    assert isinstance(vcpu.run(), HypercallExit)


# -- CLI -------------------------------------------------------------------------------------------


def test_cli_profiles_table() -> None:
    result = run_cli("profiles")
    assert result.status == 0
    for name in ALL:
        assert name in result.stdout
    assert "stable backports are not modelled" in result.stdout
    assert "PSCI default" in result.stdout and "SMCCC filter" in result.stdout


def test_cli_diff_psci_boot_check() -> None:
    result = run_cli("diff", FIRMWARE / "psci_boot_check.S", "--profiles", "rfc-2021,linux-6.13")
    assert result.status == 8, result.stderr
    lines = result.stdout.splitlines()
    version = next(line for line in lines if "hvc #0x0 PSCI_VERSION()" in line)
    assert version.startswith("*") and "0x10000" in version and "0x10003" in version
    smc = next(line for line in lines if "smc #0x0 PSCI_VERSION()" in line)
    assert smc.startswith("*") and "NOT_SUPPORTED (-1)" in smc
    same = run_cli("diff", FIRMWARE / "psci_boot_check.S", "--profiles", "linux-6.6,linux-6.6", "--json")
    assert same.status == 0 and same.json()["same"]


def test_python_diff_renders_html() -> None:
    import emu

    result = emu.diff(FIRMWARE / "psci_boot_check.S", ["rfc-2021", "linux-6.6"])
    assert not result.same
    assert [r.index for r in result.differing] == [4, 5, 10]
    assert "<table>" in result._repr_html_()


def test_cli_filter_and_set_reg() -> None:
    args = ["run", FIRMWARE / "trng.S", "--profile", "linux-6.6", "--json"]
    plain = run_cli(*args)
    assert plain.status == 0 and plain.json()["filter"] == []
    off = run_cli(*args, "--set-reg", "STD_BMAP=0")
    assert off.status == 3  # TRNG_VERSION answers NOT_SUPPORTED; the guest stops at brk #1
    assert off.json()["hypercalls"][0]["result"] == M64
    fwd = run_cli(*args, "--smccc-filter", "0x84000050:4:fwd-to-user")
    doc = fwd.json()
    assert doc["filter"] == [{"base": 0x8400_0050, "nr_functions": 4, "action": "fwd-to-user"}]
    assert doc["exits"][0]["nr"] == 0x8400_0050 and doc["exits"][0]["flags"] == 0
    bad = run_cli(*args, "--smccc-filter", "0x80000000:1:deny")
    assert bad.status == 1 and "EEXIST" in bad.stderr
    bad = run_cli(*args, "--set-reg", f"{KVM_REG_ARM_STD_BMAP:#x}=2")
    assert bad.status == 1 and "EINVAL" in bad.stderr
    assert run_cli(*args, "--smccc-filter", "1:2:maybe").status == 2


@pytest.mark.parametrize("profile, functions", [("rfc-2021", 28), ("linux-6.1", 33), ("latest", 35)])
def test_cli_coverage_per_profile(profile: str, functions: int) -> None:
    result = run_cli("coverage", FIRMWARE / "psci_boot_check.S", "--profile", profile, "--json")
    assert result.status == 0, result.stderr
    (name, report), *rest = result.json().items()
    assert not rest and name == get_profile(profile).name
    assert (report["functions"], report["covered"]) == (functions, 8)
