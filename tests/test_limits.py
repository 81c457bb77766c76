"""Run limits: the budget is exact for a guest that never exits; the timeout stops any guest."""

from __future__ import annotations

import time

from emu.abi.exits import FaultExit, HypercallExit, StopExit, StopReason
from emu.kvm.limits import RunLimits
from tests.conftest import VECTOR_TABLE, make_vm

COUNTING_LOOP = "mov x0, #0\nloop: add x0, x0, #1\nb loop\n"


def test_budget_is_exact_for_a_runaway_loop() -> None:
    vm, vcpu = make_vm(COUNTING_LOOP, max_insns=10_001)
    stop = vcpu.run()
    assert isinstance(stop, StopExit) and stop.reason is StopReason.BUDGET
    # 1 mov + 5000 (add, b) pairs = 10001 instructions.
    assert vcpu.get_reg("x0") == 5000
    assert vm.limits.charged == 10_001


def test_budget_is_exact_across_slices() -> None:
    vm, vcpu = make_vm(COUNTING_LOOP, max_insns=10_001)
    vm.limits.slice_insns = 999
    vcpu.run()
    assert vcpu.get_reg("x0") == 5000


def test_exits_are_charged_so_exit_loops_end() -> None:
    from emu import Cap

    _vm, vcpu = make_vm("loop: ldr x0, =0xc6000040\nhvc #0\nb loop\n", Cap.ARM_HVC_TO_USER, max_insns=50)
    exits = 0
    while isinstance(vcpu.run(), HypercallExit):
        exits += 1
        assert exits < 1000
    assert exits > 0


def test_timeout_stops_a_count_less_loop() -> None:
    _vm, vcpu = make_vm("spin: b spin\n", timeout=0.3)
    start = time.monotonic()
    stop = vcpu.run()
    assert isinstance(stop, StopExit) and stop.reason is StopReason.TIMEOUT
    assert time.monotonic() - start < 5


def test_no_limits_means_no_watchdog() -> None:
    limits = RunLimits()
    limits.start()
    assert limits.reached() is None and limits.slice() == 0


def test_limits_validate() -> None:
    import pytest

    with pytest.raises(ValueError):
        RunLimits(max_insns=0)
    with pytest.raises(ValueError):
        RunLimits(timeout=-1)


# Vectors installed, then the MMU enabled over empty tables: every fetch faults, and so
# does the fetch of the vector that takes the fault. No instruction ever completes.
# Every pass takes an UNDEF to the guest's own vectors, which branch back to the UDF.
EXCEPTION_LOOP = (
    """
    adr     x1, vectors
    msr     vbar_el1, x1
sync:
    .inst   0x00000000              // UDF #0
"""
    + VECTOR_TABLE
)

# The MMU on over empty tables: VBAR_EL1 no longer translates, so there are no vectors to take
# the fault to (on hardware the CPU would fault on its vector fetch forever).
MMU_ON_OVER_EMPTY_TABLES = (
    """
    adr     x1, vectors
    msr     vbar_el1, x1
    ldr     x1, =0x40100000
    msr     ttbr0_el1, x1
    mov     x1, #0x19
    msr     tcr_el1, x1
    isb
    mrs     x1, sctlr_el1
    orr     x1, x1, #1
    msr     sctlr_el1, x1
    isb
sync:
    b       sync
"""
    + VECTOR_TABLE
)


def test_vectors_that_do_not_translate_end_the_run_at_once() -> None:
    vm, vcpu = make_vm(MMU_ON_OVER_EMPTY_TABLES, max_insns=500, timeout=20)
    stop = vcpu.run()
    assert isinstance(stop, FaultExit) and "VBAR_EL1" in stop.cause and "does not translate" in stop.cause
    assert vm.trace.exceptions == []


def test_budget_bounds_an_exception_loop() -> None:
    vm, vcpu = make_vm(EXCEPTION_LOOP, max_insns=500, timeout=20)
    start = time.monotonic()
    stop = vcpu.run()
    assert isinstance(stop, StopExit) and stop.reason is StopReason.BUDGET
    assert time.monotonic() - start < 5
    # Each pass costs the B, the UDF's slice and the delivered exception.
    assert 100 <= len(vm.trace.exceptions) <= 250
    assert vm.clock.ns >= len(vm.trace.exceptions)


def test_exceptions_advance_virtual_time() -> None:
    vm, vcpu = make_vm(EXCEPTION_LOOP, timeout=0.3)
    stop = vcpu.run()
    assert isinstance(stop, StopExit) and stop.reason is StopReason.TIMEOUT
    times = [e.time_ns for e in vm.trace.exceptions[:3]]
    assert times == sorted(set(times)) and vm.clock.ns >= len(vm.trace.exceptions) > 100


def test_a_slice_ended_by_an_abort_is_charged_one_instruction() -> None:
    source = "mov x1, #0x1000\nadr x2, vectors\nmsr vbar_el1, x2\nldr x0, [x1]\nsync: b sync\n" + VECTOR_TABLE
    vm, vcpu = make_vm(source, max_insns=10_000)
    vcpu.run_slice(10_000)
    assert len(vm.trace.exceptions) == 1
    assert vm.limits.charged == 2  # the slice (cut short) and the exception


def test_a_timeout_must_be_finite() -> None:
    import pytest

    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            RunLimits(timeout=bad)
