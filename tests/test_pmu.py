"""The PMU counts on the VM's clock and retired instructions: monotonic, deterministic, and
PMSWINC_EL0 increments the counters configured for SW_INCR."""

from __future__ import annotations

from emu.vmm.boot import boot

PMU_PROGRAM = """
    mov     x0, #1
    msr     pmcr_el0, x0              // E
    ldr     x0, =0x80000003
    msr     pmcntenset_el0, x0        // cycle counter, event counters 0 and 1
    mov     x0, #0x08
    msr     pmevtyper0_el0, x0        // INST_RETIRED
    mov     x0, #0x00
    msr     pmevtyper1_el0, x0        // SW_INCR
    isb
    mrs     x20, pmccntr_el0
    mrs     x21, pmevcntr0_el0
    mov     x9, #1000
1:  subs    x9, x9, #1
    b.ne    1b
    mrs     x22, pmccntr_el0
    mrs     x23, pmevcntr0_el0
    mov     x0, #3
    msr     pmswinc_el0, x0           // counter 0 counts instructions: only counter 1 moves
    msr     pmswinc_el0, x0
    mrs     x24, pmevcntr1_el0
    mov     x0, #0x2
    msr     pmcntenclr_el0, x0        // stopped counters keep their value
    msr     pmswinc_el0, x0
    mrs     x25, pmevcntr1_el0
    mrs     x26, pmcr_el0
    ldr     x0, =0x84000008
    hvc     #0
"""


def test_pmu_counters_follow_virtual_time_and_instructions() -> None:
    runs = [boot(source=PMU_PROGRAM) for _ in range(2)]
    regs = [r.vm.vcpus[0].get_regs() for r in runs]
    assert regs[0] == regs[1]  # deterministic
    r = regs[0]
    assert 2000 <= r["x22"] - r["x20"] <= 2100  # ~2 instructions a loop, 1 ns each
    assert 2000 <= r["x23"] - r["x21"] <= 2100
    assert r["x24"] == 2 and r["x25"] == 2
    assert r["x26"] >> 11 & 0x1F == 6  # PMCR_EL0.N
