"""The VM file descriptor: capabilities, vCPU creation and MPIDRs, mp_state, memory, PSCI version."""

from __future__ import annotations

import errno
import time

import pytest

from emu import Cap, MpState, Vm
from emu.abi.exits import Power
from emu.errors import ImageError, KvmError
from emu.kvm.caps import parse_cap
from emu.kvm.vcpu import reset_mpidr
from emu.smccc.psci import PSCI_0_2, PSCI_1_0, PSCI_1_1


def test_check_extension_reports_the_profile_caps() -> None:
    vm = Vm()
    assert vm.check_extension(Cap.ARM_HVC_TO_USER) == 1
    assert vm.check_extension(Cap.ARM_PSCI_0_2) == 1
    assert vm.check_extension(12345) == 0


@pytest.mark.parametrize("cap", [Cap.ARM_PSCI, 12345])
def test_enable_cap_rejects_what_cannot_be_enabled(cap) -> None:
    with pytest.raises(KvmError) as err:
        Vm().enable_cap(cap)
    assert err.value.errno == errno.EINVAL


def test_enable_cap_takes_no_flags() -> None:
    with pytest.raises(KvmError) as err:
        Vm().enable_cap(Cap.ARM_HVC_TO_USER, flags=1)
    assert err.value.errno == errno.EINVAL


def test_psci_to_user_only_after_hvc_to_user() -> None:
    vm = Vm()
    with pytest.raises(KvmError):
        vm.enable_cap(Cap.ARM_PSCI_TO_USER)
    vm.enable_cap(Cap.ARM_HVC_TO_USER)
    vm.enable_cap(Cap.ARM_PSCI_TO_USER)
    assert vm.enabled_caps == (Cap.ARM_HVC_TO_USER, Cap.ARM_PSCI_TO_USER)


@pytest.mark.parametrize(
    "text", ["hvc-to-user", "ARM_HVC_TO_USER", "KVM_CAP_ARM_HVC_TO_USER", "200", "HVC_TO_USER"]
)
def test_cap_spellings(text: str) -> None:
    assert parse_cap(text) is Cap.ARM_HVC_TO_USER


def test_unknown_cap_spelling() -> None:
    with pytest.raises(ValueError, match="known: psci"):
        parse_cap("hvc-to-kernel")


@pytest.mark.parametrize(
    "vcpu_id, mpidr",
    [
        (0, 0x8000_0000),
        (1, 0x8000_0001),
        (15, 0x8000_000F),
        (16, 0x8000_0100),
        (17, 0x8000_0101),
        (0x1000, 0x8001_0000),
    ],
)
def test_reset_mpidr_packs_16_cpus_per_cluster(vcpu_id: int, mpidr: int) -> None:
    assert reset_mpidr(vcpu_id) == mpidr


def test_guest_reads_its_mpidr(tmp_program) -> None:
    from emu import LOAD_ADDR

    vm = Vm(timeout=10)
    vm.load_asm("mrs x0, mpidr_el1\nbrk #0\n")
    vm.create_vcpu(0)
    vcpu = vm.create_vcpu(17)
    vcpu.pc = LOAD_ADDR
    vcpu.run()
    assert vcpu.get_reg("x0") == 0x8000_0101


def test_vcpu_ids_are_unique() -> None:
    vm = Vm()
    vm.create_vcpu(0)
    with pytest.raises(KvmError) as err:
        vm.create_vcpu(0)
    assert err.value.errno == errno.EEXIST


def test_power_off_feature_starts_stopped() -> None:
    vm = Vm()
    assert vm.create_vcpu(0).mp_state == MpState.RUNNABLE
    assert vm.create_vcpu(1, power_off=True).mp_state == MpState.STOPPED


def test_set_mp_state() -> None:
    vm = Vm()
    vcpu = vm.create_vcpu(0)
    vcpu.mp_state = MpState.STOPPED
    assert vcpu.mp_state == MpState.STOPPED
    with pytest.raises(KvmError):
        vcpu.mp_state = 7
    with pytest.raises(KvmError):
        vcpu.mp_state = MpState.SUSPENDED  # arrived with SYSTEM_SUSPEND in 5.19
    # RFC 3/5 reports the cap but accepts HALTED in SET_MP_STATE ungated; it cannot be enabled.
    assert vm.check_extension(Cap.ARM_MP_HALTED) == 1
    with pytest.raises(KvmError) as err:
        vm.enable_cap(Cap.ARM_MP_HALTED)
    assert err.value.errno == errno.EINVAL
    vcpu.mp_state = MpState.HALTED
    assert vcpu.mp_state == MpState.HALTED
    vcpu.mp_state = MpState.RUNNABLE
    assert vcpu.mp_state == MpState.RUNNABLE


def test_power_changes_are_recorded() -> None:
    vm = Vm()
    vcpu = vm.create_vcpu(0)
    vcpu.mp_state = MpState.STOPPED
    assert [(e.vcpu, e.power, e.by) for e in vm.power_events] == [(0, Power.OFF, None)]


def test_psci_version_register() -> None:
    vm = Vm()
    assert vm.psci_version == PSCI_1_0
    vm.set_psci_version(PSCI_0_2)
    assert vm.psci_version_for(vm.create_vcpu(0)) == PSCI_0_2
    with pytest.raises(KvmError):
        vm.set_psci_version(PSCI_1_1)  # 1.1 arrived in 5.18


def test_psci_0_2_version_seen_by_the_guest() -> None:
    from emu import LOAD_ADDR

    vm = Vm(timeout=10)
    vm.set_psci_version(PSCI_0_2)
    vm.load_asm("movz x0, #0x8400, lsl #16\nhvc #0\nbrk #0\n")
    vcpu = vm.create_vcpu(0)
    vcpu.pc = LOAD_ADDR
    vcpu.run()
    assert vcpu.get_reg("x0") == 0x2


def test_memory_bounds() -> None:
    vm = Vm(mem_size=1 << 20)
    vm.write_memory(0x4000_0000, b"abcd")
    assert vm.read_memory(0x4000_0000, 4) == b"abcd"
    with pytest.raises(ImageError):
        vm.write_memory(0x4010_0000 - 2, b"abcd")
    with pytest.raises(ImageError):
        vm.read_memory(0x3FFF_FFFF, 1)


@pytest.mark.parametrize("size", [0, 1000, -4096])
def test_memory_size_must_be_pages(size: int) -> None:
    with pytest.raises(ValueError):
        Vm(mem_size=size)


def test_host_writes_reach_code_already_translated() -> None:
    # Unicorn keeps translated blocks after host writes (engine notes 0.7); write_memory
    # must drop them so a patched instruction takes effect.
    from emu import LOAD_ADDR

    vm = Vm(timeout=10)
    vm.load_asm("mov x0, #1\nbrk #0\n")
    vcpu = vm.create_vcpu(0)
    vcpu.pc = LOAD_ADDR
    vcpu.run()
    assert vcpu.get_reg("x0") == 1
    vm.load_asm("mov x0, #2\nbrk #0\n")
    vcpu.pc = LOAD_ADDR
    vcpu.run()
    assert vcpu.get_reg("x0") == 2


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="rfc-2021"):
        Vm("linux-1.0")


def test_more_vcpus_than_kvm_allows_are_refused_before_any_is_built() -> None:
    from emu.kvm.vm import KVM_MAX_VCPUS

    start = time.monotonic()
    with pytest.raises(KvmError) as err:
        Vm(cpus=KVM_MAX_VCPUS + 1)
    assert err.value.errno == errno.EINVAL and "at most 512 vCPUs" in str(err.value)
    assert time.monotonic() - start < 1


def test_guest_ram_the_host_cannot_hold_is_refused_up_front() -> None:
    with pytest.raises(KvmError) as err:
        Vm(mem_size=1 << 46)  # 64 TiB
    assert err.value.errno == errno.ENOMEM and "of host memory" in str(err.value)


def test_loading_an_empty_image_is_an_error() -> None:
    with pytest.raises(ImageError, match="empty image"):
        Vm().load(b"")
    Vm().write_memory(0x4000_0000, b"")  # writing nothing is fine
