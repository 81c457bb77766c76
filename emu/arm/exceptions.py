"""Synchronous exception entry to EL1, done by hand because Unicorn never does it.

Unicorn reports guest exceptions to the interrupt hook and leaves ESR/ELR/SPSR/FAR
untouched (engine notes 0.3). ``enter_el1`` performs the architectural entry (Arm ARM
D1.10, "Exception entry"): SPSR_EL1 <- PSTATE, ELR_EL1 <- preferred return address,
ESR_EL1 <- syndrome, FAR_EL1 <- faulting address for aborts, PSTATE <- EL1h with DAIF
masked, SP banked to SP_EL1, PC <- VBAR_EL1 + vector offset (0x000 current EL with SP0,
0x200 current EL with SPx, 0x400 lower EL in AArch64). ERET is Unicorn's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import arm64_const as a64

from emu.arm.mmu import walk

if TYPE_CHECKING:
    from emu.arm.cpu import Cpu

# ESR_ELx exception classes and layout (arch/arm64/include/asm/esr.h, ref 1.1).
ESR_ELx_EC_SHIFT = 26
ESR_ELx_IL = 1 << 25
ESR_ELx_xVC_IMM_MASK = 0xFFFF
ESR_ELx_EC_HVC64 = 0x16
ESR_ELx_EC_SMC64 = 0x17
EC_UNKNOWN = 0x00
EC_SVC64 = 0x15
EC_IABT_LOW = 0x20
EC_IABT_CUR = 0x21
EC_DABT_LOW = 0x24
EC_DABT_CUR = 0x25
EC_BRK64 = 0x3C
ESR_WNR = 1 << 6

# Fault status codes (ESR_ELx.ISS.{I,D}FSC).
FSC_EXTABT = 0x10  # synchronous external abort: what KVM injects outside memory
FSC_ALIGN = 0x21  # alignment fault

# PSTATE.M[3:0] for AArch64 EL0t, EL1t, EL1h.
MODE_EL0T = 0b0000
MODE_EL1T = 0b0100
MODE_EL1H = 0b0101
PSTATE_EL1H_DAIF = 0x3C5

SPSR_EL1 = (3, 0, 4, 0, 0)
SCTLR_EL1 = (3, 0, 1, 0, 0)

EC_NAMES = {
    EC_UNKNOWN: "UNKNOWN",
    EC_SVC64: "SVC64",
    EC_IABT_LOW: "IABT_LOW",
    EC_IABT_CUR: "IABT_CUR",
    EC_DABT_LOW: "DABT_LOW",
    EC_DABT_CUR: "DABT_CUR",
    EC_BRK64: "BRK64",
}


@dataclass(frozen=True)
class SyncException:
    """A synchronous exception for EL1: class, syndrome, return address, fault address."""

    ec: int
    iss: int
    elr: int
    far: int | None = None

    @property
    def esr(self) -> int:
        return (self.ec << ESR_ELx_EC_SHIFT) | ESR_ELx_IL | self.iss


def vector_offset(pstate: int) -> int:
    """Which vector entry a synchronous exception from this PSTATE uses."""
    mode = pstate & 0xF
    if mode == MODE_EL1H:
        return 0x200
    if mode == MODE_EL1T:
        return 0x000
    return 0x400


def from_el0(pstate: int) -> bool:
    return pstate & 0xF == MODE_EL0T


def vector_mapped(cpu: Cpu, va: int) -> bool:
    """Can EL1 fetch the vector at ``va``? Walked as EL1 whatever the current EL: from EL0
    the kernel's pages are not accessible, yet the exception entry fetches them at EL1."""
    result = walk(cpu, va, fetch=True)
    if result.pa is None and result.fsc is None:  # not a walk emu models: ask the engine
        return cpu.read_insn(va) is not None
    return result.pa is not None and cpu.memory.in_ram(result.pa, 4)


def enter_el1(cpu: Cpu, exc: SyncException) -> int | None:
    """Take ``exc`` to the guest's EL1 vectors; the vector address, or None without vectors.

    VBAR_EL1 holds a virtual address: it is usable when it is non-zero and the vector
    translates (with the MMU off, when it is in RAM). A guest without usable vectors gets
    no entry: jumping to 0 would only turn one clear fault into a confusing one.
    """
    regs = cpu.regs
    vbar = regs.read_id(a64.UC_ARM64_REG_VBAR_EL1)
    if not vbar:
        return None
    uc = cpu.uc
    pstate = regs.read_id(a64.UC_ARM64_REG_PSTATE)
    target = vbar + vector_offset(pstate)
    if not vector_mapped(cpu, target):
        return None
    uc.cpr_write(*SPSR_EL1, pstate)
    regs.write_id(a64.UC_ARM64_REG_ELR_EL1, exc.elr)
    regs.write_id(a64.UC_ARM64_REG_ESR_EL1, exc.esr)
    if exc.far is not None:
        regs.write_id(a64.UC_ARM64_REG_FAR_EL1, exc.far)
    if pstate & 0xF != MODE_EL1H:
        # Bank the stack pointer: the interrupted SP is SP_EL0, the handler runs on SP_EL1.
        regs.write_id(a64.UC_ARM64_REG_SP_EL0, regs.read_id(a64.UC_ARM64_REG_SP))
        regs.write_id(a64.UC_ARM64_REG_SP, regs.read_id(a64.UC_ARM64_REG_SP_EL1))
    regs.write_id(a64.UC_ARM64_REG_PSTATE, PSTATE_EL1H_DAIF)
    # Writing PSTATE does not rebuild QEMU's cached hflags; any cpr_write does.
    uc.cpr_write(*SCTLR_EL1, uc.cpr_read(*SCTLR_EL1))
    regs.write_id(a64.UC_ARM64_REG_PC, target)
    return target
