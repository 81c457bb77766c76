// trng.S: the Arm TRNG firmware interface (DEN0098) as KVM implements it.
//
// Checks TRNG_VERSION (1.0), TRNG_FEATURES(RND64) (0), TRNG_GET_UUID (KVM's UUID
// 0d21e000-4384-11eb-8070-5244554e5a4c as four words), then draws 192 bits with
// TRNG_RND64 and 40 bits with TRNG_RND32, storing them at 0x40100000:
//   +0x00 x1, x2, x3 of RND64(192)      (24 bytes)
//   +0x18 x1, x2, x3 of RND32(40)       (24 bytes; only bits 39..0 of the 96 may be set)
// and asks for 97 bits with RND32, which must be INVALID_PARAMETER (-2). Any mismatch
// stops at `brk #n`; success ends with SYSTEM_OFF. The entropy comes from emu's seeded
// generator: the same --seed gives the same bytes.

    // 1: TRNG_VERSION == 1.0
    ldr     x0, =0x84000050
    hvc     #0
    movz    x9, #0x1, lsl #16
    cmp     x0, x9
    b.ne    fail1

    // 2: TRNG_FEATURES(TRNG_RND64) == 0
    ldr     x0, =0x84000051
    ldr     x1, =0xc4000053
    hvc     #0
    cbnz    x0, fail2

    // 3: TRNG_GET_UUID
    ldr     x0, =0x84000052
    hvc     #0
    ldr     x9, =0x00e0210d
    cmp     x0, x9
    b.ne    fail3
    ldr     x9, =0x4c5a4e55
    cmp     x3, x9
    b.ne    fail3

    // 4: TRNG_RND64(192) succeeds
    ldr     x10, =0x40100000
    ldr     x0, =0xc4000053
    mov     x1, #192
    hvc     #0
    cbnz    x0, fail4
    stp     x1, x2, [x10]
    str     x3, [x10, #16]

    // 5: TRNG_RND32(40): x1 = bits 95:64 and x2 = bits 63:32 beyond bit 39 are zero
    ldr     x0, =0x84000053
    mov     x1, #40
    hvc     #0
    cbnz    x0, fail5
    cbnz    x1, fail5
    lsr     x9, x2, #8
    cbnz    x9, fail5
    stp     x1, x2, [x10, #24]
    str     x3, [x10, #40]

    // 6: TRNG_RND32(97) == INVALID_PARAMETER (-2)
    ldr     x0, =0x84000053
    mov     x1, #97
    hvc     #0
    cmn     x0, #2
    b.ne    fail6

    ldr     x0, =0x84000008
    hvc     #0

fail1:  brk #1
fail2:  brk #2
fail3:  brk #3
fail4:  brk #4
fail5:  brk #5
fail6:  brk #6
