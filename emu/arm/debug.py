"""Self-hosted debug exceptions (Arm ARM D2): what a trap that Unicorn reports bare really was.

QEMU's TCG does raise hardware-breakpoint and software-step exceptions, but Unicorn hands
them to the interrupt hook as a plain prefetch abort (breakpoint) or undefined instruction
(step) with no syndrome, and watchpoints never fire at all. These helpers recognise the
first two from the debug registers and implement the third with memory hooks, so the
guest gets the architectural class: breakpoint EC 0x30/0x31, software step EC 0x32/0x33,
watchpoint EC 0x34/0x35 with FAR, all with the debug-event status code 0x22.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH

from emu.arm.mmu import walk

if TYPE_CHECKING:
    from emu.arm.cpu import Cpu

EC_BREAKPOINT_LOW = 0x30
EC_BREAKPOINT_CUR = 0x31
EC_SOFTSTEP_LOW = 0x32
EC_SOFTSTEP_CUR = 0x33
EC_WATCHPOINT_LOW = 0x34
EC_WATCHPOINT_CUR = 0x35
FSC_DEBUG = 0x22
SOFTSTEP_ISV = 1 << 24

MDSCR_EL1 = (2, 0, 0, 2, 2)
MDSCR_SS = 1 << 0
MDSCR_MDE = 1 << 15
NR_BREAKPOINTS = 6  # Cortex-A72: ID_AA64DFR0_EL1.BRPs + 1


def _dbgbvr(n: int) -> tuple[int, int, int, int, int]:
    return (2, 0, 0, n, 4)


def _dbgbcr(n: int) -> tuple[int, int, int, int, int]:
    return (2, 0, 0, n, 5)


def breakpoint_at(cpu: Cpu, pc: int) -> bool:
    """Does an enabled address-match hardware breakpoint (DBGBCR<n>.E, BT 0) match ``pc``?"""
    uc = cpu.uc
    if not uc.cpr_read(*MDSCR_EL1) & MDSCR_MDE:
        return False
    for n in range(NR_BREAKPOINTS):
        bcr = uc.cpr_read(*_dbgbcr(n))
        if bcr & 1 and (bcr >> 20) & 0xF == 0 and uc.cpr_read(*_dbgbvr(n)) & ~3 == pc & ~3:
            return True
    return False


def stepping(cpu: Cpu) -> bool:
    """Is software step enabled (MDSCR_EL1.SS)? A step completes as an UNDEF at the next PC."""
    return bool(cpu.uc.cpr_read(*MDSCR_EL1) & MDSCR_SS)


NR_WATCHPOINTS = 4  # Cortex-A72: ID_AA64DFR0_EL1.WRPs + 1
# DBGWVR<n>_EL1 (2, 0, 0, n, 6) and DBGWCR<n>_EL1 (2, 0, 0, n, 7).
WATCH_OP2 = (6, 7)
WNR = 1 << 6


class Watchpoints:
    """Hardware watchpoints (DBGWVR/DBGWCR), which Unicorn never fires.

    Each enabled watchpoint becomes a Unicorn memory hook on the physical bytes its
    address and byte-address-select name (translated when it is programmed); a hit stops
    the vCPU, and the exception is taken once the engine has returned, at the accessing
    instruction, with FAR = the virtual address accessed.
    """

    def __init__(self, cpu: Cpu, stop: Callable[[], None]) -> None:
        self.cpu = cpu
        self.stop = stop
        self.wvr = [0] * NR_WATCHPOINTS
        self.wcr = [0] * NR_WATCHPOINTS
        self._hooks: list[int] = []
        # (virtual address, is a write) of the access that hit, until it is delivered.
        self.hit: tuple[int, bool] | None = None

    def reset(self) -> None:
        self.wvr = [0] * NR_WATCHPOINTS
        self.wcr = [0] * NR_WATCHPOINTS
        self.hit = None
        self._arm()

    def write(self, n: int, op2: int, value: int) -> None:
        """MSR DBGWVR<n>_EL1 / DBGWCR<n>_EL1 (the engine keeps its copy for MRS)."""
        if n < NR_WATCHPOINTS:
            (self.wvr if op2 == 6 else self.wcr)[n] = value
            self._arm()

    def _arm(self) -> None:
        uc = self.cpu.uc
        for handle in self._hooks:
            uc.hook_del(handle)
        self._hooks = []
        for n in range(NR_WATCHPOINTS):
            wcr, base = self.wcr[n], self.wvr[n] & ~7
            bas, lsc = (wcr >> 5) & 0xFF, (wcr >> 3) & 3
            if not wcr & 1 or not bas or not lsc:
                continue
            first = (bas & -bas).bit_length() - 1
            last = bas.bit_length() - 1
            pa = walk(self.cpu, base).pa
            if pa is None:
                continue
            for kind, write in ((UC_HOOK_MEM_READ, False), (UC_HOOK_MEM_WRITE, True)):
                if lsc & (2 if write else 1):
                    self._hooks.append(
                        uc.hook_add(kind, self._on_access, (base, pa, write), pa + first, pa + last)
                    )
        # Translated code and TLB entries made before the hooks would not see them.
        uc.ctl_flush_tb()
        uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def _on_access(self, uc, access: int, address: int, size: int, value: int, data) -> None:
        base, pa, write = data
        if self.hit is None and self.cpu.uc.cpr_read(*MDSCR_EL1) & MDSCR_MDE:
            self.hit = (base + (address - pa), write)
            self.stop()

    def take_hit(self) -> tuple[int, bool] | None:
        hit, self.hit = self.hit, None
        return hit
