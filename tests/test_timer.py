"""The generic timers on the virtual clock: register semantics and wake times."""

from __future__ import annotations

from emu.arm.clock import CNTFRQ_HZ, VirtualClock
from emu.arm.timer import (
    CTL_ENABLE,
    CTL_IMASK,
    CTL_ISTATUS,
    OP2_CTL,
    OP2_CVAL,
    OP2_TVAL,
    PHYS_CRM,
    VIRT_CRM,
    GenericTimers,
)


def timers_at(ns: int) -> GenericTimers:
    clock = VirtualClock()
    clock.ns = ns
    return GenericTimers(clock)


def test_cval_and_ctl_read_back_with_istatus() -> None:
    t = timers_at(16_000)  # virtual counter 1000
    t.write(VIRT_CRM, OP2_CVAL, 1500)
    t.write(VIRT_CRM, OP2_CTL, CTL_ENABLE | CTL_ISTATUS)  # ISTATUS is read-only
    assert t.read(VIRT_CRM, OP2_CVAL) == 1500
    assert t.read(VIRT_CRM, OP2_CTL) == CTL_ENABLE
    t.clock.ns = 16 * 1500
    assert t.read(VIRT_CRM, OP2_CTL) == CTL_ENABLE | CTL_ISTATUS


def test_tval_is_a_signed_32_bit_distance() -> None:
    t = timers_at(16_000)
    t.write(VIRT_CRM, OP2_TVAL, 500)
    assert t.read(VIRT_CRM, OP2_CVAL) == 1500
    assert t.read(VIRT_CRM, OP2_TVAL) == 500
    t.clock.ns = 16 * 2000
    assert t.read(VIRT_CRM, OP2_TVAL) == (-500) & (2**64 - 1)
    t.write(VIRT_CRM, OP2_TVAL, 0xFFFF_FFFF)  # -1
    assert t.read(VIRT_CRM, OP2_CVAL) == 1999


def test_wake_time_needs_enable_and_no_mask() -> None:
    t = timers_at(0)
    t.write(VIRT_CRM, OP2_CVAL, CNTFRQ_HZ // 1000)  # 1 ms
    assert t.wake_time_ns() is None
    t.write(VIRT_CRM, OP2_CTL, CTL_ENABLE | CTL_IMASK)
    assert t.wake_time_ns() is None
    t.write(VIRT_CRM, OP2_CTL, CTL_ENABLE)
    assert t.wake_time_ns() == 1_000_000


def test_physical_timer_uses_the_physical_counter() -> None:
    t = timers_at(0)
    base = t.clock.phys_counter_base
    t.write(PHYS_CRM, OP2_CVAL, base + 625)
    t.write(PHYS_CRM, OP2_CTL, CTL_ENABLE)
    assert t.wake_time_ns() == 10_000
    t.reset()
    assert t.wake_time_ns() is None
