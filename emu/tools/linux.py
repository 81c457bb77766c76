"""Booting a Debian arm64 kernel with the busybox initramfs of ``firmware/linux/``.

``linux_assets(default)`` finds the fetched kernel and initramfs (``$EMU_LINUX_CACHE``,
else ``default``, a checkout's ``firmware/linux/.cache/``); ``boot_linux`` boots them the
way ``qemu-system-aarch64 -M virt -kernel Image -initrd initrd.gz -append ...`` would and
returns what the bench and the tests look at: the run, the console, the instructions
executed and the wall time.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from emu.kvm.vm import Vm
from emu.vmm.loader import load_program
from emu.vmm.machine import BootOptions, Machine, RunResult

CACHE_ENV = "EMU_LINUX_CACHE"
BOOTARGS = "earlycon=pl011,0x09000000 console=ttyAMA0 panic=-1"
MEM = 512 << 20
# What /init prints last before ``poweroff -f`` (firmware/linux/initramfs.py).
END_MARKER = "emu-linux-init: done, powering off"
# Quantum for several vCPUs: long enough that Python's share of a slice is small, short
# enough that a vCPU spinning on a lock or waiting for an IPI gives way soon.
LINUX_QUANTUM = 20_000


@dataclass(frozen=True)
class LinuxAssets:
    image: Path
    initrd: Path


@dataclass
class LinuxBoot:
    machine: Machine
    result: RunResult
    wall_s: float

    @property
    def vm(self) -> Vm:
        return self.machine.vm

    @property
    def console(self) -> str:
        return self.machine.console.decode(errors="replace")

    @property
    def instructions(self) -> int:
        return self.vm.limits.charged


def cache_dir(default: Path) -> Path:
    """Where ``firmware/linux/fetch.py`` put the files: ``$EMU_LINUX_CACHE`` or ``default``."""
    return Path(os.environ.get(CACHE_ENV) or default)


def linux_assets(default: Path) -> LinuxAssets | None:
    """The fetched kernel and initramfs, or None (run ``python3 firmware/linux/fetch.py``)."""
    cache = cache_dir(default)
    assets = LinuxAssets(cache / "Image", cache / "initrd.gz")
    return assets if assets.image.is_file() and assets.initrd.is_file() else None


def boot_linux(
    assets: LinuxAssets,
    cpus: int,
    gic: str = "v3",
    *,
    seed: int = 0,
    quantum: int = LINUX_QUANTUM,
    timeout: float = 600,
) -> LinuxBoot:
    vm = Vm(cpus=cpus, mem_size=MEM, seed=seed, quantum=quantum, timeout=timeout)
    program = load_program(str(assets.image))
    boot = BootOptions(bootargs=BOOTARGS, initrd=assets.initrd.read_bytes(), gic=gic)
    machine = Machine(vm, program, boot=boot)
    start = time.perf_counter()
    try:
        result = machine.run()
    finally:
        vm.close()
    return LinuxBoot(machine, result, time.perf_counter() - start)
