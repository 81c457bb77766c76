"""What the architecture code needs of a vCPU: its engine, its registers and guest memory.

Exception entry, the MMU walk and fault decoding act on any object with this shape; the
KVM layer's ``Vcpu`` is one. Keeping the interface here lets ``emu.arm`` know nothing of KVM.
"""

from __future__ import annotations

from typing import Protocol

from unicorn.unicorn_py3.arch.arm64 import UcAArch64

from emu.arm.regs import RegisterFile


class PhysicalMemory(Protocol):
    """Guest RAM by physical address."""

    def in_ram(self, address: int, size: int = 1) -> bool: ...

    def read_memory(self, address: int, size: int) -> bytes: ...


class Cpu(Protocol):
    """One AArch64 CPU as architecture code sees it."""

    uc: UcAArch64
    regs: RegisterFile

    @property
    def memory(self) -> PhysicalMemory: ...

    def get_reg(self, name: str) -> int: ...

    def read_insn(self, va: int) -> int | None: ...
