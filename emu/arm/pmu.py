"""The PMUv3 a vCPU sees, counting on the VM's deterministic clock and retired instructions.

QEMU's PMU counts cycles on host time, so PMCCNTR_EL0 would differ between runs and jump
between slices. emu serves the PMU registers itself (Arm ARM D13, "The Performance
Monitors Extension"): the cycle counter counts virtual nanoseconds (one cycle per ns, as
one instruction takes 1 ns), the event counters count INST_RETIRED (0x08) and CPU_CYCLES
(0x11) from the same sources, and SW_INCR (0x00) through PMSWINC_EL0. Every counter is
monotonic while enabled; PMCR_EL0.P/C reset them.
"""

from __future__ import annotations

from collections.abc import Callable

NR_COUNTERS = 6  # PMCR_EL0.N, as on a Cortex-A72
CYCLE = 31  # bit of the cycle counter in PMCNTEN*/PMOVS*/PMINTEN*

EVENT_SW_INCR = 0x00
EVENT_INST_RETIRED = 0x08
EVENT_CPU_CYCLES = 0x11

PMCR_E = 1 << 0
PMCR_P = 1 << 1
PMCR_C = 1 << 2
PMCR_LC = 1 << 6
# PMCR_EL0 read-only fields: IMP 0x41 (Arm) [31:24], IDCODE 0x03 [23:16], N [15:11].
PMCR_RO = 0x41 << 24 | 0x03 << 16 | NR_COUNTERS << 11
PMCR_RW = PMCR_E | 0x8 | 0x10 | 0x20 | PMCR_LC  # E, D, X, DP, LC

_M32 = (1 << 32) - 1
_M64 = (1 << 64) - 1

Key = tuple[int, int, int, int, int]


class Pmu:
    """One vCPU's performance monitors. ``cycles()`` and ``instructions()`` are the sources."""

    def __init__(self, cycles: Callable[[], int], instructions: Callable[[], int]) -> None:
        self._sources = {EVENT_CPU_CYCLES: cycles, EVENT_INST_RETIRED: instructions}
        self.reset()

    def reset(self) -> None:
        self.pmcr = PMCR_LC
        self.cnten = 0
        self.inten = 0
        self.ovs = 0
        self.selr = 0
        self.userenr = 0
        self.ccfiltr = 0
        self.evtype = [0] * NR_COUNTERS
        # Value at the last change, and the source reading then (None: not counting).
        self._value = [0] * (NR_COUNTERS + 1)
        self._base: list[int | None] = [None] * (NR_COUNTERS + 1)

    # -- counting ---------------------------------------------------------------------

    def _event(self, n: int) -> int:
        return EVENT_CPU_CYCLES if n == NR_COUNTERS else self.evtype[n] & 0xFFFF

    def _counting(self, n: int) -> bool:
        bit = CYCLE if n == NR_COUNTERS else n
        return bool(self.pmcr & PMCR_E and self.cnten >> bit & 1)

    def _source(self, n: int) -> int | None:
        source = self._sources.get(self._event(n))
        return source() if source is not None else None

    def _freeze(self) -> None:
        """Fold what ran so far into the values; called before the enables change."""
        for n in range(NR_COUNTERS + 1):
            self._value[n] = self.read_counter(n)
            self._base[n] = None

    def _thaw(self) -> None:
        for n in range(NR_COUNTERS + 1):
            if self._counting(n):
                self._base[n] = self._source(n)

    def _change(self, update: Callable[[], None]) -> None:
        self._freeze()
        update()
        self._thaw()

    def read_counter(self, n: int) -> int:
        value, base = self._value[n], self._base[n]
        if base is not None:
            now = self._source(n)
            if now is not None:
                value += now - base
        return value & (_M64 if n == NR_COUNTERS else _M32)

    def write_counter(self, n: int, value: int) -> None:
        self._value[n] = value & (_M64 if n == NR_COUNTERS else _M32)
        self._base[n] = self._source(n) if self._counting(n) else None

    def software_increment(self, mask: int) -> None:
        """PMSWINC_EL0: +1 on each enabled counter configured for SW_INCR."""
        for n in range(NR_COUNTERS):
            if mask >> n & 1 and self._counting(n) and self._event(n) == EVENT_SW_INCR:
                self._value[n] = (self._value[n] + 1) & _M32

    # -- registers ---------------------------------------------------------------------

    def read(self, key: Key) -> int | None:
        """MRS of a PMU register by (op0, op1, CRn, CRm, op2); None if not a PMU register."""
        op0, op1, crn, crm, op2 = key
        if crn == 9 and op0 == 3:
            if op1 == 3 and crm == 12:
                return (
                    self.pmcr & PMCR_RW | PMCR_RO,
                    self.cnten,
                    self.cnten,
                    self.ovs,
                    0,  # PMSWINC: write-only
                    self.selr,
                    1 << EVENT_SW_INCR | 1 << EVENT_INST_RETIRED | 1 << EVENT_CPU_CYCLES,  # PMCEID0
                    0,  # PMCEID1
                )[op2]
            if op1 == 3 and crm == 13:
                if op2 == 0:
                    return self.read_counter(NR_COUNTERS)
                n = self.selr & 0x1F
                if op2 == 1:
                    return self.ccfiltr if n == CYCLE else self.evtype[n] if n < NR_COUNTERS else 0
                if op2 == 2:
                    return self.read_counter(n) if n < NR_COUNTERS else 0
            if op1 == 3 and crm == 14:
                return {0: self.userenr, 3: self.ovs}.get(op2)
            if op1 == 0 and crm == 14 and op2 in (1, 2):
                return self.inten
        if op0 == 3 and op1 == 3 and crn == 14 and crm >= 8:
            n = (crm & 3) << 3 | op2
            if crm < 12:
                return self.read_counter(n) if n < NR_COUNTERS else 0
            if n == CYCLE:
                return self.ccfiltr
            return self.evtype[n] if n < NR_COUNTERS else 0
        return None

    def write(self, key: Key, value: int) -> bool:
        """MSR of a PMU register; False if not a PMU register."""
        op0, op1, crn, crm, op2 = key
        if crn == 9 and op0 == 3:
            if op1 == 3 and crm == 12:
                if op2 == 0:

                    def pmcr() -> None:
                        if value & PMCR_P:
                            for n in range(NR_COUNTERS):
                                self._value[n] = 0
                        if value & PMCR_C:
                            self._value[NR_COUNTERS] = 0
                        self.pmcr = value & PMCR_RW

                    self._change(pmcr)
                elif op2 == 1:
                    self._change(lambda: setattr(self, "cnten", self.cnten | value & _M32))
                elif op2 == 2:
                    self._change(lambda: setattr(self, "cnten", self.cnten & ~value & _M32))
                elif op2 == 3:
                    self.ovs &= ~value & _M32
                elif op2 == 4:
                    self.software_increment(value)
                elif op2 == 5:
                    self.selr = value & 0x1F
                return True
            if op1 == 3 and crm == 13:
                n = self.selr & 0x1F
                if op2 == 0:
                    self.write_counter(NR_COUNTERS, value)
                elif op2 == 1:
                    self._write_type(CYCLE if n == CYCLE else n, value)
                elif op2 == 2 and n < NR_COUNTERS:
                    self.write_counter(n, value)
                return True
            if op1 == 3 and crm == 14 and op2 in (0, 3):
                if op2 == 0:
                    self.userenr = value & 0xF
                else:
                    self.ovs |= value & _M32
                return True
            if op1 == 0 and crm == 14 and op2 in (1, 2):
                self.inten = self.inten | value & _M32 if op2 == 1 else self.inten & ~value & _M32
                return True
        if op0 == 3 and op1 == 3 and crn == 14 and crm >= 8:
            n = (crm & 3) << 3 | op2
            if crm < 12:
                if n < NR_COUNTERS:
                    self.write_counter(n, value)
            else:
                self._write_type(n, value)
            return True
        return False

    def _write_type(self, n: int, value: int) -> None:
        if n == CYCLE:
            self.ccfiltr = value & 0xFC00_0000
        elif n < NR_COUNTERS:
            self._change(lambda: self.evtype.__setitem__(n, value & 0xFC00_FFFF))


def pmu_keys() -> list[Key]:
    """Every PMU register encoding ``Pmu.read``/``write`` answer."""
    keys: list[Key] = [(3, 3, 9, crm, op2) for crm in (12, 13, 14) for op2 in range(8)]
    keys += [(3, 0, 9, 14, 1), (3, 0, 9, 14, 2)]
    keys += [(3, 3, 14, crm, op2) for crm in range(8, 16) for op2 in range(8)]
    return keys
