// system_reset.S: SYSTEM_RESET handled by the VMM as a reboot; the guest boots again.
//
//   emu run firmware/system_reset.S --cpus 2 --reboots 2
//
// Each boot increments a boot counter kept in RAM outside the image (0x40100000, which a
// reboot does not clear), powers on vCPU 1 if there is one (it must be OFF again after a
// reboot, so CPU_ON64 answers SUCCESS every time; vCPU 1 counts its own starts at
// 0x40100008 and turns itself off), waits for it to be OFF, then calls SYSTEM_RESET while
// the count is below 3 and SYSTEM_OFF on the third boot.
//
// Expected with --reboots 2: stop system_event SHUTDOWN, boot count 3, vCPU 1 started 3
// times. With fewer reboots the run ends at the first unhonoured SYSTEM_RESET (RESET).

    ldr     x20, =0x40100000
    ldr     x19, [x20]
    add     x19, x19, #1
    str     x19, [x20]

    ldr     x0, =0xc4000003           // CPU_ON64(vCPU 1, secondary, 0)
    mov     x1, #1
    adr     x2, secondary
    mov     x3, #0
    hvc     #0
    cmn     x0, #2                    // INVALID_PARAMS: a single-vCPU VM
    b.eq    booted
    cbnz    x0, fail_on
wait_off:
    ldr     x0, =0xc4000004
    mov     x1, #1
    mov     x2, #0
    hvc     #0
    cmp     x0, #1
    b.ne    wait_off
booted:
    cmp     x19, #3
    b.hs    power_off
    ldr     x0, =0x84000009           // SYSTEM_RESET
    hvc     #0
    brk     #1
power_off:
    ldr     x0, =0x84000008           // SYSTEM_OFF
    hvc     #0
    brk     #1

fail_on:
    brk     #2

secondary:
    ldr     x20, =0x40100000
    ldr     x9, [x20, #8]
    add     x9, x9, #1
    str     x9, [x20, #8]
    ldr     x0, =0x84000002
    hvc     #0
    brk     #3
