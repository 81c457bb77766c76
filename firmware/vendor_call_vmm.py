"""Userspace side of firmware/vendor_call.S: answers vendor-hyp function 0x40.

emu calls ``handle_hypercall(vcpu, exit)`` for every KVM_EXIT_HYPERCALL. Returning up to
four integers writes them to x0..x3; returning None leaves the registers to the handler.
"""

VENDOR_FN_0X40 = 0xC600_0040
NOT_SUPPORTED = -1


def handle_hypercall(vcpu, exit):
    if exit.nr != 0x1234 or exit.fid != VENDOR_FN_0X40:
        return NOT_SUPPORTED
    _, a, b = exit.args[:3]
    return 0, a + b
