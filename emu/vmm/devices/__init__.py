"""Devices emu models, at QEMU ``virt`` addresses. Each is an MMIO region every vCPU maps."""

from emu.vmm.devices.pl011 import PL011, PL011_BASE, PL011_SIZE

__all__ = ["PL011", "PL011_BASE", "PL011_SIZE"]
