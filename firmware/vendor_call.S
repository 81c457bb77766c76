// vendor_call.S: a hypercall KVM does not implement, answered by the VMM.
//
// Needs the RFC capability KVM_CAP_ARM_HVC_TO_USER (`--cap hvc-to-user`) and the VMM in
// vendor_call_vmm.py (`--vmm firmware/vendor_call_vmm.py`):
//
//   emu run firmware/vendor_call.S --cap hvc-to-user --vmm firmware/vendor_call_vmm.py
//
// On linux-6.6 and later the SMCCC filter forwards it instead, with nr = the function id:
//
//   emu run firmware/vendor_call.S --profile linux-6.6 --smccc-filter 0xc6000040:1:fwd-to-user \
//       --vmm firmware/vendor_call_vmm.py
//
// The guest calls vendor-hyp function 0x40 (0xC6000040) with `hvc #0x1234` and
// x1 = 40, x2 = 2. KVM v5.13 does not handle it, so it exits to userspace as
// KVM_EXIT_HYPERCALL with nr = 0x1234 (the immediate) and args = x0..x5. The VMM answers
// x0 = 0 (SUCCESS) and x1 = x1 + x2 = 42; the guest checks both, stores 42 at
// 0x40100000 and calls SYSTEM_OFF. Without the cap KVM answers NOT_SUPPORTED and the
// guest stops at `brk #1`; with the cap but no --vmm, the default VMM answers
// NOT_SUPPORTED too.

    ldr     x0, =0xc6000040
    mov     x1, #40
    mov     x2, #2
    mov     x3, #0
    mov     x4, #0
    mov     x5, #0
    hvc     #0x1234
    cbnz    x0, fail_status
    cmp     x1, #42
    b.ne    fail_value
    ldr     x9, =0x40100000
    str     x1, [x9]
    ldr     x0, =0x84000008
    hvc     #0

fail_status:
    brk     #1
fail_value:
    brk     #2
