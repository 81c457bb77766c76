// Entry points, stacks and vectors of gic_test.c: as start.S, plus an IRQ entry at
// +0x280 (current EL, SPx) that saves the caller-saved registers, ELR and SPSR, so the
// C handler may unmask IRQs and be preempted.

    .section .text.start, "ax"
    .global _start
_start:
    mov     x19, x0
    adr     x1, vectors
    msr     vbar_el1, x1
    isb
    adr     x1, stacks
    add     x1, x1, #4096
    mov     sp, x1
    mov     x0, x19
    bl      boot_main
1:  wfi
    b       1b

    .text
    .global secondary_entry
secondary_entry:
    mov     x19, x0
    adr     x1, vectors
    msr     vbar_el1, x1
    isb
    adr     x1, stacks
    add     x2, x19, #1
    lsl     x2, x2, #12
    add     sp, x1, x2
    mov     x0, x19
    bl      secondary_main
1:  wfi
    b       1b

irq_entry:
    sub     sp, sp, #192
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x30, [sp, #144]
    mrs     x0, elr_el1
    mrs     x1, spsr_el1
    stp     x0, x1, [sp, #160]
    bl      irq_handler
    ldp     x0, x1, [sp, #160]
    msr     elr_el1, x0
    msr     spsr_el1, x1
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x30, [sp, #144]
    add     sp, sp, #192
    eret

unexpected_entry:
    bl      unexpected_exception
1:  wfi
    b       1b

    .balign 0x800
vectors:
    .rept   5                         // SP0 (4), SPx synchronous
    b       unexpected_entry
    .balign 0x80
    .endr
    b       irq_entry                 // +0x280: IRQ, current EL with SPx
    .balign 0x80
    .rept   10                        // SPx FIQ/SError, lower EL
    b       unexpected_entry
    .balign 0x80
    .endr

    .bss
    .balign 4096
    .global stacks
stacks:
    .space  4096 * 9                  // one 4 KiB stack per CPU, up to 8 CPUs
