"""Scheduling: interleavings really vary with the seed, repeat exactly per seed, and progress."""

from __future__ import annotations

import pytest

from emu import Vm
from emu.kvm.scheduler import RandomSchedule, RoundRobin, make_scheduler
from emu.vmm.boot import Schedule, boot, schedules
from tests.conftest import FIRMWARE, run_cli


class FakeVcpu:
    def __init__(self, vcpu_id: int) -> None:
        self.id = vcpu_id


def test_round_robin_takes_turns_in_id_order() -> None:
    rr = RoundRobin(quantum=10)
    cpus = [FakeVcpu(i) for i in range(3)]
    assert [rr.pick(cpus)[0].id for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [rr.pick([cpus[0], cpus[2]])[0].id for _ in range(3)] == [2, 0, 2]


def test_random_schedule_is_a_function_of_the_seed() -> None:
    cpus = [FakeVcpu(i) for i in range(4)]
    picks = [
        [(v.id, q) for v, q in (RandomSchedule(seed, 100).pick(cpus) for _ in range(50))]
        for seed in (1, 1, 2)
    ]
    assert picks[0] == picks[1] != picks[2]
    assert all(1 <= q <= 200 for _, q in picks[0])


def test_unknown_schedule() -> None:
    with pytest.raises(ValueError, match="rr, random"):
        make_scheduler("fifo", 0)


def psci_order(schedule: Schedule) -> list[tuple[int, str]]:
    result = boot(FIRMWARE / "smp_boot.S", cpus=8, schedule=schedule)
    return [(e.caller, e.name) for e in result.psci]


def test_seeds_explore_different_interleavings() -> None:
    orders = {tuple(psci_order(s)) for s in schedules(20)}
    assert len(orders) > 5


def test_same_seed_same_interleaving() -> None:
    assert psci_order(Schedule("random", 11)) == psci_order(Schedule("random", 11))


def test_same_seed_gives_identical_json() -> None:
    args = ("run", FIRMWARE / "smp_boot.S", "--cpus", "8", "--schedule", "random", "--seed", "5", "--json")
    first, second = run_cli(*args), run_cli(*args)
    assert first.status == 0 and first.stdout == second.stdout
    other = run_cli(
        "run", FIRMWARE / "smp_boot.S", "--cpus", "8", "--schedule", "random", "--seed", "6", "--json"
    )
    assert other.stdout != first.stdout


def test_spinning_vcpus_do_not_starve_the_others() -> None:
    # vCPU 1 spins on a flag only vCPU 0 sets after a long computation: both must progress.
    source = """
        ldr x0, =0xc4000003
        mov x1, #1
        adr x2, spinner
        mov x3, #0
        hvc #0
        ldr x20, =0x40100000
        ldr x9, =200000
    work:
        subs x9, x9, #1
        b.ne work
        mov x9, #1
        str x9, [x20]
    wait:
        ldr x9, [x20, #8]
        cbz x9, wait
        ldr x0, =0x84000008
        hvc #0
    spinner:
        ldr x20, =0x40100000
    spin:
        wfe
        ldr x9, [x20]
        cbz x9, spin
        str x9, [x20, #8]
        ldr x0, =0x84000002
        hvc #0
    """
    for schedule in (Schedule("rr"), Schedule("random", 3)):
        result = boot(source=source, cpus=2, schedule=schedule)
        result.assert_system_event("SHUTDOWN")


def test_everything_blocked_is_idle_not_a_hang() -> None:
    result = boot(source="ldr x0, =0xc4000003\nmov x1, #1\nadr x2, sleep\nhvc #0\nwfi\nsleep: wfi\n", cpus=2)
    stop = result.assert_stop("idle")
    assert stop.vcpu is None
    assert result.power() == ["halted", "halted"]


def test_timer_wakes_a_vcpu_while_the_other_is_blocked() -> None:
    source = """
        ldr x0, =0xc4000003
        mov x1, #1
        adr x2, sleeper
        mov x3, #0
        hvc #0
        wfi                      // no timer: only the other vCPU's SYSTEM_OFF ends this
    sleeper:
        mrs x9, cntvct_el0
        ldr x10, =62500          // 1 ms
        add x9, x9, x10
        msr cntv_cval_el0, x9
        mov x9, #1
        msr cntv_ctl_el0, x9
        wfi
        ldr x0, =0x84000008
        hvc #0
    """
    result = boot(source=source, cpus=2)
    result.assert_system_event("SHUTDOWN")
    assert result.vm.clock.ns >= 1_000_000


def test_vm_without_vcpus_cannot_run() -> None:
    from emu.errors import KvmError

    with pytest.raises(KvmError):
        Vm().run()


ATOMICS = """
    // vCPU 0 starts vCPUs 1..3; all four then add 1000 to two counters: one with
    // LDAXR/STLXR, one with a plain load/add/store inside a LDAXR/STLXR spinlock.
    ldr x20, =0x40100000
    mov x19, #1
start:
    ldr x0, =0xc4000003
    mov x1, x19
    adr x2, worker
    mov x3, #0
    hvc #0
    add x19, x19, #1
    cmp x19, #4
    b.lo start
worker:
    ldr x20, =0x40100000
    add x21, x20, #8            // lock
    add x22, x20, #16           // counter under the lock
    add x23, x20, #24           // vCPUs done
    mov x19, #1000
again:
    ldaxr x5, [x20]
    add x5, x5, #1
    stlxr w6, x5, [x20]
    cbnz w6, again
    mov x7, #1
lock:
    ldaxr x5, [x21]
    cbnz x5, lock
    stxr w6, x7, [x21]
    cbnz w6, lock
    ldr x5, [x22]
    add x5, x5, #1
    str x5, [x22]
    stlr xzr, [x21]
    subs x19, x19, #1
    b.ne again
done:
    ldaxr x5, [x23]
    add x5, x5, #1
    stlxr w6, x5, [x23]
    cbnz w6, done
    mrs x9, mpidr_el1
    and x9, x9, #0xff
    cbnz x9, off
wait:
    ldr x5, [x23]
    cmp x5, #4
    b.lo wait
    ldr x0, =0x84000008
    hvc #0
off:
    ldr x0, =0x84000002
    hvc #0
"""


@pytest.mark.parametrize("schedule", [Schedule("rr")] + [Schedule("random", s) for s in range(10)], ids=str)
def test_exclusives_and_spinlocks_across_vcpus(schedule: Schedule) -> None:
    # Quanta of a few instructions split LDAXR/STLXR pairs between vCPUs on purpose.
    result = boot(source=ATOMICS, cpus=4, schedule=schedule, quantum=5)
    result.assert_system_event("SHUTDOWN")
    assert result.u64(0x4010_0000, 4) == [4000, 0, 4000, 4]
