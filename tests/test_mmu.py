"""MMU across vCPUs: broadcast TLB maintenance reaches the other vCPUs' own TLBs."""

from __future__ import annotations

import pytest

from emu import trap
from emu.arm.syshook import ActionTable
from emu.vmm.boot import Schedule, boot
from tests.conftest import VECTOR_TABLE, block_tables

# Both vCPUs map VA 0x7fe00000 with shared tables; vCPU 0 remaps it from page A (holds 1)
# to page B (holds 2) and broadcasts TLBI VMALLE1IS; vCPU 1 must then read 2.
# VA 0x7fe00000 maps page A (0x40400000) first.
TLBI_BROADCAST = (
    block_tables(0x4040_0000)
    + """    ldr x7, =0x40400000
    mov x8, #1
    str x8, [x7]
    ldr x7, =0x40600000
    mov x8, #2
    str x8, [x7]
    ldr x0, =0xc4000003
    mov x1, #1
    adr x2, second
    mov x3, #0
    hvc #0
    bl mmu_on
    ldr x20, =0x40200000        // flags
wait_read1:
    ldr x9, [x20]
    cbz x9, wait_read1
    // remap VA 0x7fe00000 to page B and broadcast the invalidation
    ldr x3, =0x40101000
    ldr x6, =0x40600701
    str x6, [x3, #4088]
    dsb ishst
    tlbi vmalle1is
    dsb ish
    isb
    mov x9, #1
    str x9, [x20, #8]
wait_read2:
    ldr x9, [x20, #16]
    cbz x9, wait_read2
    ldr x0, =0x84000008
    hvc #0
second:
    bl mmu_on
    ldr x20, =0x40200000
    ldr x21, =0x7fe00000
    ldr x22, [x21]              // through page A: 1
    str x22, [x20, #24]
    mov x9, #1
    str x9, [x20]
wait_remap:
    ldr x9, [x20, #8]
    cbz x9, wait_remap
    ldr x22, [x21]              // through page B once the TLBI reached this vCPU: 2
    str x22, [x20, #32]
    str x9, [x20, #16]
    ldr x0, =0x84000002
    hvc #0
mmu_on:
    ldr x1, =0x40100000
    msr ttbr0_el1, x1
    mov x3, #0xff
    msr mair_el1, x3
    ldr x4, =0x803519
    msr tcr_el1, x4
    isb
    mrs x5, sctlr_el1
    orr x5, x5, #1
    msr sctlr_el1, x5
    isb
    ret
"""
)


@pytest.mark.parametrize("schedule", [Schedule("rr"), Schedule("random", 1), Schedule("random", 2)], ids=str)
def test_tlbi_is_reaches_the_other_vcpu(schedule: Schedule) -> None:
    result = boot(source=TLBI_BROADCAST, cpus=2, schedule=schedule)
    result.assert_system_event("SHUTDOWN")
    assert result.u64(0x4020_0018, 2) == [1, 2]


def test_without_the_broadcast_the_other_vcpu_would_read_stale_data(monkeypatch) -> None:
    # The SYS hook marks the other vCPUs stale for TLBI ...IS; with no broadcast encodings
    # in its table, nothing does.
    monkeypatch.setattr(trap, "SYS_ACTIONS", ActionTable())
    result = boot(source=TLBI_BROADCAST, cpus=2)
    assert result.u64(0x4020_0018, 2) == [1, 1]


MMU_48BIT = (
    """
    ldr     x0, =vectors
    msr     vbar_el1, x0
    // 48-bit VAs, 4 KiB granule, four levels, for both halves: L0[0] -> L1, L1[1] = RAM block.
    ldr     x1, =0x40100000          // L0
    ldr     x2, =0x40101003          // -> L1 table
    str     x2, [x1]
    ldr     x3, =0x40101000
    ldr     x4, =0x40000701          // 1 GiB block at 0x40000000
    str     x4, [x3, #8]
    msr     ttbr0_el1, x1
    msr     ttbr1_el1, x1
    mov     x5, #0xff
    msr     mair_el1, x5
    ldr     x6, =0xB5103510          // TG1 4K, SH1/ORGN1/IRGN1, T1SZ 16, SH0/ORGN0/IRGN0, T0SZ 16
    msr     tcr_el1, x6
    isb
    mrs     x7, sctlr_el1
    orr     x7, x7, #1
    msr     sctlr_el1, x7
    isb
    // Store through the upper-half alias, read back through the identity map.
    ldr     x8, =0xffff000040200000
    ldr     x9, =0x1122334455667788
    str     x9, [x8]
    ldr     x10, =0x40200000
    ldr     x11, [x10]
    // A VA whose level-0 entry is empty: translation fault, level 0.
    ldr     x12, =0xffff008000000000
    ldr     x13, [x12]
    ldr     x0, =0x84000008
    hvc     #0
sync:
    mrs     x20, esr_el1
    mrs     x21, far_el1
    mrs     x22, elr_el1
    add     x22, x22, #4
    msr     elr_el1, x22
    eret
"""
    + VECTOR_TABLE
)


def test_48_bit_vas_through_ttbr0_and_ttbr1() -> None:
    result = boot(source=MMU_48BIT)
    result.assert_system_event("SHUTDOWN")
    regs = result.vm.vcpus[0].get_regs()
    assert regs["x11"] == 0x1122334455667788
    assert regs["x20"] >> 26 == 0x25 and regs["x20"] & 0x3F == 0x04  # level-0 translation fault
    assert regs["x21"] == 0xFFFF_0080_0000_0000


# IC IVAU of the last page of the address space on vCPU 0, then vCPU 1 started: it must
# drop the code translated from that page before it runs, though the page ends at 2^64.
IC_IVAU_LAST_PAGE = """
    ldr     x9, =0xfffffffffffffff8
    ic      ivau, x9
    dsb     ish
    isb
    ldr     x0, =0xc4000003
    mov     x1, #1
    adr     x2, second
    mov     x3, #0
    hvc     #0
    ldr     x0, =0x84000002         // CPU_OFF
    hvc     #0
second:
    ldr     x0, =0x84000008
    hvc     #0
"""


def test_ic_ivau_of_the_last_page_reaches_the_other_vcpu() -> None:
    result = boot(source=IC_IVAU_LAST_PAGE, cpus=2)
    result.assert_system_event("SHUTDOWN")
    assert result.psci_results("PSCI_CPU_ON64") == ["SUCCESS"]
