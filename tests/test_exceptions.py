"""Guest exception delivery: every case is taken by the guest's own vectors and checked
through the ESR/ELR/SPSR/FAR values its handler recorded (firmware/exceptions.S)."""

from __future__ import annotations

import struct

import pytest

from emu.abi.exits import FaultExit
from emu.arm.exceptions import vector_offset
from emu.vmm.boot import boot
from emu.vmm.devices import PL011
from tests.conftest import FIRMWARE, VECTOR_TABLE, make_vm

RECORDS = 0x4010_0000
EL1H, EL0T = 0x3C5, 0x3C0  # SPSR: mode and DAIF as the guest had them

# (what, EC, ISS, ELR relative to x14, SPSR, FAR or None when UNKNOWN)
EXPECTED = [
    ("UDF at EL1", 0x00, 0x0, 0, EL1H, None),
    ("MRS HCR_EL2 at EL1", 0x00, 0x0, 0, EL1H, None),
    ("SVC #0x77 at EL1", 0x15, 0x77, 4, EL1H, None),
    ("BRK #0x55", 0x3C, 0x55, 0, EL1H, None),
    ("load outside RAM at EL1", 0x25, 0x10, 0, EL1H, 0x1000),
    ("store outside RAM at EL1", 0x25, 0x10, 0, EL1H, 0x1008),
    ("fetch outside RAM at EL1", 0x21, 0x10, 0, EL1H, 0x2000),
    ("unaligned LDAXR", 0x25, 0x21, 0, EL1H, 0x4010_0403),
    ("SVC #1 at EL0", 0x15, 0x1, 4, EL0T, None),
    ("HVC at EL0", 0x00, 0x0, 0, EL0T, None),
    ("SMC at EL0", 0x00, 0x0, 0, EL0T, None),
    ("load outside RAM at EL0", 0x24, 0x10, 0, EL0T, 0x1000),
    ("UDF at EL0", 0x00, 0x0, 0, EL0T, None),
    ("SVC #0xff at EL0 (end)", 0x15, 0xFF, 4, EL0T, None),
]


@pytest.fixture(scope="module")
def records() -> list[tuple[int, int, int, int, int]]:
    result = boot(FIRMWARE / "exceptions.S")
    result.assert_system_event("SHUTDOWN")
    data = result.memory(RECORDS, 48 * (len(EXPECTED) + 1))
    recs = [struct.unpack_from("<5Q", data, 48 * i) for i in range(len(EXPECTED) + 1)]
    assert recs[-1] == (0, 0, 0, 0, 0), "more exceptions than expected"
    return recs[:-1]


@pytest.mark.parametrize("index", range(len(EXPECTED)), ids=[e[0] for e in EXPECTED])
def test_exception_record(records, index: int) -> None:
    what, ec, iss, elr_delta, spsr, far = EXPECTED[index]
    esr, elr, got_spsr, got_far, x14 = records[index]
    assert esr >> 26 == ec, what
    assert (esr >> 25) & 1 == 1, "IL: 32-bit instruction"
    assert esr & 0x1FF_FFFF == iss, what
    assert elr == x14 + elr_delta, what
    assert got_spsr == spsr, what
    if far is not None:
        assert got_far == far, what


def test_no_hypercall_reached_kvm_from_el0() -> None:
    result = boot(FIRMWARE / "exceptions.S")
    assert [(e.conduit, e.name) for e in result.hypercalls] == [("hvc", "PSCI_SYSTEM_OFF")]


@pytest.mark.parametrize("pstate, offset", [(0x3C5, 0x200), (0x3C4, 0x000), (0x3C0, 0x400)])
def test_vector_offsets(pstate: int, offset: int) -> None:
    assert vector_offset(pstate) == offset


def test_without_vectors_the_run_stops_instead_of_jumping_to_zero() -> None:
    result = boot(source="nop\n.word 0\n")
    stop = result.assert_fault("udf #0")
    assert "no usable exception vectors (VBAR_EL1 = 0x0 is 0)" in stop.cause and stop.pc == 0x4008_0004


def test_vbar_is_a_virtual_address() -> None:
    # Vectors outside RAM by physical address are still vectors if they translate: a VBAR
    # that does not translate (here, with the MMU off, outside RAM) is reported as such.
    result = boot(source="ldr x0, =0x12340000\nmsr vbar_el1, x0\nisb\n.word 0\n")
    stop = result.assert_fault("udf #0")
    assert "VBAR_EL1 = 0x12340000 does not translate to guest memory" in stop.cause


MMU_FAULT = (
    """
    ldr     x0, =vectors
    msr     vbar_el1, x0
    // Identity-map 1 GiB of RAM with a level-1 block; leave VA 0x80000000 unmapped.
    ldr     x1, =0x40100000
    ldr     x2, =0x40000701
    str     x2, [x1, #8]
    msr     ttbr0_el1, x1
    mov     x3, #0xff
    msr     mair_el1, x3
    ldr     x4, =0x803519
    msr     tcr_el1, x4
    isb
    mrs     x5, sctlr_el1
    orr     x5, x5, #1
    msr     sctlr_el1, x5
    isb
    ldr     x6, =0x80000010
    adr     x14, fault
fault:
    ldr     x0, [x6]
    ldr     x0, =0x84000008
    hvc     #0
sync:
    mrs     x10, esr_el1
    mrs     x11, elr_el1
    mrs     x13, far_el1
    ldr     x9, =0x40200000
    stp     x10, x11, [x9]
    stp     x13, x14, [x9, #16]
    add     x11, x11, #4
    msr     elr_el1, x11
    eret
"""
    + VECTOR_TABLE
)


def test_translation_fault_with_the_mmu_on() -> None:
    result = boot(source=MMU_FAULT)
    result.assert_system_event("SHUTDOWN")
    esr, elr, far, x14 = result.u64(0x4020_0000, 4)
    assert esr >> 26 == 0x25 and esr & 0x3F == 0x05  # DABT_CUR, translation fault level 1
    assert elr == x14 and far == 0x8000_0010


# One fault, taken by the guest's vectors: the handler records ESR, ELR and FAR at
# 0x40200000 with x14 (= the ``fault`` label) and the number of exceptions taken, then
# powers off. ``{setup}`` runs first, with x1 = 0x09000000 (the PL011), then ``{body}``
# at ``fault``.
ONE_FAULT = (
    """
    ldr     x0, =vectors
    msr     vbar_el1, x0
    ldr     x1, =0x09000000
{setup}
    adr     x14, fault
fault:
{body}
    ldr     x0, =0x84000008
    hvc     #0
sync:
    mrs     x10, esr_el1
    mrs     x11, elr_el1
    mrs     x13, far_el1
    add     x15, x15, #1
    ldr     x9, =0x40200000
    stp     x10, x11, [x9]
    stp     x13, x14, [x9, #16]
    str     x15, [x9, #32]
    ldr     x0, =0x84000008
    hvc     #0
"""
    + VECTOR_TABLE
)


def one_fault(body: str, setup: str = "", **boot_args) -> tuple[int, int, int, int]:
    """Run ``body`` under ONE_FAULT: (ESR, ELR as an offset from ``fault``, FAR, exceptions taken)."""
    result = boot(source=ONE_FAULT.format(setup=setup, body=body), **boot_args)
    result.assert_system_event("SHUTDOWN")
    esr, elr, far, x14, count = result.u64(0x4020_0000, 5)
    return esr, elr - x14, far, count


def test_instruction_fetch_from_a_device_is_a_prefetch_abort() -> None:
    # KVM cannot execute MMIO: it injects an external abort on the fetch (FSC 0x10).
    esr, _elr, far, count = one_fault("    br x1")
    assert (esr, far, count) == (0x8600_0010, 0x0900_0000, 1)


def test_instruction_fetch_from_a_device_without_vectors_is_a_fault_exit() -> None:
    vm, vcpu = make_vm("ldr x0, =0x09000000\nbr x0\n")
    vm.add_device(PL011())
    stop = vcpu.run()
    assert isinstance(stop, FaultExit) and "instruction fetch from device memory" in stop.cause
    assert stop.pc == 0x0900_0000


# -- fault status: the MMU off, addresses beyond the physical address range -------------------
# Unicorn's Cortex-A72 implements 44 physical address bits (ID_AA64MMFR0_EL1.PARange = 4).
# With stage 1 off, an address above that is an Address size fault at level 0 (FSC 0);
# one inside it that is neither RAM nor a device is KVM's external abort (FSC 0x10).


@pytest.mark.parametrize(
    "address, fsc",
    [(0xFDE7_16B9_11F0_45C0, 0x00), (1 << 48, 0x00), (0xFFFF_FFFF_FFFF_0000, 0x00), (1 << 40, 0x10)],
)
@pytest.mark.parametrize("insn, wnr", [("ldr x0, [x2]", 0), ("str x0, [x2]", 1 << 6)])
def test_access_with_the_mmu_off(address: int, fsc: int, insn: str, wnr: int) -> None:
    esr, elr, far, count = one_fault(f"    {insn}", f"    ldr x2, ={address:#x}")
    if fsc == 0x10:
        wnr = 0  # KVM's injected abort (inject_abt64) carries no WnR
    assert (esr, elr, far, count) == (0x9600_0000 | wnr | fsc, 0, address, 1)


def test_dc_zva_beyond_the_pa_range_is_a_write_abort() -> None:
    # DC ZVA faults as a store (WnR = 1) on the address in its register.
    esr, elr, far, count = one_fault("    dc zva, x2", "    ldr x2, =0x1000000000000")
    assert (esr, elr, far, count) == (0x9600_0040, 0, 1 << 48, 1)


def test_an_encoding_capstone_rejects_is_still_decoded() -> None:
    # LDAXR x19, [x27] with non-canonical Rs/Rt2 fields: Unicorn executes it.
    esr, elr, far, count = one_fault("    .word 0xc854e373", "    ldr x27, =0x1000000000000")
    assert (esr, elr, far, count) == (0x9600_0000, 0, 1 << 48, 1)


def test_misaligned_exclusive_is_an_alignment_fault_even_beyond_the_pa_range() -> None:
    # Alignment of exclusives is checked before translation.
    esr, _elr, far, _count = one_fault("    ldaxr x0, [x2]", "    ldr x2, =0x1000000000001")
    assert (esr, far) == (0x9600_0021, (1 << 48) + 1)


# An SVC is taken and returned from, then an ERET lands on a block whose store faults.
# The handler logs every ELR and returns past the instruction: the store must be
# reported once, at the store.
FAULT_AFTER_ERET = (
    """
    ldr     x0, =vectors
    msr     vbar_el1, x0
    ldr     x5, =0x40100000
    mov     x6, #0x1000
    ldr     x21, =0x40200000
    svc     #1
    adr     x9, next
    msr     elr_el1, x9
    mov     x9, #0x3c5
    msr     spsr_el1, x9
    eret
next:
    add     x20, x20, #1
    ldr     x3, [x5]
store:
    str     x0, [x6, #24]
    adr     x22, store
    ldr     x0, =0x84000008
    hvc     #0
sync:
    mrs     x10, elr_el1
    str     x10, [x21], #8
    mrs     x11, esr_el1
    lsr     x11, x11, #26
    cmp     x11, #0x15
    b.eq    svc_return
    add     x10, x10, #4
svc_return:
    msr     elr_el1, x10
    eret
"""
    + VECTOR_TABLE
)


@pytest.mark.parametrize("max_insns", [None, 100_000], ids=["free", "counted"])
def test_a_fault_after_eret_is_reported_at_the_faulting_instruction(max_insns) -> None:
    result = boot(source=FAULT_AFTER_ERET, max_insns=max_insns)
    result.assert_system_event("SHUTDOWN")
    aborts = [e for e in result.vm.trace.exceptions if e.esr >> 26 == 0x25]
    store = result.vm.vcpus[0].get_reg("x22")
    assert [(e.elr, e.far) for e in aborts] == [(store, 0x1018)]
