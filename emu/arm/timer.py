"""The per-vCPU generic timers (CNTV_* and CNTP_*), run on the VM's virtual clock.

Unicorn's timers run on host time and never fire (engine notes 0.10), so the trap path
serves every CNTV/CNTP register access from here instead. ``levels`` is each timer's
interrupt output, which the VM's vGIC takes as the timer PPIs; without a vGIC, a vCPU
waiting for an interrupt (WFI, PSCI CPU_SUSPEND) wakes when one of its enabled, unmasked
timers expires.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.arm.clock import CNTFRQ_HZ, VirtualClock

CTL_ENABLE = 1 << 0
CTL_IMASK = 1 << 1
CTL_ISTATUS = 1 << 2

# (CRm, op2) of the EL0 timer registers under op0=3 op1=3 CRn=14.
PHYS_CRM = 2
VIRT_CRM = 3
OP2_TVAL, OP2_CTL, OP2_CVAL = 0, 1, 2

_M64 = (1 << 64) - 1


@dataclass
class Timer:
    """One timer: control and compare value, as the guest programmed them."""

    ctl: int = 0
    cval: int = 0


class GenericTimers:
    """A vCPU's virtual and physical EL1 timers."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.virt = Timer()
        self.phys = Timer()

    def reset(self) -> None:
        self.virt = Timer()
        self.phys = Timer()

    def _counter(self, crm: int) -> int:
        return self.clock.virtual_counter if crm == VIRT_CRM else self.clock.physical_counter

    def _timer(self, crm: int) -> Timer:
        return self.virt if crm == VIRT_CRM else self.phys

    def read(self, crm: int, op2: int) -> int:
        """MRS of CNT{V,P}_{TVAL,CTL,CVAL}_EL0."""
        timer, now = self._timer(crm), self._counter(crm)
        if op2 == OP2_CVAL:
            return timer.cval
        if op2 == OP2_CTL:
            fired = timer.ctl & CTL_ENABLE and now >= timer.cval
            return (timer.ctl & (CTL_ENABLE | CTL_IMASK)) | (CTL_ISTATUS if fired else 0)
        # TVAL is the signed 32-bit distance to CVAL, read as a 64-bit register.
        tval = (timer.cval - now) & 0xFFFF_FFFF
        return tval | (0xFFFF_FFFF_0000_0000 if tval >> 31 else 0)

    def write(self, crm: int, op2: int, value: int) -> None:
        """MSR of CNT{V,P}_{TVAL,CTL,CVAL}_EL0."""
        timer = self._timer(crm)
        if op2 == OP2_CVAL:
            timer.cval = value & _M64
        elif op2 == OP2_CTL:
            timer.ctl = value & (CTL_ENABLE | CTL_IMASK)
        else:
            tval = value & 0xFFFF_FFFF
            if tval >> 31:
                tval -= 1 << 32
            timer.cval = (self._counter(crm) + tval) & _M64

    def levels(self) -> tuple[bool, bool]:
        """The (virtual, physical) timer interrupt outputs: ENABLE && !IMASK && ISTATUS."""
        clock = self.clock
        virt, phys = self.virt, self.phys
        vcount = clock.virtual_counter
        return (
            virt.ctl & (CTL_ENABLE | CTL_IMASK) == CTL_ENABLE and vcount >= virt.cval,
            phys.ctl & (CTL_ENABLE | CTL_IMASK) == CTL_ENABLE
            and clock.phys_counter_base + vcount >= phys.cval,
        )

    def wake_time_ns(self) -> int | None:
        """Earliest virtual time at which an enabled, unmasked timer asserts its interrupt."""
        times = []
        for crm, timer in ((VIRT_CRM, self.virt), (PHYS_CRM, self.phys)):
            if timer.ctl & CTL_ENABLE and not timer.ctl & CTL_IMASK:
                base = 0 if crm == VIRT_CRM else self.clock.phys_counter_base
                ticks = max(timer.cval - base, 0)
                times.append(-(-ticks * 1_000_000_000 // CNTFRQ_HZ))
        return min(times) if times else None
