"""Shared helpers: build a VM from assembly, run the CLI as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from emu import LOAD_ADDR, Vm
from emu.arm.asm import gnu_as_available

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"

# `python -m emu` in a test's subprocess runs the installed emu, as a user's shell would, not
# the source tree its working directory happens to hold (which lacks the built C extension
# after a non-editable install, and would time guests with the pure-Python fallback).
os.environ["PYTHONSAFEPATH"] = "1"


# Guest snippet tail: a vector table whose 16 entries all branch to the snippet's `sync`.
def block_tables(alias: int) -> str:
    """Guest lines that build page tables at 0x40100000 (uses x1..x6): L1[1] -> an L2 table
    of 2 MiB blocks mapping 0x40000000.. to itself, except VA 0x7fe00000 (L2[511]), which
    maps the block at ``alias``. TTBR0 is the caller's to set (x1 holds the L1 table)."""
    return f"""
    ldr     x1, =0x40100000
    ldr     x2, =0x40101003
    str     x2, [x1, #8]
    ldr     x3, =0x40101000
    mov     x4, #0
    ldr     x5, =0x40000701
fill:
    lsl     x6, x4, #21
    add     x6, x6, x5
    str     x6, [x3, x4, lsl #3]
    add     x4, x4, #1
    cmp     x4, #511
    b.lo    fill
    ldr     x6, ={alias | 0x701:#x}
    str     x6, [x3, #4088]
"""


VECTOR_TABLE = """
    .balign 0x800
vectors:
    .rept   16
    b       sync
    .balign 0x80
    .endr
"""

needs_gnu_as = pytest.mark.skipif(not gnu_as_available(), reason="GNU binutils for aarch64 not installed")


@dataclass
class CliResult:
    status: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def run_cli(*args: str, timeout: float = 60) -> CliResult:
    """Run ``python -m emu ARGS`` in a fresh process, as a user's shell would."""
    proc = subprocess.run(
        [sys.executable, "-m", "emu", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def make_vm(source: str, *caps, **vm_args) -> tuple[Vm, object]:
    """A VM with ``source`` loaded at LOAD_ADDR and vCPU 0 ready to run it."""
    vm_args.setdefault("timeout", 20)
    vm = Vm(**vm_args)
    for cap in caps:
        vm.enable_cap(cap)
    vm.load_asm(source)
    vcpu = vm.create_vcpu(0)
    vcpu.pc = LOAD_ADDR
    return vm, vcpu


@pytest.fixture
def tmp_program(tmp_path):
    """Write an assembly program to a file and return its path."""

    def write(source: str, name: str = "prog.S") -> Path:
        path = tmp_path / name
        path.write_text(source)
        return path

    return write
