// Entry points, stacks and the exception vector table of the C test programs.
// Boot CPU: _start with x0 = DTB (arm64 boot protocol). Secondaries: secondary_entry with
// x0 = the context id CPU_ON passed (the CPU's index). Exceptions taken at EL1 with SPx
// reach sync_exception(frame) (synchronous, +0x200) or irq_handler() (IRQ, +0x280); a
// program defines the ones it expects, the others are unexpected_exception(). Anything
// else is unexpected_exception() too.

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

// Save every general register, call sync_exception(frame), restore, return.
sync_entry:
    sub     sp, sp, #256
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x29, x30, [sp, #160]
    mov     x0, sp
    bl      sync_exception
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x29, x30, [sp, #160]
    add     sp, sp, #256
    eret

// Save the caller-saved registers, ELR and SPSR, call irq_handler(), restore, return:
// the handler may unmask IRQs and be preempted.
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

// A program that expects no exception of a kind leaves its handler out.
    .weak   sync_exception
sync_exception:
    b       unexpected_exception

    .weak   irq_handler
irq_handler:
    b       unexpected_exception

unexpected_entry:
    bl      unexpected_exception
1:  wfi
    b       1b

    .balign 0x800
vectors:
    .rept   4                         // current EL with SP0
    b       unexpected_entry
    .balign 0x80
    .endr
    b       sync_entry                // +0x200: current EL with SPx, synchronous
    .balign 0x80
    b       irq_entry                 // +0x280: current EL with SPx, IRQ
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
