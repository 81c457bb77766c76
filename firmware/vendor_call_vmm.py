"""Userspace side of firmware/vendor_call.S: answers vendor-hyp function 0x40.

emu calls ``handle_hypercall(vcpu, exit)`` for every KVM_EXIT_HYPERCALL. Returning up to
four integers writes them to x0..x3; returning None leaves the registers to the handler.

Both exit shapes work: the 2021 RFC's (``nr`` = the HVC immediate, ``args`` = x0..x5,
``--cap hvc-to-user``) and upstream's (v6.4+, ``nr`` = the function id, ``args`` zeroed,
``--smccc-filter 0xc6000040:1:fwd-to-user``), so the arguments are read from the
registers, which KVM leaves untouched in both.
"""

VENDOR_FN_0X40 = 0xC600_0040
NOT_SUPPORTED = -1


def handle_hypercall(vcpu, exit):
    fid = vcpu.get_reg("x0") & 0xFFFF_FFFF
    if fid != VENDOR_FN_0X40 or exit.nr not in (0x1234, VENDOR_FN_0X40):
        return NOT_SUPPORTED
    return 0, vcpu.get_reg("x1") + vcpu.get_reg("x2")
