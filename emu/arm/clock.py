"""The VM's time base: a deterministic virtual counter and realtime clock.

Unicorn's own CNTVCT is the host's monotonic clock (engine notes 6), so two runs of the
same guest would see different times. emu instead keeps one virtual time per VM, in
nanoseconds, that moves only with guest progress:

* every trapped hypercall and every counter read advance it by ``EVENT_NS``;
* instructions retired in counted slices advance it by ``NS_PER_INSN`` each.

The guest reads it through CNTVCT_EL0/CNTPCT_EL0 (trapped MRS) and KVM's PTP call.
Counter frequency is CNTFRQ_EL0 as Unicorn reports it (62.5 MHz), so guest code that
scales by CNTFRQ gets consistent durations. Same program, same flags: same times.
"""

from __future__ import annotations

CNTFRQ_HZ = 62_500_000
EVENT_NS = 1_000
NS_PER_INSN = 1
# Host wall clock at VM creation: 2021-06-08T15:48:05Z, the day the RFC was posted.
DEFAULT_REALTIME_EPOCH_NS = 1_623_167_285 * 1_000_000_000
# Host physical counter at VM creation (the host had been up ~16 s). KVM sets CNTVOFF so
# that the guest's virtual counter starts near 0 (ref 3.2 PTP: cycles = counter - offset).
DEFAULT_PHYS_COUNTER_BASE = 1_000_000_000


class VirtualClock:
    """Guest-visible time for one VM, advanced only by the run loop and the trap path."""

    def __init__(
        self,
        realtime_epoch_ns: int = DEFAULT_REALTIME_EPOCH_NS,
        phys_counter_base: int = DEFAULT_PHYS_COUNTER_BASE,
    ) -> None:
        self.ns = 0
        self.realtime_epoch_ns = realtime_epoch_ns
        self.phys_counter_base = phys_counter_base

    def snapshot(self) -> dict[str, int]:
        return {
            "ns": self.ns,
            "realtime_epoch_ns": self.realtime_epoch_ns,
            "phys_counter_base": self.phys_counter_base,
        }

    def restore(self, data: dict[str, int]) -> None:
        self.ns = data["ns"]
        self.realtime_epoch_ns = data["realtime_epoch_ns"]
        self.phys_counter_base = data["phys_counter_base"]

    def advance(self, ns: int) -> None:
        self.ns += ns

    def tick_event(self) -> None:
        self.ns += EVENT_NS

    @property
    def virtual_counter(self) -> int:
        """CNTVCT_EL0: counter ticks since the VM was created."""
        return self.ns * CNTFRQ_HZ // 1_000_000_000

    @property
    def physical_counter(self) -> int:
        """CNTPCT_EL0 as the host sees it (the virtual counter plus CNTVOFF)."""
        return self.phys_counter_base + self.virtual_counter

    @property
    def realtime_ns(self) -> int:
        """Host CLOCK_REALTIME in nanoseconds."""
        return self.realtime_epoch_ns + self.ns
