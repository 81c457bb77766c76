// cpu_on_race.S: every running vCPU calls CPU_ON on the same powered-off target at once.
//
//   emu run firmware/cpu_on_race.S --cpus N [--schedule random --seed S]     (N >= 2)
//
// The boot CPU counts the vCPUs with AFFINITY_INFO64 (OFF for each secondary, then
// INVALID_PARAMS past the last one), picks the last vCPU as the target T and powers on
// every other secondary. All racers (vCPUs 0 .. N-2) meet at a barrier, then each calls
// CPU_ON64(T) and stores its result. T, once on, waits until every racer has called
// before it turns itself off, so a second SUCCESS is impossible: KVM must answer exactly
// one SUCCESS (0) and N-2 ALREADY_ON (-4), whatever the interleaving.
//
// Shared memory at 0x40100000:
//   +0x00 racers arrived   +0x08 racers done   +0x10 times T started   +0x18 N
//   +0x100 + 8 * index: CPU_ON result of racer index
// Stop: system_event SHUTDOWN after every racer but vCPU 0 and T are OFF.

    ldr     x20, =0x40100000
    // Count the vCPUs: AFFINITY_INFO64 of index 1, 2, ... until INVALID_PARAMS.
    mov     x19, #1
count:
    and     x1, x19, #0xf
    lsr     x2, x19, #4
    orr     x1, x1, x2, lsl #8
    mov     x2, #0
    ldr     x0, =0xc4000004
    hvc     #0
    cmp     x0, #1                    // OFF: it exists
    b.ne    counted
    add     x19, x19, #1
    b       count
counted:
    cmn     x0, #2
    b.ne    fail_count
    str     x19, [x20, #0x18]         // N
    // Power on racers 1 .. N-2 (context id = their index).
    mov     x21, #1
start_racers:
    sub     x9, x19, #1
    cmp     x21, x9
    b.hs    racer_zero
    and     x1, x21, #0xf
    lsr     x2, x21, #4
    orr     x1, x1, x2, lsl #8
    ldr     x0, =0xc4000003
    adr     x2, racer
    mov     x3, x21
    hvc     #0
    cbnz    x0, fail_start
    add     x21, x21, #1
    b       start_racers
racer_zero:
    mov     x0, #0                    // the boot CPU races as index 0

racer:                                // x0 = racer index
    mov     x23, x0
    ldr     x20, =0x40100000
    ldr     x19, [x20, #0x18]         // N
    sub     x24, x19, #1              // racers = N - 1 = T's index
arrive:
    ldaxr   x5, [x20]
    add     x5, x5, #1
    stlxr   w6, x5, [x20]
    cbnz    w6, arrive
barrier:
    ldr     x5, [x20]
    cmp     x5, x24
    b.lo    barrier
    and     x1, x24, #0xf             // CPU_ON64(T, target, 0x7a)
    lsr     x2, x24, #4
    orr     x1, x1, x2, lsl #8
    ldr     x0, =0xc4000003
    adr     x2, target
    mov     x3, #0x7a
    hvc     #0
    add     x9, x20, #0x100
    str     x0, [x9, x23, lsl #3]
    add     x7, x20, #8
finish:
    ldaxr   x5, [x7]
    add     x5, x5, #1
    stlxr   w6, x5, [x7]
    cbnz    w6, finish
    cbz     x23, boot_cpu_waits
    ldr     x0, =0x84000002           // racers other than vCPU 0: CPU_OFF
    hvc     #0
    brk     #5

boot_cpu_waits:
    ldr     x5, [x20, #8]
    cmp     x5, x24
    b.lo    boot_cpu_waits
    mov     x21, #1                   // wait until vCPUs 1 .. N-1 are all OFF
wait_off:
    cmp     x21, x24
    b.hi    all_off
    and     x1, x21, #0xf
    lsr     x2, x21, #4
    orr     x1, x1, x2, lsl #8
    mov     x2, #0
    ldr     x0, =0xc4000004
    hvc     #0
    cmp     x0, #1
    b.ne    wait_off
    add     x21, x21, #1
    b       wait_off
all_off:
    ldr     x0, =0x84000008
    hvc     #0
    brk     #1

target:                               // x0 = 0x7a
    cmp     x0, #0x7a
    b.ne    fail_target
    ldr     x20, =0x40100000
    add     x7, x20, #0x10
started:
    ldaxr   x5, [x7]
    add     x5, x5, #1
    stlxr   w6, x5, [x7]
    cbnz    w6, started
    ldr     x24, [x20, #0x18]
    sub     x24, x24, #1
wait_racers:
    ldr     x5, [x20, #8]
    cmp     x5, x24
    b.lo    wait_racers
    ldr     x0, =0x84000002
    hvc     #0
    brk     #6

fail_count:
    brk     #2
fail_start:
    brk     #3
fail_target:
    brk     #4
