// smc_conduit.S: a guest that uses the SMC conduit, as firmware written for EL3 would.
//
// KVM before v6.4 never dispatched SMC from EL1: a trapped SMC returns x0 = -1
// (NOT_SUPPORTED) with x1..x3 untouched, whatever the function id or the immediate.
// The guest checks that for PSCI_VERSION over `smc #0`, then finds PSCI over HVC
// instead and powers off through it.
//
// Expected under rfc-2021:
//   smc #0  PSCI_VERSION()   -> NOT_SUPPORTED (-1), x1 still 0x1111
//   hvc #0  PSCI_VERSION()   -> 0x10000
//   hvc #0  PSCI_SYSTEM_OFF() -> exit SYSTEM_EVENT SHUTDOWN

    movz    x0, #0x8400, lsl #16
    mov     x1, #0x1111
    smc     #0
    cmn     x0, #1
    b.ne    fail1
    mov     x9, #0x1111
    cmp     x1, x9
    b.ne    fail2
    movz    x0, #0x8400, lsl #16
    hvc     #0
    movz    x9, #0x1, lsl #16
    cmp     x0, x9
    b.ne    fail3
    ldr     x0, =0x84000008
    hvc     #0

fail1:  brk #1
fail2:  brk #2
fail3:  brk #3
