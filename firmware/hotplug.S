// hotplug.S: CPU hotplug cycles, CPU_OFF then CPU_ON again, four times.
//
//   emu run firmware/hotplug.S --cpus 2 [--schedule random --seed S]
//
// Each cycle the boot CPU powers on vCPU 1 with CPU_ON64 (context id = cycle number),
// checks that a second CPU_ON64 while vCPU 1 is on answers ALREADY_ON, lets vCPU 1 go,
// and polls AFFINITY_INFO64 until vCPU 1 is OFF again. vCPU 1 checks that it came out of
// reset (x1 = 0, SP = 0, the context id in x0), counts the cycle in shared memory, waits
// for the go flag and calls CPU_OFF.
//
// Shared memory at 0x40100000: +0 cycles seen by vCPU 1, +8 go flag.
// Expected: 4 x (CPU_ON64 SUCCESS, CPU_ON64 ALREADY_ON, CPU_OFF by vCPU 1,
// AFFINITY_INFO64 ... OFF), cycle count 4, stop: system_event SHUTDOWN.
// A wrong answer stops at `brk #n`.

    ldr     x20, =0x40100000
    mov     x19, #0                   // cycle
cycle:
    str     xzr, [x20, #8]            // go = 0
    ldr     x0, =0xc4000003           // CPU_ON64(vCPU 1, secondary, cycle)
    mov     x1, #1
    adr     x2, secondary
    mov     x3, x19
    hvc     #0
    cbnz    x0, fail_on
    ldr     x0, =0xc4000003           // again while it is on
    mov     x1, #1
    adr     x2, secondary
    mov     x3, x19
    hvc     #0
    cmn     x0, #4                    // ALREADY_ON
    b.ne    fail_already_on
    mov     x9, #1
    str     x9, [x20, #8]             // go = 1
wait_off:
    ldr     x0, =0xc4000004           // AFFINITY_INFO64(vCPU 1, level 0)
    mov     x1, #1
    mov     x2, #0
    hvc     #0
    cmp     x0, #1
    b.ne    wait_off
    add     x19, x19, #1
    ldr     x9, [x20]
    cmp     x9, x19                   // vCPU 1 counted this cycle
    b.ne    fail_count
    cmp     x19, #4
    b.lo    cycle
    ldr     x0, =0x84000008           // SYSTEM_OFF
    hvc     #0
    brk     #1

fail_on:
    brk     #2
fail_already_on:
    brk     #3
fail_count:
    brk     #4

secondary:                            // x0 = cycle number, everything else reset
    cbnz    x1, fail_reset
    mov     x9, sp
    cbnz    x9, fail_reset
    ldr     x20, =0x40100000
    ldr     x9, [x20]
    cmp     x9, x0                    // cycles seen so far == this cycle's number
    b.ne    fail_secondary_count
    add     x9, x9, #1
    str     x9, [x20]
wait_go:
    ldr     x9, [x20, #8]
    cbz     x9, wait_go
    ldr     x0, =0x84000002           // CPU_OFF
    hvc     #0
    brk     #5
fail_reset:
    brk     #6
fail_secondary_count:
    brk     #7
