// hotadd.S: vCPU hot-add with PSCI in userspace, the use case of the 2021 RFC.
//
//   emu run firmware/hotadd.S --cpus 3 --cap hvc-to-user --cap psci-to-user \
//       --vmm firmware/hotadd_vmm.py
//
// With KVM_CAP_ARM_PSCI_TO_USER every PSCI call exits to the VMM, whose userspace PSCI
// answers it. The VMM's policy (hotadd_vmm.py) treats vCPU 2 as "not present" until the
// guest has asked for it once, as if the operator plugged the CPU in response. The guest
// asks CPU_ON64(vCPU 2): DENIED (-3); asks again: SUCCESS. vCPU 2 checks in at
// 0x40100000 and turns itself off; the boot CPU waits for it with AFFINITY_INFO64 and
// calls SYSTEM_OFF.
//
// Expected: CPU_ON64 DENIED, CPU_ON64 SUCCESS, CPU_OFF (vCPU 2), AFFINITY_INFO64 ... OFF,
// SYSTEM_OFF, all answered by the VMM ("handled": "user"); stop: system_event SHUTDOWN.

    ldr     x20, =0x40100000
    ldr     x0, =0xc4000003           // CPU_ON64(vCPU 2, added, 0x2a)
    mov     x1, #2
    adr     x2, added
    mov     x3, #0x2a
    hvc     #0
    cmn     x0, #3                    // DENIED: not present yet
    b.ne    fail_first
    ldr     x0, =0xc4000003
    mov     x1, #2
    adr     x2, added
    mov     x3, #0x2a
    hvc     #0
    cbnz    x0, fail_second
wait_off:
    ldr     x0, =0xc4000004
    mov     x1, #2
    mov     x2, #0
    hvc     #0
    cmp     x0, #1
    b.ne    wait_off
    ldr     x9, [x20]
    cmp     x9, #0x2a
    b.ne    fail_checkin
    ldr     x0, =0x84000008
    hvc     #0
    brk     #1

fail_first:
    brk     #2
fail_second:
    brk     #3
fail_checkin:
    brk     #4

added:                                // x0 = 0x2a
    ldr     x20, =0x40100000
    str     x0, [x20]
    ldr     x0, =0x84000002
    hvc     #0
    brk     #5
