"""The SMCCC filter (v6.4+): userspace says, per range of function ids, what KVM does.

``KVM_SET_DEVICE_ATTR(KVM_ARM_VM_SMCCC_CTRL, KVM_ARM_VM_SMCCC_FILTER)`` on the VM takes a
``struct kvm_smccc_filter`` (ref 6.2): HANDLE (0) as usual, DENY (1) with
NOT_SUPPORTED, or FWD_TO_USER (2) as a ``KVM_EXIT_HYPERCALL``. KVM keeps the ranges in a
maple tree; here they are a sorted list searched with ``bisect``, and the trap path skips
the lookup entirely while no range has been set (``SmcccFilter.starts`` is empty).
"""

from __future__ import annotations

import errno
import struct
from bisect import bisect_right
from enum import IntEnum

from emu.abi import smccc
from emu.errors import KvmError

# VM device-attribute group and attribute of the filter (arch/arm64/include/uapi/asm/kvm.h).
KVM_ARM_VM_SMCCC_CTRL = 0
KVM_ARM_VM_SMCCC_FILTER = 0

# struct kvm_smccc_filter { __u32 base; __u32 nr_functions; __u8 action; __u8 pad[15]; }
FILTER_STRUCT = struct.Struct("<IIB15s")
assert FILTER_STRUCT.size == 24

# Arm Architecture calls: always handled by KVM, so userspace cannot lie about Spectre
# mitigations (ref 6.2).
RESERVED_RANGES = ((0x8000_0000, 0x8000_FFFF), (0xC000_0000, 0xC000_FFFF))


class SmcccFilterAction(IntEnum):
    """``KVM_SMCCC_FILTER_*``."""

    HANDLE = 0
    DENY = 1
    FWD_TO_USER = 2

    @property
    def flag_name(self) -> str:
        return self.name.lower().replace("_", "-")


def pack_filter(base: int, nr_functions: int, action: int, pad: bytes = bytes(15)) -> bytes:
    """The 24-byte ``struct kvm_smccc_filter``."""
    return FILTER_STRUCT.pack(base & smccc.MASK32, nr_functions & smccc.MASK32, action & 0xFF, pad)


class SmcccFilter:
    """One VM's filter: disjoint inclusive ranges ``(start, end, action)`` sorted by start.

    ``user_ranges`` lists what userspace set, in order, without the reserved ranges.
    """

    __slots__ = ("actions", "ends", "starts", "user_ranges")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.actions: list[SmcccFilterAction] = []
        self.user_ranges: list[tuple[int, int, SmcccFilterAction]] = []

    @property
    def configured(self) -> bool:
        """kvm_smccc_filter_configured(): a range was ever inserted (the reserved ones count)."""
        return bool(self.starts)

    def lookup(self, fid: int) -> SmcccFilterAction:
        """The action for ``fid``; a miss is HANDLE (an empty maple-tree slot reads as 0)."""
        i = bisect_right(self.starts, fid) - 1
        if i >= 0 and fid <= self.ends[i]:
            return self.actions[i]
        return SmcccFilterAction.HANDLE

    def set_raw(self, data: bytes, vm_has_run: bool) -> None:
        """kvm_arm_set_smccc_filter(): validate ``struct kvm_smccc_filter`` and insert it.

        Errors and their order follow hypercalls.c (ref 6.2): EFAULT for a short buffer,
        EINVAL for pad bytes, a wrapping or empty range or an unknown action, EBUSY once
        a vCPU has run, EEXIST on overlap (the reserved ranges included).
        """
        if len(data) != FILTER_STRUCT.size:
            raise KvmError(errno.EFAULT, f"KVM_SET_DEVICE_ATTR: filter must be {FILTER_STRUCT.size} bytes")
        base, nr, action, pad = FILTER_STRUCT.unpack(data)
        if any(pad):
            raise KvmError(errno.EINVAL, "KVM_ARM_VM_SMCCC_FILTER: non-zero padding")
        start = base
        end = (base + nr - 1) & smccc.MASK32  # computed in u32
        if end < start or action >= len(SmcccFilterAction):
            raise KvmError(
                errno.EINVAL,
                f"KVM_ARM_VM_SMCCC_FILTER: bad range {base:#x}+{nr:#x} or action {action}",
            )
        if vm_has_run:
            raise KvmError(errno.EBUSY, "KVM_ARM_VM_SMCCC_FILTER: a vCPU has already run")
        if not self.configured:
            # The reserved ranges go in first, and stay even if the user's range then fails.
            for r_start, r_end in RESERVED_RANGES:
                self._insert(r_start, r_end, SmcccFilterAction.HANDLE)
        for i, other in enumerate(self.starts):
            if start <= self.ends[i] and other <= end:
                raise KvmError(
                    errno.EEXIST,
                    f"KVM_ARM_VM_SMCCC_FILTER: [{start:#x}, {end:#x}] overlaps "
                    f"[{other:#x}, {self.ends[i]:#x}]",
                )
        act = SmcccFilterAction(action)
        self._insert(start, end, act)
        self.user_ranges.append((start, end, act))

    def _insert(self, start: int, end: int, action: SmcccFilterAction) -> None:
        i = bisect_right(self.starts, start)
        self.starts.insert(i, start)
        self.ends.insert(i, end)
        self.actions.insert(i, action)

    def to_json(self) -> list[dict]:
        return [{"base": s, "nr_functions": e - s + 1, "action": a.flag_name} for s, e, a in self.user_ranges]


def parse_filter_spec(text: str) -> tuple[int, int, SmcccFilterAction]:
    """``BASE:NR:ACTION`` with hex or decimal numbers and ``handle|deny|fwd-to-user``."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"not BASE:NR:ACTION: {text!r}")
    try:
        base, nr = int(parts[0], 0), int(parts[1], 0)
    except ValueError:
        raise ValueError(f"BASE and NR must be integers: {text!r}") from None
    name = parts[2].strip().lower().replace("_", "-")
    for action in SmcccFilterAction:
        if name == action.flag_name:
            return base, nr, action
    known = "|".join(a.flag_name for a in SmcccFilterAction)
    raise ValueError(f"unknown filter action {parts[2]!r} (known: {known})")
