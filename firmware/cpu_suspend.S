// cpu_suspend.S: PSCI CPU_SUSPEND and WFI woken by the virtual timer.
//
//   emu run firmware/cpu_suspend.S
//
// KVM implements CPU_SUSPEND as WFI: the vCPU blocks until an interrupt is pending and
// the call returns SUCCESS to the instruction after the HVC. The guest arms the virtual
// timer 1 ms ahead (CNTV_CVAL = CNTVCT + CNTFRQ / 1000, CNTV_CTL = ENABLE, unmasked;
// PSTATE.I stays masked, so the interrupt wakes the vCPU without being taken), calls
// CPU_SUSPEND, and checks that it returned SUCCESS no earlier than the deadline with the
// timer condition met (CNTV_CTL.ISTATUS). It then does the same with a plain WFI, and
// calls SYSTEM_OFF. emu's clock is virtual, so the 1 ms waits cost no host time.
//
// Expected: CPU_SUSPEND -> SUCCESS, SYSTEM_OFF; stop: system_event SHUTDOWN.

    mrs     x10, cntfrq_el0
    mov     x11, #1000
    udiv    x10, x10, x11             // counter ticks per ms

    mrs     x12, cntvct_el0
    add     x12, x12, x10
    msr     cntv_cval_el0, x12
    mov     x9, #1                    // ENABLE, IMASK clear
    msr     cntv_ctl_el0, x9
    isb
    ldr     x0, =0xc4000001           // CPU_SUSPEND64(standby, entry, context)
    mov     x1, #0
    mov     x2, #0
    mov     x3, #0
    hvc     #0
    cbnz    x0, fail_result
    mrs     x13, cntvct_el0
    cmp     x13, x12
    b.lo    fail_early
    mrs     x9, cntv_ctl_el0
    tbz     x9, #2, fail_istatus      // ISTATUS

    mrs     x12, cntvct_el0           // again, with WFI
    add     x12, x12, x10
    msr     cntv_cval_el0, x12
    wfi
    mrs     x13, cntvct_el0
    cmp     x13, x12
    b.lo    fail_early

    ldr     x0, =0x84000008
    hvc     #0
    brk     #1

fail_result:
    brk     #2
fail_early:
    brk     #3
fail_istatus:
    brk     #4
