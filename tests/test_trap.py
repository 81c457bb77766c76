"""The trap path: syndromes, the MMU-on instruction fetch, the guest counter, error funnelling."""

from __future__ import annotations

import pytest

from emu import LOAD_ADDR
from emu.abi.exits import FaultExit, SystemEventExit
from emu.arm.clock import CNTFRQ_HZ, DEFAULT_PHYS_COUNTER_BASE
from emu.arm.syshook import FLAG_CODE, FLAG_TLB
from emu.smccc.call import Conduit, esr_for
from tests.conftest import VECTOR_TABLE, make_vm


@pytest.mark.parametrize(
    "conduit, imm, esr",
    [
        (Conduit.HVC, 0, 0x5A00_0000),
        (Conduit.HVC, 0x1234, 0x5A00_1234),
        (Conduit.SMC, 0, 0x5E00_0000),
        (Conduit.SMC, 0xFFFF, 0x5E00_FFFF),
    ],
)
def test_esr_encoding(conduit, imm, esr) -> None:
    assert esr_for(conduit, imm) == esr
    assert esr >> 26 == (0x16 if conduit is Conduit.HVC else 0x17) and (esr >> 25) & 1 == 1


def test_every_immediate_reaches_the_syndrome() -> None:
    imms = [0, 1, 0x7FFF, 0x8000, 0xFFFF]
    source = "".join(f"movz x0, #0x8000, lsl #16\nhvc #{i:#x}\nsmc #{i:#x}\n" for i in imms) + "brk #0\n"
    vm, vcpu = make_vm(source)
    vcpu.run()
    got = [(e.conduit, e.imm, e.esr) for e in vm.hypercalls]
    want = []
    for i in imms:
        want += [("hvc", i, 0x5A00_0000 | i), ("smc", i, 0x5E00_0000 | i)]
    assert got == want
    assert [e.pc for e in vm.hypercalls] == [LOAD_ADDR + 4 + 12 * k + 4 * j for k in range(5) for j in (0, 1)]


MMU_ON = """
    // Identity-map RAM (L1 block 1) and alias it at VA 0 (L1 block 0): 4 KiB granule,
    // T0SZ = 25 (walk starts at level 1), TTBR1 walks disabled.
    ldr     x1, =0x40100000
    ldr     x2, =0x40000701          // PA 0x40000000, AF, inner shareable, AttrIndx 0, block
    str     x2, [x1]
    str     x2, [x1, #8]
    msr     ttbr0_el1, x1
    mov     x3, #0xff
    msr     mair_el1, x3
    ldr     x4, =0x803519            // EPD1 | SH0 inner | ORGN0/IRGN0 WB | T0SZ 25
    msr     tcr_el1, x4
    isb
    mrs     x5, sctlr_el1
    orr     x5, x5, #1
    msr     sctlr_el1, x5
    isb
    // Continue at the alias: VA = PA - 0x40000000.
    adr     x6, aliased
    ldr     x7, =0x40000000
    sub     x6, x6, x7
    br      x6
aliased:
    movz    x0, #0x8400, lsl #16
    hvc     #0x42
    brk     #0
"""


def test_hypercall_with_the_mmu_on_at_a_translated_address() -> None:
    vm, vcpu = make_vm(MMU_ON)
    stop = vcpu.run()
    assert isinstance(stop, FaultExit) and stop.insn == "brk #0"
    assert vcpu.mmu_enabled
    (event,) = vm.hypercalls
    assert event.pc < 0x4000_0000, "the HVC ran at the alias VA"
    assert event.imm == 0x42 and event.result == 0x10000


COUNTER = """
    mrs     x0, cntfrq_el0
    mrs     x1, cntvct_el0
    mrs     x2, cntvct_el0
    mrs     x3, cntpct_el0
    // Busy-wait 1 ms of guest time, as boot code waits for a secondary.
    mrs     x4, cntvct_el0
    ldr     x5, =62500
    add     x5, x5, x4
wait:
    mrs     x6, cntvct_el0
    cmp     x6, x5
    b.lo    wait
    brk     #0
"""


def test_guest_counter_is_virtual_monotonic_and_finishes_delay_loops() -> None:
    _vm, vcpu = make_vm(COUNTER, timeout=30)
    vcpu.run()
    r = vcpu.get_regs()
    assert r["x0"] == CNTFRQ_HZ
    assert r["x1"] < r["x2"]
    assert r["x3"] > DEFAULT_PHYS_COUNTER_BASE
    assert r["x6"] >= r["x5"]


def test_guest_counter_is_deterministic() -> None:
    runs = []
    for _ in range(2):
        _, vcpu = make_vm(COUNTER, timeout=30)
        vcpu.run()
        runs.append(vcpu.get_regs())
    assert runs[0] == runs[1]


def test_errors_in_the_model_propagate(monkeypatch) -> None:
    import emu.smccc.arch as arch

    def broken(call):
        raise RuntimeError("model bug")

    vm, vcpu = make_vm("movz x0, #0x8000, lsl #16\nhvc #0\nbrk #0\n")
    monkeypatch.setitem(vm.model._handlers, 0x8000_0000, broken)
    with pytest.raises(RuntimeError, match="model bug"):
        vcpu.run()
    assert arch is not None


def test_hvc_encoding_mismatch_fetches_again() -> None:
    # If the instruction before the reported PC is not an HVC (the guest rewrote it behind
    # the trap's back), the trap path refuses to invent a syndrome: nothing is answered,
    # and the vCPU drops its translations and fetches that instruction again.
    vm, vcpu = make_vm("hvc #0\n")
    vcpu.regs.write("pc", LOAD_ADDR + 8)  # PC - 4 is the zero word after the HVC
    vcpu.trap._intr_cb(None, 11, None)  # the installed UC_HOOK_INTR entry, intno 11 = HVC
    assert vcpu._exit is None and vm.hypercalls == [] and vcpu.trap.cut_short
    assert vcpu.get_reg("pc") == LOAD_ADDR + 4
    assert vm.maintenance.flags[vcpu.index] == FLAG_CODE | FLAG_TLB


# DC ZVA zeroes the 64-byte block it is in, the HVC after it included, with no IC IVAU: the
# engine still runs the instructions it translated before, up to the HVC. Fetched again,
# the HVC is the zero word (UDF), taken by the vectors, which record ELR and ESR.
STALE_HVC = (
    """
    ldr     x0, =vectors
    msr     vbar_el1, x0
    adr     x1, block
    b       block
    .balign 64
block:
    dc      zva, x1
    movz    x0, #0x8000, lsl #16    // SMCCC_VERSION
    hvc     #0
    ldr     x0, =0x84000008
    hvc     #0
    .balign 64
sync:
    mrs     x20, elr_el1
    mrs     x21, esr_el1
    ldr     x0, =0x84000008
    hvc     #0
"""
    + VECTOR_TABLE
)


@pytest.mark.parametrize("max_insns", [None, 10_000], ids=["free", "counted"])
def test_an_hvc_rewritten_behind_its_translation_is_fetched_again(max_insns) -> None:
    vm, vcpu = make_vm(STALE_HVC, max_insns=max_insns)
    stop = vcpu.run()
    assert isinstance(stop, SystemEventExit), stop
    hvc = LOAD_ADDR + 0x48  # block (the first 64-byte boundary) + 8
    assert vcpu.get_reg("x20") == hvc and vcpu.get_reg("x21") >> 26 == 0  # UNDEF at the zero word
    assert vm.read_memory(hvc, 4) == bytes(4)
    assert [e.name for e in vm.hypercalls] == ["PSCI_SYSTEM_OFF"]
