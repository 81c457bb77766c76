"""Debug exceptions as the architecture defines them: a hardware breakpoint is EC 0x31
(0x30 from EL0), a completed software step EC 0x32 from EL0, both with status 0x22."""

from __future__ import annotations

from emu.vmm.boot import boot

# MDSCR_EL1.MDE and KDE on, PSTATE.D clear: breakpoints and watchpoints fire at EL1.
DEBUG_ON = """
    mrs     x3, mdscr_el1
    orr     x3, x3, #(1 << 15)                  // MDE
    orr     x3, x3, #(1 << 13)                  // KDE
    msr     mdscr_el1, x3
    isb
    msr     daifclr, #8
    isb
"""

BREAKPOINT = (
    r"""
    ldr     x0, =vectors
    msr     vbar_el1, x0
    msr     oslar_el1, xzr
    ldr     x1, =target
    msr     dbgbvr0_el1, x1
    mov     x2, #((0xf << 5) | (0x3 << 1) | 1)   // BAS all, PMC EL1 and EL0, E
    msr     dbgbcr0_el1, x2
"""
    + DEBUG_ON
    + r"""    nop
target:
    mov     x10, #0x55
    ldr     x0, =0x84000008
    hvc     #0
    .balign 0x800
vectors:
    .rept   0x200 / 4
    b       .
    .endr
    mrs     x5, esr_el1                         // 0x200: current EL, SPx
    mrs     x6, elr_el1
    msr     dbgbcr0_el1, xzr                    // disarm, then retry the instruction
    isb
    eret
"""
)

SOFTWARE_STEP = r"""
    ldr     x0, =vectors
    msr     vbar_el1, x0
    msr     oslar_el1, xzr
    mrs     x3, mdscr_el1
    orr     x3, x3, #1                          // SS
    orr     x3, x3, #(1 << 15)                  // MDE
    msr     mdscr_el1, x3
    ldr     x1, =el0code
    msr     elr_el1, x1
    ldr     x2, =0x200000                       // EL0t with SPSR.SS: step one instruction
    msr     spsr_el1, x2
    isb
    eret
el0code:
    mov     x11, #1
    mov     x12, #2
    svc     #0
    .balign 0x800
vectors:
    .rept   0x400 / 4
    b       .
    .endr
    mrs     x5, esr_el1                         // 0x400: lower EL
    mrs     x6, elr_el1
    ldr     x0, =0x84000008
    hvc     #0
"""


def test_hardware_breakpoint_is_a_breakpoint_exception() -> None:
    result = boot(source=BREAKPOINT)
    result.assert_system_event("SHUTDOWN")
    regs = result.vm.vcpus[0].get_regs()
    target = result.vm.trace.exceptions[0].elr
    assert regs["x5"] == 0x31 << 26 | 1 << 25 | 0x22 and regs["x6"] == target
    assert regs["x10"] == 0x55  # resumed at the breakpoint once it was disarmed


def test_software_step_stops_after_one_instruction() -> None:
    result = boot(source=SOFTWARE_STEP)
    result.assert_system_event("SHUTDOWN")
    regs = result.vm.vcpus[0].get_regs()
    assert regs["x5"] == 0x32 << 26 | 1 << 25 | 1 << 24 | 0x22
    assert regs["x11"] == 1 and regs["x12"] == 0  # one EL0 instruction ran
    assert regs["x6"] == result.vm.trace.exceptions[0].elr


WATCHPOINT = (
    r"""
    ldr     x0, =vectors
    msr     vbar_el1, x0
    msr     oslar_el1, xzr
    ldr     x11, =data
    msr     dbgwvr0_el1, x11
    mov     x2, #((0xff << 5) | (0x2 << 3) | (0x3 << 1) | 1)   // 8 bytes, stores, EL1+EL0, E
    msr     dbgwcr0_el1, x2
"""
    + DEBUG_ON
    + r"""    ldr     x9, [x11]                           // a load: not watched
    mov     x4, #0x77
    str     w4, [x11, #4]
    mov     x10, #0x55
    ldr     x0, =0x84000008
    hvc     #0
    .balign 8
data:
    .quad   0
    .balign 0x800
vectors:
    .rept   0x200 / 4
    b       .
    .endr
    mrs     x5, esr_el1
    mrs     x6, elr_el1
    mrs     x7, far_el1
    msr     dbgwcr0_el1, xzr
    isb
    eret
"""
)


def test_watchpoint_is_a_watchpoint_exception_with_far() -> None:
    result = boot(source=WATCHPOINT)
    result.assert_system_event("SHUTDOWN")
    regs = result.vm.vcpus[0].get_regs()
    assert regs["x5"] == 0x35 << 26 | 1 << 25 | 1 << 6 | 0x22
    assert regs["x7"] == regs["x11"] + 4
    assert result.vm.read_memory(regs["x6"], 4) == bytes.fromhex("640500b9")  # str w4, [x11, #4]
    assert result.u64(regs["x11"]) == 0x77 << 32
    assert regs["x10"] == 0x55
