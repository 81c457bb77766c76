"""Random A64 instruction streams: a seeded robustness campaign emu must come through.

Each stream is a flat image built from (campaign seed, index) alone: a short prologue, then
16-64 random 32-bit words, then PSCI SYSTEM_OFF. The prologue may point VBAR_EL1 at a vector
table (half the streams) whose synchronous entries skip the instruction that trapped (or
go to the terminator when the stream left its code) and whose asynchronous ones return with
interrupts masked; it sets random x1..x29 aimed at RAM, the code, the PL011, the GIC, holes
in the memory map and huge addresses, sometimes CPACR_EL1 and the MMU registers (now and
then an identity map switched on), and sometimes starts a second vCPU on the same code. The
words are purely random or biased to the load/store, branch, system, SIMD/FP and
data-processing encoding classes, so that most are valid and many touch memory or a
device. A stream also picks the profile (half of them the default) and the vGIC (v3, v2 or
none). It runs twice, each time as ``emu run IMAGE --format flat --max-insns 20000
--timeout 10`` runs it (a ``Machine`` over a ``Vm``), and each run must end with a defined
stop: a system event, a guest fault, the budget, or idle.

A defect is a host exception escaping emu (what ``emu run`` reports as ``emu: internal
error``), an ``EmuError`` or fault in which emu says it cannot decode an instruction or lets
a Unicorn error through, a run that ends by the wall-clock timeout although the budget
bounds it (a hang), a worker process that dies, or two runs of a stream that differ (the
stop, the registers of every vCPU, the JSON document, the human output, the trace, the
image's memory). The summary counts the stops with and without vectors; each defect is
listed with its stream index, words and problem, and written to ``--output`` as
``stream-SEED-INDEX.bin`` with the ``emu run`` command that reproduces it. A stream the host
has no memory for (emu refuses the VM with ENOMEM) is retried, then listed as not run. Exit
status 1 if there is a defect, else 2 if a stream could not run, else 0. Results come back
in index order, whatever ``--jobs``.

    python bench/random_streams.py [--count 6000] [--seed 0] [--vectors both|yes|no]
                                   [--jobs N] [--output DIR] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import multiprocessing
import random
import struct
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from emu.errors import EmuError, KvmError
from emu.kvm.profiles import DEFAULT_PROFILE, PROFILES
from emu.kvm.vm import LOAD_ADDR, RAM_BASE, Vm
from emu.tools.report import dumps, event_line, register_lines, run_json, stop_line, stop_reason
from emu.vmm.loader import Program
from emu.vmm.machine import BootOptions, Machine

MAX_INSNS = 20_000
# The slowest stream a budget bounds takes an exception on every instruction it is charged
# for (a vector that cannot be fetched): about 2 s on an idle core, 3 s on a busy one.
# A run still going at 10 s (emu run's default timeout) is a hang.
TIMEOUT_S = 10.0
RAM_SIZE = 128 << 20
# Where the parts of a stream's image go: code from LOAD_ADDR, the vector table (when the
# stream has one) and a level-1 translation table (when it builds one) after it.
VECTORS = LOAD_ADDR + 0x800
TABLE = LOAD_ADDR + 0x1000
IMAGE_SIZE = 0x2000
# Streams per work item: small enough to balance two workers, large enough to amortise a hop.
CHUNK = 25
# Words of an EmuError or fault cause that mean emu itself gave up, not the guest.
EMU_LIMITS = ("cannot decode", "Unicorn stopped with error", "emu does not deliver", "trap reported, but")
# Not a stop: the host had too little memory for the VM (emu refuses it, ENOMEM), even after
# waiting 1 + 2 + 4 + 8 s for it. Such a stream is not run, and the campaign not complete.
NO_HOST_MEMORY = "no host memory"
EXIT_INCOMPLETE = 2
HOST_MEMORY_RETRIES = 5
STOP_KINDS = (
    "system_event",
    "fault",
    "budget",
    "idle",
    "timeout",
    "error",
    "internal error",
    "crash",
    NO_HOST_MEMORY,
)

PSCI_SYSTEM_OFF = 0x8400_0008
PSCI_CPU_ON64 = 0xC400_0003
UART, GICD, GICR, GICC = 0x0900_0000, 0x0800_0000, 0x080A_0000, 0x0801_0000
M64 = (1 << 64) - 1

# -- A64 encodings (Arm ARM DDI 0487, C4.1 and the C6.2 pages of each instruction) ----------

NOP, ISB, DSB_SY, ERET = 0xD503201F, 0xD5033FDF, 0xD5033F9F, 0xD69F03E0


def movz(rd: int, imm16: int, hw: int = 0) -> int:
    return 0xD2800000 | (hw << 21) | (imm16 << 5) | rd


def movk(rd: int, imm16: int, hw: int) -> int:
    return 0xF2800000 | (hw << 21) | (imm16 << 5) | rd


def mov64(rd: int, value: int) -> list[int]:
    """MOVZ then a MOVK for each further non-zero halfword."""
    value &= M64
    words = [movz(rd, value & 0xFFFF)]
    words += [
        movk(rd, (value >> (16 * hw)) & 0xFFFF, hw) for hw in (1, 2, 3) if (value >> (16 * hw)) & 0xFFFF
    ]
    return words


def sysreg(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """The o0:op1:CRn:CRm:op2 field of MRS/MSR (register), bits 19..5."""
    return ((op0 - 2) << 19) | (op1 << 16) | (crn << 12) | (crm << 8) | (op2 << 5)


def msr(reg: int, rt: int) -> int:
    return 0xD5100000 | reg | rt


def mrs(rt: int, reg: int) -> int:
    return 0xD5300000 | reg | rt


def add_imm(rd: int, rn: int, imm12: int) -> int:
    return 0x91000000 | (imm12 << 10) | (rn << 5) | rd


def orr_imm(rd: int, rn: int, immr: int, imms: int) -> int:
    """ORR (immediate), 64-bit, N = 1: imms + 1 ones rotated right by immr."""
    return 0xB2400000 | (immr << 16) | (imms << 10) | (rn << 5) | rd


def lsr_imm(rd: int, rn: int, shift: int) -> int:
    """LSR (immediate), 64-bit: UBFM Xd, Xn, #shift, #63."""
    return 0xD340FC00 | (shift << 16) | (rn << 5) | rd


def cmp_imm(rn: int, imm12: int) -> int:
    """CMP (immediate), 64-bit: SUBS XZR, Xn, #imm12."""
    return 0xF100001F | (imm12 << 10) | (rn << 5)


def sub_reg(rd: int, rn: int, rm: int) -> int:
    """SUB (shifted register), 64-bit, no shift."""
    return 0xCB000000 | (rm << 16) | (rn << 5) | rd


def ldr_literal(rt: int, offset_words: int) -> int:
    """LDR (literal), 64-bit: the doubleword ``offset_words`` instructions on."""
    return 0x58000000 | ((offset_words & 0x7FFFF) << 5) | rt


COND_EQ, COND_HS = 0b0000, 0b0010


def b_cond(cond: int, offset_words: int) -> int:
    return 0x54000000 | ((offset_words & 0x7FFFF) << 5) | cond


def str_w(rt: int, rn: int, offset: int = 0) -> int:
    """STR (immediate, unsigned offset), 32-bit."""
    return 0xB9000000 | ((offset // 4) << 10) | (rn << 5) | rt


def hvc(imm16: int = 0) -> int:
    return 0xD4000002 | (imm16 << 5)


def b(offset_words: int) -> int:
    return 0x14000000 | (offset_words & 0x3FFFFFF)


VBAR_EL1 = sysreg(3, 0, 12, 0, 0)
ELR_EL1 = sysreg(3, 0, 4, 0, 1)
ESR_EL1 = sysreg(3, 0, 5, 2, 0)
TPIDR_EL1 = sysreg(3, 0, 13, 0, 4)
CNTV_TVAL_EL0 = sysreg(3, 3, 14, 3, 0)
CNTV_CTL_EL0 = sysreg(3, 3, 14, 3, 1)
ICC_PMR_EL1 = sysreg(3, 0, 4, 6, 0)
ICC_IGRPEN1_EL1 = sysreg(3, 0, 12, 12, 7)
DAIFCLR_I = 0xD50342FF  # MSR DAIFClr, #2: IRQs unmasked
SPSR_EL1 = sysreg(3, 0, 4, 0, 0)
SCTLR_EL1 = sysreg(3, 0, 1, 0, 0)
CPACR_EL1 = sysreg(3, 0, 1, 0, 2)
TTBR0_EL1 = sysreg(3, 0, 2, 0, 0)
TCR_EL1 = sysreg(3, 0, 2, 0, 2)
MAIR_EL1 = sysreg(3, 0, 10, 2, 0)

# System registers the system class reads and writes: the MMU, exception, timer, GIC CPU
# interface, PMU, debug and thread registers, plus EL2 ones (UNDEFINED at EL1).
SYSREGS = [
    sysreg(*enc)
    for enc in (
        (3, 0, 1, 0, 0),  # SCTLR_EL1
        (3, 0, 1, 0, 2),  # CPACR_EL1
        (3, 0, 2, 0, 0),  # TTBR0_EL1
        (3, 0, 2, 0, 1),  # TTBR1_EL1
        (3, 0, 2, 0, 2),  # TCR_EL1
        (3, 0, 10, 2, 0),  # MAIR_EL1
        (3, 0, 12, 0, 0),  # VBAR_EL1
        (3, 0, 4, 0, 0),  # SPSR_EL1
        (3, 0, 4, 0, 1),  # ELR_EL1
        (3, 0, 4, 1, 0),  # SP_EL0
        (3, 0, 4, 2, 0),  # SPSel
        (3, 0, 4, 2, 2),  # CurrentEL
        (3, 3, 4, 2, 1),  # DAIF
        (3, 3, 4, 2, 0),  # NZCV
        (3, 0, 5, 2, 0),  # ESR_EL1
        (3, 0, 6, 0, 0),  # FAR_EL1
        (3, 0, 7, 4, 0),  # PAR_EL1
        (3, 0, 0, 0, 5),  # MPIDR_EL1
        (3, 0, 0, 0, 0),  # MIDR_EL1
        (3, 0, 0, 7, 0),  # ID_AA64MMFR0_EL1
        (3, 3, 0, 0, 7),  # DCZID_EL0
        (3, 3, 14, 0, 0),  # CNTFRQ_EL0
        (3, 3, 14, 0, 1),  # CNTPCT_EL0
        (3, 3, 14, 0, 2),  # CNTVCT_EL0
        (3, 3, 14, 3, 0),  # CNTV_TVAL_EL0
        (3, 3, 14, 3, 1),  # CNTV_CTL_EL0
        (3, 3, 14, 3, 2),  # CNTV_CVAL_EL0
        (3, 3, 14, 2, 0),  # CNTP_TVAL_EL0
        (3, 3, 14, 2, 1),  # CNTP_CTL_EL0
        (3, 3, 14, 2, 2),  # CNTP_CVAL_EL0
        (3, 0, 14, 1, 0),  # CNTKCTL_EL1
        (3, 0, 4, 6, 0),  # ICC_PMR_EL1
        (3, 0, 12, 12, 0),  # ICC_IAR1_EL1
        (3, 0, 12, 12, 1),  # ICC_EOIR1_EL1
        (3, 0, 12, 11, 5),  # ICC_SGI1R_EL1
        (3, 0, 12, 12, 4),  # ICC_CTLR_EL1
        (3, 0, 12, 12, 5),  # ICC_SRE_EL1
        (3, 0, 12, 12, 7),  # ICC_IGRPEN1_EL1
        (3, 0, 12, 11, 3),  # ICC_RPR_EL1
        (3, 0, 12, 11, 1),  # ICC_DIR_EL1
        (3, 3, 9, 12, 0),  # PMCR_EL0
        (3, 3, 9, 12, 1),  # PMCNTENSET_EL0
        (3, 3, 9, 12, 4),  # PMSWINC_EL0
        (3, 3, 9, 12, 5),  # PMSELR_EL0
        (3, 3, 9, 13, 0),  # PMCCNTR_EL0
        (3, 3, 9, 13, 1),  # PMXEVTYPER_EL0
        (3, 3, 9, 13, 2),  # PMXEVCNTR_EL0
        (3, 3, 14, 8, 0),  # PMEVCNTR0_EL0
        (3, 3, 14, 12, 0),  # PMEVTYPER0_EL0
        (3, 0, 9, 14, 1),  # PMINTENSET_EL1
        (2, 0, 0, 2, 2),  # MDSCR_EL1
        (2, 0, 0, 0, 4),  # DBGBVR0_EL1
        (2, 0, 0, 0, 5),  # DBGBCR0_EL1
        (2, 0, 0, 0, 6),  # DBGWVR0_EL1
        (2, 0, 0, 0, 7),  # DBGWCR0_EL1
        (2, 0, 1, 0, 4),  # OSLAR_EL1
        (3, 3, 13, 0, 2),  # TPIDR_EL0
        (3, 0, 13, 0, 4),  # TPIDR_EL1
        (3, 4, 1, 1, 0),  # HCR_EL2
        (3, 4, 12, 0, 0),  # VBAR_EL2
        (3, 6, 1, 1, 0),  # SCR_EL3
    )
]

# SYS instructions that maintain caches and TLBs or translate (Rt filled in).
SYS_OPS = (
    0xD50B7420,  # DC ZVA
    0xD50B7E20,  # DC CIVAC
    0xD50B7A20,  # DC CVAC
    0xD5087620,  # DC IVAC
    0xD50B7520,  # IC IVAU
    0xD508751F,  # IC IALLU
    0xD508711F,  # IC IALLUIS
    0xD508871F,  # TLBI VMALLE1
    0xD508831F,  # TLBI VMALLE1IS
    0xD5088720,  # TLBI VAE1
    0xD5088320,  # TLBI VAE1IS
    0xD5087800,  # AT S1E1R
    0xD5087820,  # AT S1E1W
    0xD5087840,  # AT S1E0R
)

# SMCCC function ids for x0: PSCI in both conventions, the Arm Architecture calls, TRNG,
# PV time, KVM's vendor hypervisor service, and a few nobody owns.
CALLS = (
    *range(0x8400_0000, 0x8400_0020),
    *range(0xC400_0000, 0xC400_0020),
    0x8000_0000,
    0x8000_0001,
    0x8000_8000,
    0x8000_7FFF,
    0x8000_3FFF,
    *range(0x8400_0050, 0x8400_0054),
    0xC400_0053,
    0xC500_0020,
    0xC500_0021,
    0x8600_0000,
    0x8600_FF01,
    0xC600_0001,
    0xC600_0040,
    0xBF00_FF01,
    0xFFFF_FFFF,
)

SCTLR_RESET = 0x00C5_0078
# SCTLR_EL1 bits a stream may add when it turns the MMU on: A, C, SA, SA0, I, WXN, E0E, EE.
SCTLR_EXTRA = (1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 12, 1 << 19, 1 << 24, 1 << 25)


# -- streams -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """One random stream: its image (flat, at LOAD_ADDR) and how it was made."""

    index: int
    vectors: bool
    cpus: int
    gic: str  # "v3", "v2" or "none", as ``emu run --gic``
    profile: str
    image: bytes
    body: tuple[int, ...]  # the random words, between the prologue and the terminator
    body_at: int  # their address

    @property
    def words(self) -> tuple[int, ...]:
        """Every instruction word from the entry to the terminator (not the vectors or tables)."""
        end = self.body_at - LOAD_ADDR + 4 * len(self.body) + 4 * len(TERMINATOR)
        return struct.unpack_from(f"<{end // 4}I", self.image)


TERMINATOR = (*mov64(0, PSCI_SYSTEM_OFF), hvc(0))


def interesting_address(rng: random.Random) -> int:
    """A value for a base register: somewhere a memory access means something different,
    the devices weighted up (a random load or store rarely reaches them otherwise)."""
    kind = rng.choices(range(12), (2, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1))[0]
    if kind == 0:
        return RAM_BASE + rng.randrange(RAM_SIZE)  # anywhere in RAM
    if kind == 1:
        return LOAD_ADDR + rng.randrange(IMAGE_SIZE + 0x100)  # the code, vectors and tables
    if kind == 2:
        return 0x4010_0000 + rng.randrange(0x1000) * rng.choice((1, 8))  # scratch RAM
    if kind == 3:
        offsets = (0, 0x4, 0x18, 0x24, 0x28, 0x2C, 0x30, 0x34, 0x38, 0x40, 0x44, 0xFE0, rng.randrange(0x1000))
        return UART + rng.choice(offsets)
    if kind == 4:
        return GICD + rng.choice(
            (0, 4, 8, 0x80, 0x100, 0x180, 0x200, 0x400, 0xC00, 0xF00, 0x6100, 0xFFE8, rng.randrange(0x10000))
        )
    if kind == 5:
        frame = GICR + rng.randrange(2) * 0x20000 + rng.randrange(2) * 0x10000
        return frame + rng.choice(
            (0, 4, 8, 0x14, 0x80, 0x100, 0x180, 0x400, 0xC04, 0xFFE8, rng.randrange(0x10000))
        )
    if kind == 6:
        return rng.choice((0, 8, 0x1000, GICC, 0x0A00_0000, 0x1000_0000, 0x3FFF_FFF8))  # holes
    if kind == 7:
        return RAM_BASE + RAM_SIZE - rng.choice((0, 1, 4, 8, 16, 64))  # the end of RAM
    if kind == 8:
        return rng.choice(
            (1 << 39, 1 << 48, (1 << 48) - 8, 0xFFFF_0000_0000_0000, M64 - 7, 1 << 63, 0x0000_8000_0000_0000)
        )
    if kind == 9:
        return rng.getrandbits(64)
    if kind == 10:
        return rng.randrange(64)
    return rng.getrandbits(rng.choice((8, 16, 32)))


def _fill(rng: random.Random, value: int, mask: int) -> int:
    """``value`` in the ``mask`` bits, random elsewhere."""
    return (rng.getrandbits(32) & ~mask) | value


def _reg(rng: random.Random, bases: Sequence[int]) -> int:
    return rng.choice(bases) if bases and rng.random() < 0.75 else rng.randrange(32)


def _with_rn(rng: random.Random, word: int, bases: Sequence[int]) -> int:
    return (word & ~(31 << 5)) | (_reg(rng, bases) << 5)


def load_store(rng: random.Random, bases: Sequence[int]) -> list[int]:
    form = rng.randrange(9)
    if form == 0:  # unsigned immediate, small offsets mostly
        word = _fill(rng, 0x39000000, 0x3B000000)
        if rng.random() < 0.7:
            word = (word & ~(0xFFF << 10)) | (rng.randrange(8) << 10)
    elif form == 1:  # unscaled, post-, pre-indexed, unprivileged: imm9
        word = _fill(rng, 0x38000000, 0x3B200000)
    elif form == 2:  # register offset
        word = _fill(rng, 0x38200800, 0x3B200C00)
    elif form == 3:  # pair
        word = _fill(rng, 0x28000000, 0x3A000000)
    elif form == 4:  # exclusive, ordered, compare and swap
        word = _fill(rng, 0x08000000, 0x3F000000)
    elif form == 5:  # atomic memory operations
        word = _fill(rng, 0x38200000, 0x3F200C00)
    elif form == 6:  # literal, near the instruction
        word = (_fill(rng, 0x18000000, 0x3B000000) & ~(0x7FFFF << 5)) | (
            (rng.randrange(-64, 64) & 0x7FFFF) << 5
        )
        return [word]
    elif form == 7:  # Advanced SIMD structures
        word = _fill(rng, 0x0C000000, 0xBE000000)
    else:  # cache maintenance and DC ZVA
        word = rng.choice(SYS_OPS) | _reg(rng, bases)
        return [word]
    return [_with_rn(rng, word, bases)]


def device_access(rng: random.Random, bases: Sequence[int]) -> list[int]:
    """A register pointed at the PL011 or the GIC, then one to three loads or stores on it."""
    reg = rng.randrange(1, 29)
    while True:
        address = interesting_address(rng)
        if UART <= address < UART + 0x1000 or GICD <= address < GICR + 0x40000:
            break
    words = mov64(reg, address)
    for _ in range(rng.randrange(1, 4)):
        words += load_store(rng, [reg])
    return words


def branch(rng: random.Random, bases: Sequence[int]) -> list[int]:
    form = rng.randrange(7)
    # Mostly forward: a stream should reach its end more often than it loops.
    offset = rng.randrange(1, 16) if rng.random() < 0.75 else rng.randrange(-16, 1)
    if form == 0:
        return [b(offset) | (rng.getrandbits(1) << 31)]  # B, BL
    if form == 1:
        return [b_cond(rng.randrange(16), offset)]
    if form == 2:  # CBZ, CBNZ
        word = 0x34000000 | (rng.getrandbits(1) << 31) | (rng.getrandbits(1) << 24)
        return [word | ((offset & 0x7FFFF) << 5) | rng.randrange(32)]
    if form == 3:  # TBZ, TBNZ
        return [_fill(rng, 0x36000000, 0x7E000000) & ~(0x3FFF << 5) | ((offset & 0x3FFF) << 5)]
    if form == 4:  # BR, BLR, RET to a register (often an address somewhere odd)
        return [rng.choice((0xD61F0000, 0xD63F0000, 0xD65F0000)) | (_reg(rng, bases) << 5)]
    if form == 5:
        return [ERET]
    return [_fill(rng, 0xD6000000, 0xFE000000)]  # the rest of the unconditional-register group


def system(rng: random.Random, bases: Sequence[int]) -> list[int]:
    form = rng.randrange(9)
    if form in (0, 1):  # MRS/MSR of a register emu or the CPU models
        op = rng.choice((msr, mrs))
        return [op(rng.choice(SYSREGS), _reg(rng, bases))]
    if form == 2:
        return [_fill(rng, 0xD5100000, 0xFFD00000)]  # MRS/MSR of any encoding
    if form == 3:  # hints: WFI, WFE, SEV, YIELD, PAC, BTI, ...
        return [_fill(rng, 0xD503201F, 0xFFFFF01F)]
    if form == 4:  # barriers, CLREX
        return [_fill(rng, 0xD503301F, 0xFFFFF01F)]
    if form == 5:  # MSR (immediate): DAIFSet/Clr, SPSel, PAN, UAO, SSBS, ...
        return [_fill(rng, 0xD500401F, 0xFFF8F01F)]
    if form == 6:  # SVC, HVC, SMC, BRK, HLT, DCPS
        return [_fill(rng, 0xD4000000, 0xFF000000)]
    if form == 7:  # an SMCCC call: x0 = a function id, HVC or SMC, mostly #0
        imm = 0 if rng.random() < 0.8 else rng.getrandbits(16)
        return [*mov64(0, rng.choice(CALLS)), (0xD4000002 | rng.getrandbits(1)) | (imm << 5)]
    return [_fill(rng, 0xD5080000, 0xFFD80000)]  # SYS/SYSL, any operation


def simd(rng: random.Random, bases: Sequence[int]) -> list[int]:
    if rng.random() < 0.3:  # scalar floating point
        return [_fill(rng, 0x1E200000, 0x5F200000)]
    return [_fill(rng, 0x0E000000, 0x0E000000)]


def data_processing(rng: random.Random, bases: Sequence[int]) -> list[int]:
    """New addresses from old ones: ADD/SUB (immediate) on a base, MOVZ/MOVK/MOVN."""
    if rng.random() < 0.6:
        word = _fill(rng, 0x11000000, 0x1F800000)
        return [(word & ~0x3FF) | (_reg(rng, bases) << 5) | _reg(rng, bases)]
    return [_fill(rng, 0x12800000, 0x1F800000)]


def purely_random(rng: random.Random, bases: Sequence[int]) -> list[int]:
    return [rng.getrandbits(32)]


CLASSES: tuple[tuple[Callable[[random.Random, Sequence[int]], list[int]], int], ...] = (
    (purely_random, 25),
    (load_store, 30),
    (device_access, 6),
    (branch, 12),
    (system, 15),
    (simd, 10),
    (data_processing, 8),
)


def vector_table(terminator: int) -> bytes:
    """16 entries of 0x80 bytes.

    Synchronous ones resume after the instruction that trapped, unless it is outside the
    stream's code (it branched into data, zeros or a device) or was an instruction abort
    (EC 0x20/0x21: the next word would fault too): then at ``terminator``, at EL1h with
    DAIF masked. They keep x29 in TPIDR_EL1 meanwhile. IRQ, FIQ and SError return where
    they struck with I, F and A set in SPSR_EL1, so an interrupt the stream cannot
    acknowledge does not come back at once.
    """
    sync = (
        msr(TPIDR_EL1, 29),
        mrs(30, ELR_EL1),
        ldr_literal(29, 20),  # LOAD_ADDR
        sub_reg(30, 30, 29),
        cmp_imm(30, terminator - LOAD_ADDR),
        b_cond(COND_HS, 10),  # outside the code: to ``out``
        mrs(30, ESR_EL1),
        lsr_imm(30, 30, 27),
        cmp_imm(30, 0x20 >> 1),
        b_cond(COND_EQ, 6),  # an instruction abort: to ``out``
        mrs(30, ELR_EL1),
        add_imm(30, 30, 4),
        msr(ELR_EL1, 30),
        mrs(29, TPIDR_EL1),
        ERET,
        # out:
        ldr_literal(30, 9),  # the terminator
        msr(ELR_EL1, 30),
        movz(30, 0x3C5),  # EL1h, DAIF masked
        msr(SPSR_EL1, 30),
        mrs(29, TPIDR_EL1),
        ERET,
        NOP,
        *struct.unpack("<2I", struct.pack("<Q", LOAD_ADDR)),
        *struct.unpack("<2I", struct.pack("<Q", terminator)),
    )
    mask = (mrs(30, SPSR_EL1), orr_imm(30, 30, 58, 2), msr(SPSR_EL1, 30), ERET)  # #0x1c0
    table = b""
    for entry in range(16):
        words = sync if entry % 4 == 0 else mask
        table += struct.pack(f"<{len(words)}I", *words).ljust(0x80, b"\0")
    return table


def identity_map(rng: random.Random) -> bytes:
    """A level-1 table (4 KiB granule, 39-bit VA): 0-1 GiB device memory, 1-2 GiB normal
    memory (RAM), the rest invalid or, now and then, a random descriptor."""
    entries = [0] * 512
    entries[0] = 0x0000_0000 | (1 << 10) | (1 << 2) | 0b01  # AF, AttrIndx 1 (device), block
    entries[1] = 0x4000_0000 | 0x701  # AF, inner shareable, AttrIndx 0 (normal), block
    for _ in range(rng.randrange(3)):
        entries[rng.randrange(512)] = rng.getrandbits(64)
    return struct.pack("<512Q", *entries)


def timer_interrupt(rng: random.Random, gic: str) -> list[int]:
    """The virtual timer's PPI (INTID 27) enabled in the vGIC, the timer armed to fire a few
    instructions into the body, IRQs unmasked: an interrupt arrives somewhere in it."""
    words: list[int] = []
    if gic == "v3":  # GICD_CTLR groups on; GICR SGI frame: PPI 27 in group 1, enabled
        words += [*mov64(1, GICD), movz(2, 0x3), str_w(2, 1)]
        words += [*mov64(1, GICR + 0x10000), *mov64(2, 0xFFFF_FFFF), str_w(2, 1, 0x80)]
        words += [*mov64(2, 1 << 27), str_w(2, 1, 0x100)]
        words += [movz(2, 0xFF), msr(ICC_PMR_EL1, 2), movz(2, 1), msr(ICC_IGRPEN1_EL1, 2)]
    elif gic == "v2":  # GICD_CTLR, GICD_ISENABLER0 bit 27; GICC_CTLR and GICC_PMR
        words += [*mov64(1, GICD), movz(2, 1), str_w(2, 1), *mov64(2, 1 << 27), str_w(2, 1, 0x100)]
        words += [*mov64(1, GICC), movz(2, 1), str_w(2, 1), movz(2, 0xFF), str_w(2, 1, 4)]
    ticks = rng.choice((1, 5, 20, 100, 1000, rng.randrange(1, 20000)))
    words += [*mov64(2, ticks), msr(CNTV_TVAL_EL0, 2), movz(2, 1), msr(CNTV_CTL_EL0, 2), ISB]
    if rng.random() < 0.8:
        words.append(DAIFCLR_I)
    return words


def make_stream(seed: int, index: int, vectors: str = "both") -> Stream:
    """The stream ``index`` of the campaign ``seed``: the same bytes on every host."""
    rng = random.Random(f"random-streams:{seed}:{index}")
    with_vectors = index % 2 == 0 if vectors == "both" else vectors == "yes"
    code: list[int] = []
    extra: dict[int, bytes] = {}
    cpus = 1
    gic = rng.choices(("v3", "v2", "none"), (70, 15, 15))[0]
    profile = DEFAULT_PROFILE if rng.random() < 0.5 else rng.choice(sorted(PROFILES))
    if with_vectors:
        code += [*mov64(1, VECTORS), msr(VBAR_EL1, 1), ISB]
    if rng.random() < 0.15:  # a second vCPU starts at the entry and runs the same stream
        cpus = 2
        code += [*mov64(0, PSCI_CPU_ON64), movz(1, 1), *mov64(2, LOAD_ADDR), movz(3, 0), hvc(0)]
    if rng.random() < 0.2:  # FP/SIMD trapped (CPACR_EL1.FPEN = 0) or enabled (3)
        code += [movz(1, rng.choice((0, 0x30)), 1), msr(CPACR_EL1, 1), ISB]
    mmu = rng.random()
    if mmu < 0.15:  # the MMU on over an identity map, with random SCTLR_EL1 extras
        extra[TABLE] = identity_map(rng)
        sctlr = SCTLR_RESET | 1
        for bit in SCTLR_EXTRA:
            if rng.random() < 0.12:
                sctlr |= bit
        code += [*mov64(1, TABLE), msr(TTBR0_EL1, 1), *mov64(1, 0x00FF), msr(MAIR_EL1, 1)]
        code += [*mov64(1, 0x80_3519), msr(TCR_EL1, 1), ISB, *mov64(1, sctlr), msr(SCTLR_EL1, 1), ISB]
    elif mmu < 0.25:  # MMU registers written with random values, the MMU sometimes on
        for reg in rng.sample((TTBR0_EL1, TCR_EL1, MAIR_EL1), rng.randrange(1, 4)):
            code += [*mov64(1, interesting_address(rng)), msr(reg, 1)]
        if rng.random() < 0.5:
            code += [ISB, *mov64(1, SCTLR_RESET | 1), msr(SCTLR_EL1, 1), ISB]
    if rng.random() < 0.12:
        code += timer_interrupt(rng, gic)
    bases = rng.sample(range(1, 30), rng.randrange(0, 12))
    for reg in bases:
        code += mov64(reg, interesting_address(rng))
    if rng.random() < 0.3:  # the stack pointer somewhere interesting too
        code += [*mov64(9, interesting_address(rng)), add_imm(31, 9, 0)]
    if rng.random() < 0.15:  # the body entered by ERET: at EL0, EL1t, or an illegal return
        # AArch64 only (SPSR.M[4] clear): emu does not deliver exceptions taken from AArch32
        # EL0 (README, "Exceptions, MMU and EL0").
        spsr = rng.choice((0x0, 0x3C0, 0x4, 0x3C4, 0x8, 0x9, rng.getrandbits(32) & ~0x10))
        code += [*mov64(1, spsr), msr(SPSR_EL1, 1)]
        entry = LOAD_ADDR + 4 * (len(code) + 4)  # past these four words
        code += [*mov64(1, entry), msr(ELR_EL1, 1), ERET]
        assert LOAD_ADDR + 4 * len(code) == entry
    body_at = LOAD_ADDR + 4 * len(code)
    body: list[int] = []
    count = rng.randrange(16, 65)
    makers = [maker for maker, _ in CLASSES]
    weights = [weight for _, weight in CLASSES]
    while len(body) < count:
        body += rng.choices(makers, weights)[0](rng, bases)
    if with_vectors:
        extra[VECTORS] = vector_table(LOAD_ADDR + 4 * (len(code) + len(body)))
    code += body + list(TERMINATOR)
    assert 4 * len(code) <= VECTORS - LOAD_ADDR, "the code runs into the vectors"
    image = bytearray(struct.pack(f"<{len(code)}I", *code))
    for address, data in sorted(extra.items()):
        image += bytes(address - LOAD_ADDR - len(image))
        image += data
    return Stream(index, with_vectors, cpus, gic, profile, bytes(image), tuple(body), body_at)


# -- runs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one run of a stream ended, and a digest of everything it left behind."""

    kind: str  # a STOP_KINDS entry
    detail: str  # the stop, or the exception
    digest: str = ""  # of the JSON document, the human output, registers, the trace and the image
    parts: tuple[tuple[str, str], ...] = ()  # (part, digest), to name what differs
    seconds: float = 0.0


# Registers beyond the JSON's x0..x30, sp, pc and pstate that a run leaves behind.
EXTRA_REGS = (
    "nzcv",
    "sp_el0",
    "sp_el1",
    "elr_el1",
    "esr_el1",
    "far_el1",
    "vbar_el1",
    "ttbr0_el1",
    "tpidr_el0",
)


def _digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()[:16]


def run_stream(stream: Stream) -> Outcome:
    """One run, as ``emu run IMAGE --format flat --max-insns 20000 --timeout 10`` does it."""
    start = time.perf_counter()
    try:
        vm = Vm(stream.profile, cpus=stream.cpus, mem_size=RAM_SIZE, max_insns=MAX_INSNS, timeout=TIMEOUT_S)
    except KvmError as err:
        if err.errno != errno.ENOMEM:
            raise
        return Outcome(NO_HOST_MEMORY, str(err))  # the host's state, not the stream's
    try:
        with contextlib.closing(vm):
            program = Program.flat(stream.image, kind="flat", name=f"stream-{stream.index}")
            machine = Machine(vm, program, boot=BootOptions(gic=stream.gic))
            result = machine.run()
            document = dumps(run_json(machine, result, program=f"stream-{stream.index}"))
            # What ``emu run`` prints without --json: every hypercall decoded, the stop, registers.
            lines = [event_line(e, with_vcpu=stream.cpus > 1) for e in vm.hypercalls]
            human = "\n".join([*lines, stop_line(result.stop), *register_lines(vm)])
            extra = json.dumps([[v.get_reg(n) for n in EXTRA_REGS] for v in vm.vcpus])
            trace = "\n".join(json.dumps(e.to_json()) for e in vm.trace.events)
            memory = vm.read_memory(LOAD_ADDR, IMAGE_SIZE)
    except EmuError as err:
        return Outcome("error", f"EmuError: {err}", seconds=time.perf_counter() - start)
    except Exception as err:
        where = traceback.extract_tb(err.__traceback__)[-1]
        detail = f"{type(err).__name__}: {err} ({Path(where.filename).name}:{where.lineno})"
        return Outcome("internal error", detail, seconds=time.perf_counter() - start)
    parts = (
        ("stop", _digest(result.stop.describe())),
        ("json", _digest(document)),
        ("output", _digest(human)),
        ("registers", _digest(extra)),
        ("trace", _digest(trace)),
        ("memory", _digest(memory)),
    )
    return Outcome(
        stop_reason(result.stop),
        result.stop.describe(),
        _digest("".join(d for _, d in parts)),
        parts,
        time.perf_counter() - start,
    )


@dataclass
class Result:
    """A stream's two runs and what is wrong with them (``problem`` None: nothing)."""

    index: int
    vectors: bool
    kind: str
    detail: str
    problem: str | None = None
    seconds: float = 0.0  # the slower of the two runs


def problem_of(first: Outcome, second: Outcome) -> str | None:
    """The one-line defect two runs of a stream show, if any."""
    for outcome in (first, second):
        if outcome.kind == "internal error":
            return f"emu: internal error: {outcome.detail}"
        if outcome.kind == "crash":
            return outcome.detail
        if outcome.kind in ("error", "fault") and any(w in outcome.detail for w in EMU_LIMITS):
            return f"emu gave up: {outcome.detail}"
        if outcome.kind == "timeout":
            return f"hang: wall-clock timeout with a {MAX_INSNS}-instruction budget: {outcome.detail}"
    if (first.kind, first.detail, first.digest) != (second.kind, second.detail, second.digest):
        differ = [name for (name, a), (_, b) in zip(first.parts, second.parts, strict=False) if a != b]
        what = ", ".join(differ) or "stop"
        return f"nondeterministic: the two runs differ in {what} ({first.detail!r} vs {second.detail!r})"
    return None


def check_stream(seed: int, index: int, vectors: str = "both") -> Result:
    """Make stream ``index``, run it twice, and judge the runs."""
    stream = make_stream(seed, index, vectors)
    for attempt in range(HOST_MEMORY_RETRIES):
        if attempt:
            time.sleep(2 ** (attempt - 1))  # wait for the host to have the VM's memory again
        first, second = run_stream(stream), run_stream(stream)
        if NO_HOST_MEMORY not in (first.kind, second.kind):
            break
    else:
        return Result(index, stream.vectors, NO_HOST_MEMORY, first.detail)
    return Result(
        index,
        stream.vectors,
        first.kind,
        first.detail,
        problem_of(first, second),
        max(first.seconds, second.seconds),
    )


def _check_chunk(job: tuple[int, Sequence[int], str]) -> list[Result]:
    seed, indices, vectors = job
    return [check_stream(seed, i, vectors) for i in indices]


# -- the campaign -------------------------------------------------------------------------------


@dataclass
class Campaign:
    seed: int
    count: int
    vectors: str
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def defects(self) -> list[Result]:
        return [r for r in self.results if r.problem is not None]

    @property
    def not_run(self) -> list[Result]:
        return [r for r in self.results if r.kind == NO_HOST_MEMORY]

    def table(self) -> dict[str, dict[str, int]]:
        """Stop kind -> {"vectors": n, "no vectors": n, "total": n}, every kind seen."""
        counts = Counter((r.kind, r.vectors) for r in self.results)
        kinds = [k for k in STOP_KINDS if any(kind == k for kind, _ in counts)]
        return {
            k: {
                "vectors": counts[k, True],
                "no vectors": counts[k, False],
                "total": counts[k, True] + counts[k, False],
            }
            for k in kinds
        }


def _chunks(count: int) -> Iterator[list[int]]:
    for start in range(0, count, CHUNK):
        yield list(range(start, min(count, start + CHUNK)))


def _crash_of(seed: int, index: int, vectors: str) -> Result:
    """Stream ``index`` alone in a fresh process: its result, or the crash it causes."""
    stream = make_stream(seed, index, vectors)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(check_stream, seed, index, vectors).result()
        except BrokenProcessPool:
            detail = "the process running the stream died (a crash in native code)"
            return Result(index, stream.vectors, "crash", detail, f"host crash: {detail}")


def run_campaign(
    seed: int = 0,
    count: int = 6000,
    vectors: str = "both",
    jobs: int = 1,
    on_result: Callable[[Result], None] | None = None,
) -> Campaign:
    """Check streams 0..count-1 of ``seed``; results in index order whatever ``jobs``."""
    campaign = Campaign(seed, count, vectors)
    start = time.perf_counter()
    if jobs <= 1:
        for index in range(count):
            result = check_stream(seed, index, vectors)
            campaign.results.append(result)
            if on_result is not None:
                on_result(result)
        campaign.seconds = time.perf_counter() - start
        return campaign
    chunks = list(_chunks(count))
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures: list[Future[list[Result]]] = [pool.submit(_check_chunk, (seed, c, vectors)) for c in chunks]
        for chunk, future in zip(chunks, futures, strict=True):
            try:
                results = future.result()
            except BrokenProcessPool:
                # A worker died: find the stream that kills a process by running each alone.
                results = [_crash_of(seed, i, vectors) for i in chunk]
            for result in results:
                campaign.results.append(result)
                if on_result is not None:
                    on_result(result)
    campaign.seconds = time.perf_counter() - start
    return campaign


def reproducer(campaign: Campaign, result: Result, output: Path) -> tuple[Path, str]:
    """Write the defect's image; return it and the command that reruns it."""
    stream = make_stream(campaign.seed, result.index, campaign.vectors)
    path = output / f"stream-{campaign.seed}-{result.index}.bin"
    path.write_bytes(stream.image)
    flags = f" --profile {stream.profile}" if stream.profile != DEFAULT_PROFILE else ""
    flags += f" --cpus {stream.cpus}" if stream.cpus > 1 else ""
    flags += f" --gic {stream.gic}" if stream.gic != "v3" else ""
    return path, f"emu run {path} --format flat{flags} --max-insns {MAX_INSNS} --timeout {TIMEOUT_S:g}"


def report(campaign: Campaign, output: Path | None, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    rate = len(campaign.results) / campaign.seconds if campaign.seconds else 0.0
    print(
        f"{len(campaign.results)} streams (seed {campaign.seed}, vectors {campaign.vectors}), each run twice, "
        f"in {campaign.seconds:.1f} s ({rate:.1f} streams/s)",
        file=out,
    )
    print(f"{'stop':<16}{'vectors':>10}{'no vectors':>12}{'total':>8}", file=out)
    for kind, row in campaign.table().items():
        print(f"{kind:<16}{row['vectors']:>10}{row['no vectors']:>12}{row['total']:>8}", file=out)
    if campaign.results:
        slowest = max(campaign.results, key=lambda r: r.seconds)
        print(
            f"slowest run: stream {slowest.index}, {slowest.seconds:.2f} s (timeout {TIMEOUT_S:g} s)",
            file=out,
        )
    defects = campaign.defects
    if campaign.not_run:
        indices = ", ".join(str(r.index) for r in campaign.not_run)
        print(f"not run, the host had no memory for their VM: streams {indices}", file=out)
    print(f"defects: {len(defects)}", file=out)
    for result in defects:
        stream = make_stream(campaign.seed, result.index, campaign.vectors)
        print(
            f"stream {result.index} ({'vectors' if result.vectors else 'no vectors'}): {result.problem}",
            file=out,
        )
        print("  words: " + " ".join(f"{w:08x}" for w in stream.words), file=out)
        if output is not None:
            _path, command = reproducer(campaign, result, output)
            print(f"  reproduce: {command}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=6000, help="streams (default 6000)")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    parser.add_argument(
        "--vectors", choices=("both", "yes", "no"), default="both", help="streams with exception vectors"
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--output", type=Path, default=Path("random-streams"), help="where defects are written"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    done = defects = 0

    def progress(result: Result) -> None:
        nonlocal done, defects
        done += 1
        defects += result.problem is not None
        if done % 50 == 0 or done == args.count:
            line = f"\rstreams {done}/{args.count}, {defects} defect{'' if defects == 1 else 's'}"
            print(line, end="", file=sys.stderr, flush=True)

    campaign = run_campaign(args.seed, args.count, args.vectors, args.jobs, on_result=progress)
    print(file=sys.stderr)
    if campaign.defects:
        args.output.mkdir(parents=True, exist_ok=True)
    if args.json:
        document = {
            "seed": campaign.seed,
            "count": campaign.count,
            "vectors": campaign.vectors,
            "seconds": campaign.seconds,
            "slowest_run_s": max((r.seconds for r in campaign.results), default=0.0),
            "stops": campaign.table(),
            "not_run": [r.index for r in campaign.not_run],
            "defects": [
                {
                    "index": r.index,
                    "vectors": r.vectors,
                    "problem": r.problem,
                    "words": [
                        f"{w:08x}" for w in make_stream(campaign.seed, r.index, campaign.vectors).words
                    ],
                    "reproduce": reproducer(campaign, r, args.output)[1],
                }
                for r in campaign.defects
            ],
        }
        print(json.dumps(document, indent=2))
    else:
        report(campaign, args.output if campaign.defects else None)
    if campaign.defects:
        return 1
    return EXIT_INCOMPLETE if campaign.not_run else 0


if __name__ == "__main__":
    sys.exit(main())
