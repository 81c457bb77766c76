"""The GICv3 model, driven through MMIO and ICC_* registers the way irq-gic-v3.c does."""

from __future__ import annotations

import errno
import json

import pytest

from emu.errors import KvmError
from emu.kvm.vgic import ICC_REGISTERS, SPURIOUS, GicV3, kvm_mpidr

GICD_BASE, GICR_BASE, FRAME, SGI = 0x0800_0000, 0x080A_0000, 0x20000, 0x10000
CTLR, TYPER, IIDR, TYPER2, STATUSR = 0x0, 0x4, 0x8, 0xC, 0x10
ISENABLER, ICENABLER, ISPENDR, ISACTIVER = 0x100, 0x180, 0x200, 0x300
IGROUPR, IPRIORITYR, ICFGR, IROUTER, PIDR2 = 0x80, 0x400, 0xC00, 0x6000, 0xFFE8
GICR_CTLR, GICR_IIDR, GICR_TYPER, GICR_WAKER = 0x0, 0x4, 0x8, 0x14

ICC = {
    "PMR": (3, 0, 4, 6, 0),
    "IAR0": (3, 0, 12, 8, 0),
    "EOIR0": (3, 0, 12, 8, 1),
    "HPPIR0": (3, 0, 12, 8, 2),
    "BPR0": (3, 0, 12, 8, 3),
    "AP0R0": (3, 0, 12, 8, 4),
    "AP0R3": (3, 0, 12, 8, 7),
    "AP1R0": (3, 0, 12, 9, 0),
    "AP1R3": (3, 0, 12, 9, 3),
    "DIR": (3, 0, 12, 11, 1),
    "RPR": (3, 0, 12, 11, 3),
    "SGI1R": (3, 0, 12, 11, 5),
    "ASGI1R": (3, 0, 12, 11, 6),
    "SGI0R": (3, 0, 12, 11, 7),
    "IAR1": (3, 0, 12, 12, 0),
    "EOIR1": (3, 0, 12, 12, 1),
    "HPPIR1": (3, 0, 12, 12, 2),
    "BPR1": (3, 0, 12, 12, 3),
    "CTLR": (3, 0, 12, 12, 4),
    "SRE": (3, 0, 12, 12, 5),
    "IGRPEN0": (3, 0, 12, 12, 6),
    "IGRPEN1": (3, 0, 12, 12, 7),
}
UART = 33


def dist(gic: GicV3, off: int, value: int | None = None, size: int = 4, cpu: int = 0) -> int:
    if value is None:
        return gic.distributor.read(cpu, off, size)
    gic.distributor.write(cpu, off, size, value)
    return value


def rd(gic: GicV3, frame: int, off: int, value: int | None = None, size: int = 4, cpu: int = 0) -> int:
    """Access redistributor ``frame``'s register ``off`` (SGI_base ones are SGI + off)."""
    if value is None:
        return gic.redistributors.read(cpu, frame * FRAME + off, size)
    gic.redistributors.write(cpu, frame * FRAME + off, size, value)
    return value


def icc(gic: GicV3, cpu: int, name: str, value: int | None = None) -> int | None:
    if value is None:
        return gic.sysreg_read(cpu, ICC[name])
    assert gic.sysreg_write(cpu, ICC[name], value)
    return value


def up(nr_cpus: int = 2, eoimode: bool = False, mpidrs: list[int] | None = None) -> GicV3:
    """A GIC after Linux's gic_dist_init, gic_enable_redist and gic_cpu_sys_reg_init."""
    gic = GicV3(nr_cpus, mpidrs)
    dist(gic, CTLR, 0)
    dist(gic, CTLR, 1 << 4 | 1 << 1 | 1)  # ARE_NS | EnableGrp1A | EnableGrp1
    for cpu in range(nr_cpus):
        rd(gic, cpu, GICR_WAKER, rd(gic, cpu, GICR_WAKER) & ~2)
        assert not rd(gic, cpu, GICR_WAKER) & 4
        icc(gic, cpu, "PMR", 0xF0)
        icc(gic, cpu, "BPR1", 0)
        icc(gic, cpu, "CTLR", 2 if eoimode else 0)
        icc(gic, cpu, "IGRPEN1", 1)
    return gic


def spi(gic: GicV3, intid: int, prio: int = 0xA0, route: int = 0, edge: bool = False) -> None:
    dist(gic, IPRIORITYR + intid, prio, size=1)
    dist(gic, IROUTER + 8 * intid, route, size=8)
    reg = ICFGR + intid // 16 * 4
    shift = intid % 16 * 2
    dist(gic, reg, (dist(gic, reg) & ~(3 << shift)) | (2 << shift if edge else 0))
    dist(gic, ISENABLER + intid // 32 * 4, 1 << intid % 32)


def sgi1r(
    intid: int, targets: int = 0, aff1: int = 0, aff2: int = 0, aff3: int = 0, irm: bool = False
) -> int:
    return targets | aff1 << 16 | intid << 24 | aff2 << 32 | irm << 40 | aff3 << 48


@pytest.mark.parametrize(
    "off, expected",
    [
        (CTLR, 0x50),  # ARE_NS | DS, disabled
        (TYPER, 9 << 19 | 8),  # IDbits 10, ITLinesNumber 8
        (IIDR, 0x4B00343B),
        (TYPER2, 0),
        (STATUSR, 0xFFFFFFFF),  # KVM: read as ones
        (PIDR2, 0x3B),
        (ISENABLER, 0),  # private IRQs live in the redistributors
        (IGROUPR + 4, 0xFFFFFFFF),  # SPIs in Group 1
        (ICFGR + 8, 0xAAAAAAAA),
        (0x800 + 32, 0),  # ITARGETSR RAZ with ARE
    ],
)
def test_distributor_probe_values(off: int, expected: int) -> None:
    assert dist(GicV3(2), off) == expected


def test_gicd_ctlr_enable_and_rwp() -> None:
    gic = GicV3(1)
    dist(gic, CTLR, 0x13)
    assert dist(gic, CTLR) == 0x52  # EnableGrp1 kept, RWP reads 0
    dist(gic, CTLR, 0x1)  # Group 0 enable is not kept
    assert dist(gic, CTLR) == 0x50


@pytest.mark.parametrize("nr_cpus", [1, 3, 20])
def test_redistributor_typer_per_cpu(nr_cpus: int) -> None:
    gic = GicV3(nr_cpus)
    assert gic.regions[1][:2] == (GICR_BASE, nr_cpus * FRAME)
    for cpu in range(nr_cpus):
        aff = kvm_mpidr(cpu) & 0xFFFFFF
        typer = aff << 32 | cpu << 8 | (1 << 4 if cpu == nr_cpus - 1 else 0)
        assert rd(gic, cpu, GICR_TYPER, size=8) == typer
        assert rd(gic, cpu, GICR_TYPER) == typer & 0xFFFFFFFF
        assert rd(gic, cpu, GICR_TYPER + 4) == typer >> 32
        assert rd(gic, cpu, PIDR2) == 0x3B
        assert rd(gic, cpu, GICR_IIDR) == 0x4B00043B
        assert rd(gic, cpu, GICR_CTLR) == 0x6  # IR | CES (revision 3)


def test_regions_at_qemu_virt_addresses() -> None:
    gic = GicV3(4)
    assert [(b, s) for b, s, _ in gic.regions] == [(GICD_BASE, 0x10000), (GICR_BASE, 4 * FRAME)]
    assert gic.regions[0][2] is gic.distributor and gic.regions[1][2] is gic.redistributors


def test_too_many_vcpus_for_the_redistributor_region() -> None:
    GicV3(123)
    with pytest.raises(KvmError, match="at most 123") as err:
        GicV3(124)
    assert err.value.errno == errno.E2BIG


def test_waker_handshake_finishes_at_once() -> None:
    gic = GicV3(1)
    assert rd(gic, 0, GICR_WAKER) == 0  # KVM: RAZ/WI
    rd(gic, 0, GICR_WAKER, 0)  # wake: ProcessorSleep = 0 ...
    assert rd(gic, 0, GICR_WAKER) & 0b100 == 0  # ... ChildrenAsleep reads 0
    rd(gic, 0, GICR_WAKER, 0b10)  # sleep request does not stick
    assert rd(gic, 0, GICR_WAKER) == 0


@pytest.mark.parametrize(
    "name, expected",
    [
        ("SRE", 0x7),
        ("CTLR", 4 << 8 | 1 << 15),
        ("PMR", 0),
        ("BPR0", 2),
        ("BPR1", 3),
        ("IGRPEN0", 0),
        ("IGRPEN1", 0),
        ("RPR", 0xFF),
        ("IAR1", SPURIOUS),
        ("IAR0", SPURIOUS),
        ("HPPIR1", SPURIOUS),
        ("AP1R0", 0),
        ("AP0R3", 0),
    ],
)
def test_icc_reset_values(name: str, expected: int) -> None:
    assert icc(GicV3(1), 0, name) == expected


def test_icc_encodings_match_the_arm_arm() -> None:
    # The table above is Linux's arch/arm64/include/asm/sysreg.h (Arm ARM encodings).
    expected = {f"ICC_{name}_EL1": key for name, key in ICC.items()}
    assert {k: v for k, v in ICC_REGISTERS.items() if k in expected} == expected
    gic = GicV3(1)
    for name, key in ICC_REGISTERS.items():
        handled = gic.sysreg_read(0, key) is not None or gic.sysreg_write(0, key, 0)
        assert handled, name


def test_linux_finds_group0_and_five_priority_bits() -> None:
    gic = GicV3(1)
    pribits = ((icc(gic, 0, "CTLR") or 0) >> 8 & 7) + 1
    assert pribits == 5
    icc(gic, 0, "PMR", 1 << (8 - pribits))  # irq-gic-v3.c, gic_has_group0
    assert icc(gic, 0, "PMR") == 0x08


@pytest.mark.parametrize("name", ["EOIR0", "EOIR1", "DIR", "SGI1R", "ASGI1R", "SGI0R"])
def test_icc_write_only_registers_cannot_be_read(name: str) -> None:
    assert GicV3(1).sysreg_read(0, ICC[name]) is None


@pytest.mark.parametrize("name", ["IAR0", "IAR1", "HPPIR0", "HPPIR1", "RPR"])
def test_icc_read_only_registers_cannot_be_written(name: str) -> None:
    assert GicV3(1).sysreg_write(0, ICC[name], 0) is False


def test_non_icc_keys_are_not_handled() -> None:
    gic = GicV3(1)
    assert gic.sysreg_read(0, (3, 0, 12, 0, 0)) is None  # VBAR_EL1
    assert gic.sysreg_write(0, (3, 0, 12, 0, 0), 0) is False


def test_icc_writable_fields() -> None:
    gic = GicV3(1)
    icc(gic, 0, "SRE", 0)
    assert icc(gic, 0, "SRE") == 7  # writes ignored
    icc(gic, 0, "CTLR", 0xFFFF)
    assert icc(gic, 0, "CTLR") == 4 << 8 | 1 << 15 | 0b11
    icc(gic, 0, "PMR", 0xFF)
    assert icc(gic, 0, "PMR") == 0xF8
    icc(gic, 0, "BPR0", 0)
    assert icc(gic, 0, "BPR0") == 2
    icc(gic, 0, "BPR1", 5)  # CBPR=1: BPR1 reads BPR0 + 1, WI
    assert icc(gic, 0, "BPR1") == 3
    icc(gic, 0, "CTLR", 0)
    assert icc(gic, 0, "BPR1") == 3
    icc(gic, 0, "BPR1", 6)
    assert icc(gic, 0, "BPR1") == 6
    icc(gic, 0, "AP1R3", 0xFFFF)
    assert icc(gic, 0, "AP1R3") == 0


@pytest.mark.parametrize("edge", [False, True])
def test_spi_cycle_level_repends_edge_does_not(edge: bool) -> None:
    gic = up()
    spi(gic, UART, edge=edge)
    gic.set_irq_level(UART, True)
    assert gic.irq_pending(0) and not gic.irq_pending(1)
    assert icc(gic, 0, "HPPIR1") == UART
    assert icc(gic, 0, "IAR1") == UART
    assert icc(gic, 0, "RPR") == 0xA0 and icc(gic, 0, "AP1R0") == 1 << (0xA0 >> 3)
    assert not gic.irq_pending(0)
    icc(gic, 0, "EOIR1", UART)
    assert icc(gic, 0, "RPR") == 0xFF and dist(gic, ISACTIVER + 4) == 0
    assert gic.irq_pending(0) is (not edge)
    assert icc(gic, 0, "IAR1") == (SPURIOUS if edge else UART)


def test_level_irq_acked_with_line_high_is_active_and_pending() -> None:
    gic = up()
    spi(gic, UART)
    gic.set_irq_level(UART, True)
    assert icc(gic, 0, "IAR1") == UART
    assert dist(gic, ISPENDR + 4) == 1 << 1 and dist(gic, ISACTIVER + 4) == 1 << 1
    assert icc(gic, 0, "IAR1") == SPURIOUS
    gic.set_irq_level(UART, False)
    icc(gic, 0, "EOIR1", UART)
    assert icc(gic, 0, "IAR1") == SPURIOUS and not gic.irq_pending(0)


@pytest.mark.parametrize("prio, pmr, taken", [(0xA0, 0xA0, False), (0xA0, 0xA8, True)])
def test_priority_mask(prio: int, pmr: int, taken: bool) -> None:
    gic = up()
    spi(gic, UART, prio=prio)
    icc(gic, 0, "PMR", pmr)
    gic.set_irq_level(UART, True)
    assert gic.irq_pending(0) is taken
    assert icc(gic, 0, "IAR1") == (UART if taken else SPURIOUS)


@pytest.mark.parametrize(
    "bpr1, first, second, preempts",
    [
        (3, 0x80, 0x40, True),
        (3, 0x80, 0x80, False),
        (3, 0x48, 0x40, True),
        (4, 0x48, 0x40, False),  # BPR1 4: group priority [7:4]
        (7, 0x80, 0x00, True),  # BPR1 7: bit 7 is still group priority
    ],
)
def test_preemption_and_binary_point(bpr1: int, first: int, second: int, preempts: bool) -> None:
    gic = up()
    icc(gic, 0, "BPR1", bpr1)
    spi(gic, 40, prio=first)
    spi(gic, 41, prio=second)
    gic.set_irq_level(40, True)
    assert icc(gic, 0, "IAR1") == 40
    gic.set_irq_level(41, True)
    assert gic.irq_pending(0) is preempts
    assert icc(gic, 0, "IAR1") == (41 if preempts else SPURIOUS)


def test_irouter_routes_by_affinity() -> None:
    gic = up(3)
    spi(gic, 40, route=0x000002)
    gic.set_irq_level(40, True)
    assert [gic.irq_pending(c) for c in range(3)] == [False, False, True]
    assert icc(gic, 0, "IAR1") == SPURIOUS and icc(gic, 2, "IAR1") == 40
    dist(gic, IROUTER + 8 * 41, 0xFF_8001_0203, size=8)  # Aff3 and IRM are not kept
    assert dist(gic, IROUTER + 8 * 41, size=8) == 0x010203
    assert dist(gic, IROUTER + 8 * 41 + 4) == 0
    assert dist(gic, IROUTER + 8 * 20, size=8) == 0  # private part RAZ


def test_irouter_to_no_vcpu_delivers_nowhere() -> None:
    gic = up(2)
    events: list[tuple[str, int, int]] = []
    gic.on_event = lambda *e: events.append(e)
    spi(gic, 40, route=0x000105)
    gic.set_irq_level(40, True)
    assert not gic.irq_pending(0) and not gic.irq_pending(1)
    assert events == [("raised", -1, 40)]
    dist(gic, IROUTER + 8 * 40, 1)
    assert gic.irq_pending(1)


def test_sgi1r_targets_by_affinity_and_broadcast() -> None:
    gic = up(20)  # KVM MPIDRs: 16 vCPUs per Aff1 cluster
    icc(gic, 3, "SGI1R", sgi1r(5, targets=0b110, aff1=1))  # 1.1 and 1.2 = vCPUs 17, 18
    assert [c for c in range(20) if gic.irq_pending(c)] == [17, 18]
    assert icc(gic, 17, "IAR1") == 5 and icc(gic, 18, "IAR1") == 5
    icc(gic, 17, "EOIR1", 5)
    icc(gic, 18, "EOIR1", 5)
    icc(gic, 3, "SGI1R", sgi1r(6, targets=0b1, aff1=1, aff2=1))  # no such cluster
    assert not any(gic.irq_pending(c) for c in range(20))
    icc(gic, 3, "SGI1R", sgi1r(7, irm=True))
    assert [c for c in range(20) if gic.irq_pending(c)] == [c for c in range(20) if c != 3]


def test_sgi_with_aff3_reaches_a_vcpu_with_aff3() -> None:
    mpidrs = [0x8000_0000, 0x01_8000_0000]  # vCPU 1 has Aff3 = 1
    gic = up(2, mpidrs=mpidrs)
    icc(gic, 0, "SGI1R", sgi1r(1, targets=1, aff3=1))
    assert gic.irq_pending(1) and not gic.irq_pending(0)
    assert rd(gic, 1, GICR_TYPER, size=8) == 1 << 8 | 1 << 4  # KVM drops Aff3 here


def test_sgi0r_only_raises_group0_sgis() -> None:
    gic = up(2)
    icc(gic, 0, "SGI0R", sgi1r(2, targets=0b10))
    assert rd(gic, 1, SGI + ISPENDR) == 0  # SGI 2 is Group 1
    rd(gic, 1, SGI + IGROUPR, 0xFFFFFFFF & ~(1 << 2))
    icc(gic, 0, "ASGI1R", sgi1r(2, targets=0b10))
    assert rd(gic, 1, SGI + ISPENDR) == 1 << 2
    assert not gic.irq_pending(1)  # Group 0 goes to FIQ
    icc(gic, 1, "IGRPEN0", 1)
    assert icc(gic, 1, "HPPIR1") == SPURIOUS and icc(gic, 1, "HPPIR0") == 2
    assert icc(gic, 1, "IAR1") == SPURIOUS and icc(gic, 1, "IAR0") == 2
    assert icc(gic, 1, "AP0R0") == 1 and icc(gic, 1, "RPR") == 0
    icc(gic, 1, "EOIR0", 2)
    assert icc(gic, 1, "AP0R0") == 0 and rd(gic, 1, SGI + ISACTIVER) == 0


def test_redistributor_frames_bank_private_irqs() -> None:
    gic = up(2)
    rd(gic, 1, SGI + ICENABLER, 1 << 4, cpu=0)  # vCPU 0 writes vCPU 1's frame
    rd(gic, 1, SGI + ISENABLER, 1 << 30, cpu=0)
    rd(gic, 1, SGI + IPRIORITYR + 30, 0x40, size=1)
    assert rd(gic, 0, SGI + ISENABLER) == 0xFFFF
    assert rd(gic, 1, SGI + ISENABLER, cpu=1) == (0xFFFF & ~(1 << 4)) | 1 << 30
    assert rd(gic, 1, SGI + IPRIORITYR + 28) == 0x40 << 16
    assert rd(gic, 0, SGI + ICFGR) == 0xAAAAAAAA and rd(gic, 0, SGI + ICFGR + 4) == 0
    dist(gic, ISENABLER, 0xFFFFFFFF)  # GICD part for private IRQs is WI
    assert rd(gic, 0, SGI + ISENABLER) == 0xFFFF
    gic.set_irq_level(30, True, cpu=1)
    assert gic.irq_pending(1) and not gic.irq_pending(0)
    assert icc(gic, 1, "IAR1") == 30


def test_eoimode1_drops_priority_then_dir_deactivates() -> None:
    gic = up(eoimode=True)
    spi(gic, 40, edge=True)
    gic.set_irq_level(40, True)
    assert icc(gic, 0, "IAR1") == 40
    icc(gic, 0, "EOIR1", 40)
    assert icc(gic, 0, "RPR") == 0xFF and dist(gic, ISACTIVER + 4) == 1 << 8
    gic.set_irq_level(40, True)
    assert not gic.irq_pending(0)
    icc(gic, 0, "DIR", 40)
    assert dist(gic, ISACTIVER + 4) == 0 and gic.irq_pending(0)


def test_group_enable_and_distributor_enable_gate_the_line() -> None:
    gic = up()
    spi(gic, UART)
    gic.set_irq_level(UART, True)
    icc(gic, 0, "IGRPEN1", 0)
    assert not gic.irq_pending(0) and icc(gic, 0, "IAR1") == SPURIOUS
    icc(gic, 0, "IGRPEN1", 1)
    dist(gic, CTLR, 0x10)
    assert not gic.irq_pending(0)
    dist(gic, CTLR, 0x12)
    assert gic.irq_pending(0)


def test_line_and_event_callbacks_fire_exactly_on_changes() -> None:
    gic = up(2)
    lines: list[tuple[int, bool]] = []
    events: list[tuple[str, int, int]] = []
    gic.on_line_change = lambda cpu, level: lines.append((cpu, level))
    gic.on_event = lambda kind, cpu, intid: events.append((kind, cpu, intid))
    rd(gic, 0, SGI + ISENABLER, 1 << 27)
    gic.set_irq_level(27, True, cpu=0)
    gic.set_irq_level(27, True, cpu=0)
    assert lines == [(0, True)] and events == [("raised", 0, 27)]
    assert icc(gic, 0, "IAR1") == 27
    gic.set_irq_level(27, False, cpu=0)
    icc(gic, 0, "EOIR1", 27)
    icc(gic, 0, "EOIR1", 27)
    icc(gic, 0, "SGI1R", sgi1r(9, targets=0b10))
    icc(gic, 1, "PMR", 0)  # masked: the line drops
    assert lines == [(0, True), (0, False), (1, True), (1, False)]
    assert events == [("raised", 0, 27), ("acked", 0, 27), ("completed", 0, 27), ("raised", 1, 9)]


def test_snapshot_round_trip() -> None:
    gic = up(3, eoimode=True)
    spi(gic, UART, prio=0x30, route=2)
    spi(gic, 50, prio=0x60, edge=True, route=1)
    icc(gic, 1, "SGI1R", sgi1r(3, targets=1))
    gic.set_irq_level(UART, True)
    gic.set_irq_level(50, True)
    icc(gic, 2, "BPR1", 5)
    assert icc(gic, 2, "IAR1") == UART
    state = gic.snapshot()
    assert json.loads(json.dumps(state)) == state
    copy = GicV3(3)
    lines: list[tuple[int, bool]] = []
    copy.on_line_change = lambda cpu, level: lines.append((cpu, level))
    copy.restore(state)
    assert copy.snapshot() == state
    assert lines == [(0, True), (1, True)]
    for g in (gic, copy):
        assert icc(g, 0, "IAR1") == 3 and icc(g, 1, "IAR1") == 50
        assert icc(g, 2, "RPR") == 0x20 and icc(g, 2, "AP1R0") == 1 << 4
        icc(g, 2, "EOIR1", UART)
        icc(g, 2, "DIR", UART)
    assert copy.snapshot() == gic.snapshot()
    with pytest.raises(ValueError, match="does not fit"):
        GicV3(3, mpidrs=[0, 1, 2]).restore(state)
