// smc_conduit.S: a guest that tries the SMC conduit first, as firmware written for EL3 would.
//
// KVM before v6.4 never dispatched SMC from EL1: a trapped SMC returns x0 = -1
// (NOT_SUPPORTED) with x1..x3 untouched, whatever the function id or the immediate.
// From v6.4 `smc #0` takes the HVC path (x1..x3 zeroed by PSCI), while an SMC with a
// non-zero immediate still gets x0 = -1 and nothing else (reference 1.6).
//
// Expected before v6.4 (rfc-2021, linux-5.15, linux-6.1):
//   smc #0  PSCI_VERSION()    -> NOT_SUPPORTED (-1), x1 still 0x1111
//   hvc #0  PSCI_VERSION()    -> 0x10000 or later
//   hvc #0  PSCI_SYSTEM_OFF() -> exit SYSTEM_EVENT SHUTDOWN
// Expected from v6.4 (linux-6.6, linux-6.13):
//   smc #0  PSCI_VERSION()    -> 0x10001 / 0x10003, x1 = 0
//   smc #1  PSCI_VERSION()    -> NOT_SUPPORTED (-1), x1 still 0x1111
//   smc #0  PSCI_SYSTEM_OFF() -> exit SYSTEM_EVENT SHUTDOWN

    movz    x0, #0x8400, lsl #16
    mov     x1, #0x1111
    smc     #0
    cmn     x0, #1
    b.ne    smc_works
    mov     x9, #0x1111
    cmp     x1, x9
    b.ne    fail2
    movz    x0, #0x8400, lsl #16
    hvc     #0
    movz    x9, #0x1, lsl #16
    cmp     x0, x9
    b.lo    fail3
    ldr     x0, =0x84000008
    hvc     #0

smc_works:
    movz    x9, #0x1, lsl #16
    cmp     x0, x9
    b.lo    fail3
    cbnz    x1, fail4
    movz    x0, #0x8400, lsl #16
    mov     x1, #0x1111
    smc     #1
    cmn     x0, #1
    b.ne    fail5
    mov     x9, #0x1111
    cmp     x1, x9
    b.ne    fail6
    ldr     x0, =0x84000008
    smc     #0

fail1:  brk #1
fail2:  brk #2
fail3:  brk #3
fail4:  brk #4
fail5:  brk #5
fail6:  brk #6
