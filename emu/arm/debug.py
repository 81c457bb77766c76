"""Self-hosted debug exceptions (Arm ARM D2): what a trap that Unicorn reports bare really was.

QEMU's TCG does raise hardware-breakpoint and software-step exceptions, but Unicorn hands
them to the interrupt hook as a plain prefetch abort (breakpoint) or undefined instruction
(step) with no syndrome. These helpers recognise them from the debug registers, so the
guest gets the architectural class: breakpoint EC 0x30/0x31, software step EC 0x32/0x33,
with the debug-event status code 0x22.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
