// exceptions.S: synchronous exceptions delivered to the guest's own EL1 vector table.
//
//   emu run firmware/exceptions.S
//
// Installs VBAR_EL1, then provokes one exception after another, at EL1 and at EL0: an
// undefined instruction, MRS of an EL2 register, SVC, BRK, a load and a store outside
// RAM and devices, an instruction fetch outside RAM, an unaligned exclusive load, then
// (after ERET to EL0) SVC, HVC, SMC, a load outside RAM and an undefined instruction.
// Before each, x14 holds the address the exception must return to (ELR_EL1).
//
// The handler (vector +0x200 from EL1h, +0x400 from EL0) records 48 bytes per exception
// at 0x40100000: ESR_EL1, ELR_EL1, SPSR_EL1, FAR_EL1, expected ELR (x14), and returns:
// past the instruction (ELR + 4) except for SVC (ELR is already past it) and instruction
// aborts (back to the caller, x30). `svc #0xff` from EL0 ends the test at EL1 with
// SYSTEM_OFF. tests/test_exceptions.py checks every record.

    ldr     x0, =vectors
    msr     vbar_el1, x0
    isb
    ldr     x28, =0x40100000
    ldr     x0, =0x40200000
    mov     sp, x0

    adr     x14, undef_el1
undef_el1:
    .word   0x00000000                // udf #0
    adr     x14, mrs_el2
mrs_el2:
    mrs     x0, hcr_el2
    adr     x14, svc_el1
svc_el1:
    svc     #0x77
    adr     x14, brk_el1
brk_el1:
    brk     #0x55
    mov     x1, #0x1000
    adr     x14, load_el1
load_el1:
    ldr     x0, [x1]
    adr     x14, store_el1
store_el1:
    str     x0, [x1, #8]
    mov     x14, #0x2000
    mov     x1, #0x2000
    blr     x1                        // instruction abort; the handler returns to x30
    ldr     x1, =0x40100403
    adr     x14, unaligned_el1
unaligned_el1:
    ldaxr   x0, [x1]

    ldr     x0, =0x40300000           // drop to EL0 with its own stack
    msr     sp_el0, x0
    adr     x0, el0
    msr     elr_el1, x0
    mov     x0, #0x3c0                // EL0t, DAIF masked
    msr     spsr_el1, x0
    eret

el0:
    adr     x14, svc_el0
svc_el0:
    svc     #0x1
    adr     x14, hvc_el0
hvc_el0:
    hvc     #0
    adr     x14, smc_el0
smc_el0:
    smc     #0
    mov     x1, #0x1000
    adr     x14, load_el0
load_el0:
    ldr     x0, [x1]
    adr     x14, undef_el0
undef_el0:
    .word   0x00000000
    adr     x14, done_el0
done_el0:
    svc     #0xff                     // done: back to EL1 for good

finish:
    ldr     x0, =0x84000008
    hvc     #0

sync:
    mrs     x10, esr_el1
    mrs     x11, elr_el1
    mrs     x12, spsr_el1
    mrs     x13, far_el1
    stp     x10, x11, [x28]
    stp     x12, x13, [x28, #16]
    str     x14, [x28, #32]
    add     x28, x28, #48
    lsr     x15, x10, #26             // EC
    cmp     x15, #0x15                // SVC64: ELR is already past it
    b.ne    not_svc
    and     x16, x10, #0xffff
    cmp     x16, #0xff
    b.eq    finish
    eret
not_svc:
    cmp     x15, #0x21                // instruction abort: return to the caller
    b.ne    skip
    msr     elr_el1, x30
    eret
skip:
    add     x11, x11, #4
    msr     elr_el1, x11
    eret

    .balign 0x800
vectors:
    .rept   16
    b       sync
    .balign 0x80
    .endr
