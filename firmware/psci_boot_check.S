// psci_boot_check.S: what a firmware or kernel asks KVM first, checked by the guest itself.
//
// Runs on one vCPU under every profile (SMCCC 1.1 and PSCI 1.0 or later over HVC). Each
// answer is compared with what KVM returns; on the first mismatch the guest stops at
// `brk #n` (n = check number) so the run ends in a fault that names the failed check.
// It also probes the SMC conduit, as a boot loader choosing a PSCI method would: before
// v6.4 KVM answers SMC with NOT_SUPPORTED, from v6.4 SMC #0 is handled like HVC; either
// answer is accepted. When all checks pass it calls PSCI SYSTEM_OFF.
//
// Expected hypercalls, in order (default host: Spectre-v2/v4 mitigated, no SSBS):
//   SMCCC_VERSION()                         -> 0x10001
//   SMCCC_ARCH_FEATURES(ARCH_WORKAROUND_1)  -> 0 (firmware mitigation available)
//   SMCCC_ARCH_WORKAROUND_1()               -> 0 (EL2 fast path)
//   SMCCC_ARCH_FEATURES(ARCH_WORKAROUND_2)  -> NOT_REQUIRED (-2)
//   PSCI_VERSION()                          -> 0x10000 (PSCI 1.0) or later (1.1, 1.3)
//   smc: PSCI_VERSION()                     -> NOT_SUPPORTED before v6.4, else as over HVC
//   PSCI_FEATURES(CPU_ON64)                 -> 0
//   PSCI_FEATURES(SYSTEM_SUSPEND)           -> NOT_SUPPORTED (-1)
//   MIGRATE_INFO_TYPE()                     -> 2 (Trusted OS MP or absent)
//   AFFINITY_INFO64(own MPIDR, level 0)     -> ON (0)
//   PSCI_SYSTEM_OFF()                       -> exit SYSTEM_EVENT SHUTDOWN
// Stop: system_event SHUTDOWN, exit status 0.

    // 1: SMCCC_VERSION is 1.1
    movz    x0, #0x8000, lsl #16
    hvc     #0
    ldr     x9, =0x10001
    cmp     x0, x9
    b.ne    fail1

    // 2: SMCCC_ARCH_FEATURES(ARCH_WORKAROUND_1) == 0
    ldr     x0, =0x80000001
    ldr     x1, =0x80008000
    hvc     #0
    cbnz    x0, fail2

    // 3: ARCH_WORKAROUND_1 itself returns 0
    ldr     x0, =0x80008000
    hvc     #0
    cbnz    x0, fail3

    // 4: SMCCC_ARCH_FEATURES(ARCH_WORKAROUND_2) == NOT_REQUIRED (-2)
    ldr     x0, =0x80000001
    ldr     x1, =0x80007fff
    hvc     #0
    cmn     x0, #2
    b.ne    fail4

    // 5: PSCI_VERSION is at least 1.0
    movz    x0, #0x8400, lsl #16
    hvc     #0
    movz    x9, #0x1, lsl #16
    cmp     x0, x9
    b.lo    fail5
    mov     x10, x0

    // 10: PSCI_VERSION over SMC is NOT_SUPPORTED or the same as over HVC
    movz    x0, #0x8400, lsl #16
    smc     #0
    cmn     x0, #1
    b.eq    1f
    cmp     x0, x10
    b.ne    fail10
1:

    // 6: PSCI_FEATURES(CPU_ON64) == 0
    ldr     x0, =0x8400000a
    ldr     x1, =0xc4000003
    hvc     #0
    cbnz    x0, fail6

    // 7: PSCI_FEATURES(SYSTEM_SUSPEND) == NOT_SUPPORTED (-1)
    ldr     x0, =0x8400000a
    ldr     x1, =0x8400000e
    hvc     #0
    cmn     x0, #1
    b.ne    fail7

    // 8: MIGRATE_INFO_TYPE == 2
    ldr     x0, =0x84000006
    hvc     #0
    cmp     x0, #2
    b.ne    fail8

    // 9: AFFINITY_INFO64(own affinity, level 0) == ON
    mrs     x1, mpidr_el1
    ldr     x9, =0xff00ffffff
    and     x1, x1, x9
    mov     x2, #0
    ldr     x0, =0xc4000004
    hvc     #0
    cbnz    x0, fail9

    // All good: power off.
    ldr     x0, =0x84000008
    hvc     #0

fail1:  brk #1
fail2:  brk #2
fail3:  brk #3
fail4:  brk #4
fail5:  brk #5
fail6:  brk #6
fail7:  brk #7
fail8:  brk #8
fail9:  brk #9
fail10: brk #10
