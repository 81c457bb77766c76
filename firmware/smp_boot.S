// smp_boot.S: SMP bring-up through PSCI, as a kernel's boot CPU does it.
//
// Run with several vCPUs (vCPU 0 runs first, the others start powered off):
//   emu run firmware/smp_boot.S --cpus 8 [--schedule random --seed S]
//
// The boot CPU powers on secondaries with CPU_ON64, vCPU index 1, 2, ... (KVM's MPIDR
// layout: Aff0 = index & 0xf, Aff1 = index >> 4) until CPU_ON answers INVALID_PARAMS,
// which is how it finds the number of CPUs. Each secondary gets context id 0x100 + index
// in x0, records it and its MPIDR in its slot, checks in by atomically incrementing a
// shared counter (LDAXR/STLXR) and calls CPU_OFF. The boot CPU waits for every check-in,
// then polls AFFINITY_INFO64 until each secondary is OFF, and calls SYSTEM_OFF.
//
// Shared memory at 0x40100000 (room for 512 vCPUs):
//   +0x0000  u64 check-in count          +0x0008  u64 secondaries started
//   +0x1000  u64 ctx[index]               +0x2000  u64 mpidr[index]
//
// Expected with N vCPUs: N-1 CPU_ON SUCCESS then one INVALID_PARAMS; check-in count N-1;
// ctx[i] = 0x100 + i and mpidr[i] = 0x80000000 | affinity(i); every secondary OFF at the
// end; stop: system_event SHUTDOWN. A wrong PSCI answer stops at `brk #n`.

    ldr     x20, =0x40100000
    ldr     x22, =0xff00ffffff        // MPIDR affinity bits
    mov     x19, #1                   // next vCPU index
start_next:
    and     x1, x19, #0xf
    lsr     x2, x19, #4
    orr     x1, x1, x2, lsl #8
    ldr     x0, =0xc4000003           // CPU_ON64(target, entry, context id)
    adr     x2, secondary
    add     x3, x19, #0x100
    hvc     #0
    cbnz    x0, started_all
    add     x19, x19, #1
    b       start_next
started_all:
    cmn     x0, #2                    // INVALID_PARAMS: no such vCPU
    b.ne    fail_cpu_on
    sub     x19, x19, #1
    str     x19, [x20, #8]

wait_checkin:
    ldr     x4, [x20]
    cmp     x4, x19
    b.lo    wait_checkin

    mov     x21, #1
wait_off:
    cmp     x21, x19
    b.hi    all_off
    and     x1, x21, #0xf
    lsr     x2, x21, #4
    orr     x1, x1, x2, lsl #8
    mov     x2, #0
    ldr     x0, =0xc4000004           // AFFINITY_INFO64(target, level 0)
    hvc     #0
    cmp     x0, #1                    // OFF
    b.eq    next_off
    cbnz    x0, fail_affinity         // neither ON (0) nor OFF (1)
    b       wait_off
next_off:
    add     x21, x21, #1
    b       wait_off

all_off:
    ldr     x0, =0x84000008           // SYSTEM_OFF
    hvc     #0
    brk     #1

fail_cpu_on:
    brk     #2
fail_affinity:
    brk     #3

secondary:                            // x0 = context id = 0x100 + index
    ldr     x20, =0x40100000
    ldr     x22, =0xff00ffffff
    sub     x2, x0, #0x100
    add     x3, x20, #0x1000
    str     x0, [x3, x2, lsl #3]
    mrs     x4, mpidr_el1
    add     x3, x20, #0x2000
    str     x4, [x3, x2, lsl #3]
checkin:
    ldaxr   x5, [x20]
    add     x5, x5, #1
    stlxr   w6, x5, [x20]
    cbnz    w6, checkin
    ldr     x0, =0x84000002           // CPU_OFF: never returns
    hvc     #0
    brk     #4
