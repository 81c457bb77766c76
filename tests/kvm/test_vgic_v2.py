"""The GICv2 model, driven through its MMIO registers the way Linux's irq-gic.c does."""

from __future__ import annotations

import errno
import json

import pytest

from emu.errors import KvmError
from emu.kvm.vgic import SPURIOUS, GicV2

GICD_BASE, GICC_BASE = 0x0800_0000, 0x0801_0000
CTLR, TYPER, IIDR = 0x000, 0x004, 0x008
IGROUPR, ISENABLER, ICENABLER = 0x080, 0x100, 0x180
ISPENDR, ICPENDR, ISACTIVER, ICACTIVER = 0x200, 0x280, 0x300, 0x380
IPRIORITYR, ITARGETSR, ICFGR, SGIR = 0x400, 0x800, 0xC00, 0xF00
CPENDSGIR, SPENDSGIR = 0xF10, 0xF20
C_CTLR, PMR, BPR, IAR, EOIR, RPR, HPPIR = 0x00, 0x04, 0x08, 0x0C, 0x10, 0x14, 0x18
ABPR, AIAR, AHPPIR, APR0, C_IIDR, DIR = 0x1C, 0x20, 0x28, 0xD0, 0xFC, 0x1000
UART = 33


def dist(gic: GicV2, cpu: int, off: int, value: int | None = None, size: int = 4) -> int:
    if value is None:
        return gic.distributor.read(cpu, off, size)
    gic.distributor.write(cpu, off, size, value)
    return value


def cpuif(gic: GicV2, cpu: int, off: int, value: int | None = None) -> int:
    if value is None:
        return gic.cpu_interface.read(cpu, off, 4)
    gic.cpu_interface.write(cpu, off, 4, value)
    return value


def up(nr_cpus: int = 2, eoimode: bool = False) -> GicV2:
    """A GIC after Linux's gic_dist_init + gic_cpu_init on every vCPU."""
    gic = GicV2(nr_cpus)
    dist(gic, 0, CTLR, 1)
    for cpu in range(nr_cpus):
        cpuif(gic, cpu, PMR, 0xF0)
        cpuif(gic, cpu, C_CTLR, 1 | (1 << 9 if eoimode else 0))
    return gic


def spi(gic: GicV2, intid: int, prio: int = 0xA0, target: int = 0, edge: bool = False) -> None:
    """Configure and enable an SPI as irq-gic.c's irq_set_type / enable would."""
    dist(gic, 0, IPRIORITYR + intid, prio, size=1)
    dist(gic, 0, ITARGETSR + intid, 1 << target, size=1)
    reg = ICFGR + intid // 16 * 4
    shift = intid % 16 * 2
    dist(gic, 0, reg, (dist(gic, 0, reg) & ~(3 << shift)) | (2 << shift if edge else 0))
    dist(gic, 0, ISENABLER + intid // 32 * 4, 1 << intid % 32)


@pytest.mark.parametrize(
    "nr_cpus, off, expected",
    [
        (2, TYPER, 0x28),  # ITLinesNumber 8 (288 IRQs), CPUNumber 1
        (8, TYPER, 0xE8),
        (1, TYPER, 0x08),
        (2, IIDR, 0x4B00343B),  # PRODUCT_ID_KVM, revision 3, Arm
        (2, CTLR, 0),
        (2, ISENABLER, 0x0000FFFF),  # SGIs come up enabled
        (2, ICFGR, 0xAAAAAAAA),  # SGIs edge
        (2, ICFGR + 4, 0),  # PPIs level
        (2, ICFGR + 8, 0xAAAAAAAA),  # SPIs edge until the driver sets them
        (2, IGROUPR, 0),  # everything in Group 0
        (2, 0xFE8, 0),  # KVM registers no ID registers for GICv2
        (2, ITARGETSR + 32, 0),
    ],
)
def test_distributor_probe_values(nr_cpus: int, off: int, expected: int) -> None:
    assert dist(GicV2(nr_cpus), 0, off) == expected


@pytest.mark.parametrize(
    "off, expected",
    [
        (C_IIDR, 0x04B2043B),
        (C_CTLR, 0),
        (PMR, 0),
        (BPR, 2),
        (ABPR, 3),
        (RPR, 0xFF),
        (IAR, SPURIOUS),
        (HPPIR, SPURIOUS),
    ],
)
def test_cpu_interface_reset_values(off: int, expected: int) -> None:
    assert cpuif(GicV2(1), 0, off) == expected


def test_regions_at_qemu_virt_addresses() -> None:
    gic = GicV2(1)
    assert [(base, size) for base, size, _ in gic.regions] == [(GICD_BASE, 0x10000), (GICC_BASE, 0x10000)]
    assert gic.regions[0][2] is gic.distributor and gic.regions[1][2] is gic.cpu_interface


@pytest.mark.parametrize("cpu", [0, 1, 3])
def test_itargetsr_of_private_irqs_names_the_reader(cpu: int) -> None:
    gic = GicV2(4)
    assert [dist(gic, cpu, ITARGETSR + 4 * i) for i in range(8)] == [0x01010101 << cpu] * 8
    dist(gic, cpu, ITARGETSR, 0xFFFFFFFF)  # read-only
    assert dist(gic, cpu, ITARGETSR) == 0x01010101 << cpu


def test_nine_vcpus_is_an_error() -> None:
    GicV2(8)
    with pytest.raises(KvmError, match="at most 8 vCPUs") as err:
        GicV2(9)
    assert err.value.errno == errno.E2BIG


def test_priority_keeps_five_bits_and_byte_access() -> None:
    gic = GicV2(1)
    dist(gic, 0, IPRIORITYR + 40, 0xFF, size=1)
    dist(gic, 0, IPRIORITYR + 44, 0x12345678)
    assert dist(gic, 0, IPRIORITYR + 40) == 0xF8
    assert dist(gic, 0, IPRIORITYR + 44) == 0x10305078
    assert dist(gic, 0, IPRIORITYR + 41, size=1) == 0
    cpuif(gic, 0, PMR, 0xFF)
    assert cpuif(gic, 0, PMR) == 0xF8


def test_bad_accesses_read_zero_and_are_ignored() -> None:
    gic = GicV2(1)
    assert dist(gic, 0, ISENABLER, size=1) == 0  # byte access to a bit array
    dist(gic, 0, ISENABLER + 4, 1, size=1)
    assert dist(gic, 0, ISENABLER + 4) == 0
    assert dist(gic, 0, ISENABLER + 0x7C) == 0  # IRQs past 288 do not exist
    assert dist(gic, 0, IPRIORITYR + 1) == 0  # misaligned word
    assert dist(gic, 0, 0x1000) == 0  # past KVM's 4 KiB of registers


@pytest.mark.parametrize("edge", [False, True])
def test_spi_cycle_level_repends_edge_does_not(edge: bool) -> None:
    gic = up()
    spi(gic, UART, edge=edge)
    assert not gic.irq_pending(0)
    gic.set_irq_level(UART, True)
    assert gic.irq_pending(0) and not gic.irq_pending(1)
    assert cpuif(gic, 0, HPPIR) == UART
    assert cpuif(gic, 0, IAR) == UART
    assert cpuif(gic, 0, RPR) == 0xA0
    assert not gic.irq_pending(0)
    assert dist(gic, 0, ISACTIVER + 4) == 1 << 1
    cpuif(gic, 0, EOIR, UART)
    assert dist(gic, 0, ISACTIVER + 4) == 0
    assert cpuif(gic, 0, RPR) == 0xFF
    # Line still high: a level IRQ is pending again, an edge one is done.
    assert gic.irq_pending(0) is (not edge)
    assert cpuif(gic, 0, IAR) == (SPURIOUS if edge else UART)


def test_every_assertion_of_an_edge_line_is_an_edge() -> None:
    # KVM_IRQ_LINE semantics (vgic_validate_injection): level 1 on an edge IRQ injects.
    gic = up()
    spi(gic, 40, edge=True)
    gic.set_irq_level(40, True)
    assert cpuif(gic, 0, IAR) == 40
    cpuif(gic, 0, EOIR, 40)
    assert not gic.irq_pending(0)
    gic.set_irq_level(40, True)  # still high, no falling edge seen: injects
    gic.set_irq_level(40, True)
    assert cpuif(gic, 0, IAR) == 40
    cpuif(gic, 0, EOIR, 40)
    assert cpuif(gic, 0, IAR) == SPURIOUS  # two assertions, one latch


def test_level_irq_acked_with_line_high_is_active_and_pending() -> None:
    gic = up()
    spi(gic, UART)
    gic.set_irq_level(UART, True)
    assert cpuif(gic, 0, IAR) == UART
    assert dist(gic, 0, ISPENDR + 4) == 1 << 1 and dist(gic, 0, ISACTIVER + 4) == 1 << 1
    assert cpuif(gic, 0, IAR) == SPURIOUS  # not taken again while active
    gic.set_irq_level(UART, False)  # the driver quiets the device
    assert dist(gic, 0, ISPENDR + 4) == 0
    cpuif(gic, 0, EOIR, UART)
    assert not gic.irq_pending(0) and cpuif(gic, 0, IAR) == SPURIOUS


def test_icpendr_cannot_clear_an_asserted_level_line() -> None:
    gic = up()
    spi(gic, UART)
    dist(gic, 0, ISPENDR + 4, 1 << 1)
    gic.set_irq_level(UART, True)
    dist(gic, 0, ICPENDR + 4, 1 << 1)
    assert dist(gic, 0, ISPENDR + 4) == 1 << 1
    gic.set_irq_level(UART, False)
    assert dist(gic, 0, ISPENDR + 4) == 0


def test_spurious_when_nothing_or_disabled() -> None:
    gic = up()
    assert cpuif(gic, 0, IAR) == SPURIOUS
    spi(gic, UART)
    gic.set_irq_level(UART, True)
    dist(gic, 0, CTLR, 0)
    assert not gic.irq_pending(0) and cpuif(gic, 0, IAR) == SPURIOUS
    dist(gic, 0, CTLR, 1)
    cpuif(gic, 0, C_CTLR, 0)
    assert not gic.irq_pending(0) and cpuif(gic, 0, IAR) == SPURIOUS
    dist(gic, 0, ICENABLER + 4, 1 << 1)
    cpuif(gic, 0, C_CTLR, 1)
    assert not gic.irq_pending(0) and cpuif(gic, 0, IAR) == SPURIOUS
    assert dist(gic, 0, ISPENDR + 4) == 1 << 1  # still pending, just masked


@pytest.mark.parametrize(
    "prio, pmr, taken",
    [
        (0xA0, 0xA0, False),
        (0xA0, 0xA8, True),
        (0x00, 0x00, False),
        (0xF0, 0xF8, True),
    ],
)
def test_priority_mask(prio: int, pmr: int, taken: bool) -> None:
    gic = up()
    spi(gic, UART, prio=prio)
    cpuif(gic, 0, PMR, pmr)
    gic.set_irq_level(UART, True)
    assert gic.irq_pending(0) is taken
    assert cpuif(gic, 0, IAR) == (UART if taken else SPURIOUS)
    assert cpuif(gic, 0, HPPIR) == (SPURIOUS if taken else UART)  # HPPIR ignores PMR


@pytest.mark.parametrize(
    "bpr, first, second, preempts",
    [
        (2, 0x80, 0x40, True),  # higher priority preempts
        (2, 0x80, 0x80, False),  # equal priority does not
        (2, 0x80, 0xC0, False),  # lower does not
        (2, 0x48, 0x40, True),  # BPR 2: group priority is [7:3], all five bits
        (3, 0x48, 0x40, False),  # BPR 3: [7:4], 0x48 and 0x40 are one group
        (6, 0x80, 0x40, True),  # BPR 6: bit 7 only
        (6, 0x40, 0x00, False),
        (7, 0x80, 0x00, False),  # BPR 7: no preemption at all
    ],
)
def test_preemption_and_binary_point(bpr: int, first: int, second: int, preempts: bool) -> None:
    gic = up()
    cpuif(gic, 0, BPR, bpr)
    mask = (0xFF << (bpr + 1)) & 0xFF
    spi(gic, 40, prio=first)
    spi(gic, 41, prio=second)
    gic.set_irq_level(40, True)
    assert cpuif(gic, 0, IAR) == 40
    assert cpuif(gic, 0, RPR) == first & mask
    gic.set_irq_level(41, True)
    assert gic.irq_pending(0) is preempts
    assert cpuif(gic, 0, IAR) == (41 if preempts else SPURIOUS)
    if preempts:
        assert cpuif(gic, 0, RPR) == second & mask
        cpuif(gic, 0, EOIR, 41)
        assert cpuif(gic, 0, RPR) == first & mask
    cpuif(gic, 0, EOIR, 40)
    assert cpuif(gic, 0, RPR) == 0xFF


def test_itargetsr_routes_to_another_cpu() -> None:
    gic = up(3)
    spi(gic, 40, target=2)
    gic.set_irq_level(40, True)
    assert [gic.irq_pending(c) for c in range(3)] == [False, False, True]
    assert cpuif(gic, 0, IAR) == SPURIOUS
    assert cpuif(gic, 2, IAR) == 40
    dist(gic, 0, ITARGETSR + 40, 0xFF, size=1)  # only existing vCPUs stick
    assert dist(gic, 0, ITARGETSR + 40, size=1) == 0b111


@pytest.mark.parametrize(
    "sgir, sender, receivers",
    [
        (0x00060003, 0, {1: 3, 2: 3}),  # target list: CPUs 1 and 2
        (0x01000005, 1, {0: 5 | 1 << 10, 2: 5 | 1 << 10, 3: 5 | 1 << 10}),  # all but self
        (0x02000007, 2, {2: 7 | 2 << 10}),  # self only
        (0x03FF0001, 0, {}),  # reserved filter
        (0x00300004, 0, {}),  # CPUs 4 and 5 do not exist
    ],
)
def test_sgir_targets_and_source(sgir: int, sender: int, receivers: dict[int, int]) -> None:
    gic = up(4)
    dist(gic, sender, SGIR, sgir)
    for cpu in range(4):
        assert gic.irq_pending(cpu) is (cpu in receivers)
        assert cpuif(gic, cpu, IAR) == receivers.get(cpu, SPURIOUS)


def test_sgi_from_two_sources_is_taken_once_per_source() -> None:
    gic = up(3)
    dist(gic, 2, SGIR, 0x00010007)
    dist(gic, 1, SGIR, 0x00010007)
    assert dist(gic, 0, SPENDSGIR + 4) == 0b110 << 24
    assert cpuif(gic, 0, HPPIR) == 7 | 1 << 10
    assert cpuif(gic, 0, IAR) == 7 | 1 << 10
    assert dist(gic, 0, ISPENDR) == 1 << 7 and dist(gic, 0, ISACTIVER) == 1 << 7
    cpuif(gic, 0, EOIR, 7 | 1 << 10)
    assert cpuif(gic, 0, IAR) == 7 | 2 << 10
    cpuif(gic, 0, EOIR, 7 | 2 << 10)
    assert cpuif(gic, 0, IAR) == SPURIOUS


def test_sgi_pending_registers() -> None:
    gic = up(2)
    dist(gic, 0, ISPENDR, 0xFFFF)  # SGI bits of ISPENDR0 are WI
    assert dist(gic, 0, ISPENDR) == 0
    dist(gic, 1, SPENDSGIR + 2, 0b01, size=1)  # SGI 2 on CPU 1, "from" CPU 0
    assert dist(gic, 1, ISPENDR) == 1 << 2 and dist(gic, 0, ISPENDR) == 0
    assert cpuif(gic, 1, HPPIR) == 2
    dist(gic, 1, CPENDSGIR, 0x00010000)
    assert dist(gic, 1, ISPENDR) == 0 and not gic.irq_pending(1)


def test_private_irqs_are_banked_per_cpu() -> None:
    gic = up(2)
    dist(gic, 0, ICENABLER, 0xFFFF)
    dist(gic, 1, ISENABLER, 1 << 27)
    dist(gic, 1, IPRIORITYR + 27, 0x50, size=1)
    assert dist(gic, 0, ISENABLER) == 0
    assert dist(gic, 1, ISENABLER) == 0xFFFF | 1 << 27
    assert dist(gic, 0, IPRIORITYR + 24) == 0 and dist(gic, 1, IPRIORITYR + 24) == 0x50000000
    gic.set_irq_level(27, True, cpu=0)  # CPU 0's timer: enabled only on CPU 1
    assert not gic.irq_pending(0)
    gic.set_irq_level(27, True, cpu=1)
    assert gic.irq_pending(1) and cpuif(gic, 1, IAR) == 27
    dist(gic, 0, ICFGR + 4, 0xFFFFFFFF)  # PPI config is read-only
    assert dist(gic, 0, ICFGR + 4) == 0


def test_eoimode1_drops_priority_then_dir_deactivates() -> None:
    gic = up(eoimode=True)
    assert cpuif(gic, 0, C_CTLR) == 1 | 1 << 9
    spi(gic, 40, edge=True)
    gic.set_irq_level(40, True)
    assert cpuif(gic, 0, IAR) == 40
    cpuif(gic, 0, EOIR, 40)
    assert cpuif(gic, 0, RPR) == 0xFF
    assert dist(gic, 0, ISACTIVER + 4) == 1 << 8
    gic.set_irq_level(40, True)  # pending again, but still active
    assert not gic.irq_pending(0)
    cpuif(gic, 0, DIR, 40)
    assert dist(gic, 0, ISACTIVER + 4) == 0
    assert gic.irq_pending(0) and cpuif(gic, 0, IAR) == 40


def test_group1_needs_ackctl_or_the_alias() -> None:
    gic = up()
    cpuif(gic, 0, C_CTLR, 0b011)  # both groups, AckCtl=0
    dist(gic, 0, IGROUPR + 4, 1 << 8)
    spi(gic, 40)
    gic.set_irq_level(40, True)
    assert gic.irq_pending(0)
    assert cpuif(gic, 0, HPPIR) == 1022 and cpuif(gic, 0, IAR) == 1022
    assert cpuif(gic, 0, AHPPIR) == 40 and cpuif(gic, 0, AIAR) == 40
    cpuif(gic, 0, 0x24, 40)  # GICC_AEOIR
    assert dist(gic, 0, ISACTIVER + 4) == 0


def test_group0_goes_to_fiq_with_fiqen() -> None:
    gic = up()
    spi(gic, 40)
    gic.set_irq_level(40, True)
    cpuif(gic, 0, C_CTLR, 1 | 1 << 3)
    assert not gic.irq_pending(0)


def test_active_priority_register() -> None:
    gic = up()
    spi(gic, 40, prio=0x48)
    gic.set_irq_level(40, True)
    cpuif(gic, 0, IAR)
    assert cpuif(gic, 0, APR0) == 1 << (0x48 >> 3)
    assert cpuif(gic, 0, APR0 + 4) == 0


def test_line_and_event_callbacks_fire_exactly_on_changes() -> None:
    gic = up(2)
    lines: list[tuple[int, bool]] = []
    events: list[tuple[str, int, int]] = []
    gic.on_line_change = lambda cpu, level: lines.append((cpu, level))
    gic.on_event = lambda kind, cpu, intid: events.append((kind, cpu, intid))
    spi(gic, UART, target=1)
    gic.set_irq_level(UART, True)
    gic.set_irq_level(UART, True)  # no change: nothing reported
    assert lines == [(1, True)] and events == [("raised", 1, UART)]
    assert cpuif(gic, 1, IAR) == UART
    gic.set_irq_level(UART, False)
    cpuif(gic, 1, EOIR, UART)
    cpuif(gic, 1, EOIR, UART)  # nothing active: no second completion
    dist(gic, 0, SGIR, 0x00010002)
    assert lines == [(1, True), (1, False), (0, True)]
    assert events == [("raised", 1, UART), ("acked", 1, UART), ("completed", 1, UART), ("raised", 0, 2)]


def test_snapshot_round_trip() -> None:
    gic = up(3, eoimode=True)
    spi(gic, UART, prio=0x30, target=2)
    spi(gic, 50, prio=0x60, edge=True)
    dist(gic, 1, SGIR, 0x00010003)
    gic.set_irq_level(UART, True)
    gic.set_irq_level(50, True)
    gic.set_irq_level(30, True, cpu=1)
    cpuif(gic, 2, BPR, 4)
    assert cpuif(gic, 2, IAR) == UART
    state = gic.snapshot()
    assert json.loads(json.dumps(state)) == state
    copy = GicV2(3)
    lines: list[tuple[int, bool]] = []
    copy.on_line_change = lambda cpu, level: lines.append((cpu, level))
    copy.restore(state)
    assert copy.snapshot() == state
    assert lines == [(0, True)]
    for g in (gic, copy):
        assert cpuif(g, 0, IAR) == 3 | 1 << 10
        assert cpuif(g, 2, RPR) == 0x20
        cpuif(g, 2, EOIR, UART)
        assert dist(g, 0, ISACTIVER + 4) == 1 << 1
        cpuif(g, 2, DIR, UART)
    assert copy.snapshot() == gic.snapshot()
    with pytest.raises(ValueError, match="does not fit"):
        GicV2(2).restore(state)


@pytest.mark.parametrize("intid, cpu", [(5, None), (27, None), (288, None), (33, 0), (27, 7)])
def test_set_irq_level_rejects_what_is_not_a_line(intid: int, cpu: int | None) -> None:
    with pytest.raises(ValueError):
        GicV2(2).set_irq_level(intid, True, cpu)
