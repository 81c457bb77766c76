"""The machine's device tree, as QEMU ``virt`` would describe emu's machine, and where it goes.

Only what emu models is described, so a guest that finds a node finds the device: RAM,
one ``cpu@N`` per vCPU with ``reg`` = its MPIDR affinity and ``enable-method = "psci"``,
the PSCI node (1.0 / 0.2 / 0.1 compatibles, ``method`` = the conduit), the PL011 (with
the fixed APB clock its binding needs), the architected timer, the interrupt controller
KVM provides (GICv2 or GICv3, as QEMU virt describes them: ``interrupt-parent`` at the
root, three interrupt cells, the timer's PPIs 13, 14, 11, 10 and the UART's SPI 1) and
``/chosen`` with ``bootargs``, ``stdout-path`` and the initrd. Without a vGIC there are no
``interrupts`` properties. Built with pylibfdt (dtc's libfdt).

Placement follows QEMU's hw/arm/boot.c: initrd at RAM base + min(RAM / 2, 128 MiB), DTB at
the next 2 MiB boundary after it, its address in x0; an ELF is booted as bare-metal, with
the DTB at the start of RAM and x0 = 0.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import libfdt

from emu.errors import ImageError
from emu.smccc.psci import CPU_OFF, CPU_ON64, CPU_SUSPEND64, MIGRATE64
from emu.vmm.devices import PL011

MiB = 1 << 20
APB_PCLK_PHANDLE = 0x8000
GIC_PHANDLE = 0x8001
# Interrupt specifier cells (include/dt-bindings/interrupt-controller/arm-gic.h).
GIC_SPI = 0
GIC_PPI = 1
IRQ_TYPE_LEVEL_HIGH = 4
# The timer's PPIs in QEMU virt's order: secure physical, physical, virtual, hypervisor.
TIMER_PPIS = (13, 14, 11, 10)
UART_SPI = 1


@dataclass(frozen=True)
class GicNode:
    """What the device tree says of the interrupt controller: version and MMIO windows."""

    version: int
    windows: tuple[tuple[int, int], ...]


APB_PCLK_HZ = 24_000_000
CPU_COMPATIBLE = "arm,cortex-a72"  # Unicorn's default CPU model (engine notes 7)


@dataclass(frozen=True)
class BootLayout:
    """Where the initrd and the DTB go in guest RAM, and whether x0 carries the DTB."""

    initrd_start: int
    initrd_end: int
    dtb_address: int | None  # None: no DTB (a bare-metal ELF with no room below it)
    pass_in_x0: bool = True


def layout(ram_base: int, ram_size: int, initrd_size: int, dtb_size: int) -> BootLayout:
    initrd_start = ram_base + min(ram_size // 2, 128 * MiB)
    initrd_end = initrd_start + initrd_size
    dtb_address = (initrd_end + 2 * MiB - 1) & ~(2 * MiB - 1)
    if dtb_address + max(dtb_size, 1) > ram_base + ram_size:
        raise ImageError(_layout_error(ram_base, ram_size, initrd_size, dtb_size, dtb_address))
    return BootLayout(initrd_start, initrd_end, dtb_address)


def _layout_error(ram_base: int, ram_size: int, initrd_size: int, dtb_size: int, dtb_address: int) -> str:
    """Why the boot layout does not fit, and the smallest --mem that would."""
    after = f"the initrd ({initrd_size:#x} bytes) at RAM + min(RAM/2, 128 MiB)" if initrd_size else "RAM/2"
    need = ram_size + MiB
    while True:
        start = ram_base + min(need // 2, 128 * MiB) + initrd_size
        if ((start + 2 * MiB - 1) & ~(2 * MiB - 1)) + max(dtb_size, 1) <= ram_base + need:
            break
        need += MiB
    return (
        f"guest RAM ({ram_size >> 10} KiB) is too small for the boot layout QEMU uses: the device tree "
        f"goes at the first 2 MiB boundary after {after}, {dtb_address:#x}, past the end of RAM at "
        f"{ram_base + ram_size:#x}; give the VM at least --mem {need >> 20}M"
    )


def _strings(*values: str) -> bytes:
    return b"".join(v.encode() + b"\0" for v in values)


def _cells(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in values)


def _reg64(address: int, size: int) -> bytes:
    return _cells(address >> 32, address & 0xFFFF_FFFF, size >> 32, size & 0xFFFF_FFFF)


def build_dtb(
    *,
    ram_base: int,
    ram_size: int,
    mpidrs: list[int],
    conduit: str = "hvc",
    bootargs: str = "",
    initrd: tuple[int, int] | None = None,
    uart: type[PL011] = PL011,
    gic: GicNode | None = None,
) -> bytes:
    """A flattened device tree for this machine (boot CPU first in ``mpidrs``)."""
    if conduit not in ("hvc", "smc"):
        raise ValueError(f"PSCI conduit must be hvc or smc, not {conduit!r}")
    affinities = [m & 0xFF_00FF_FFFF for m in mpidrs]
    wide = any(a >> 32 for a in affinities)
    uart_node = f"pl011@{uart.base:x}"
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    # PPI specifiers carry a CPU mask on GICv2 (one bit per CPU), not on GICv3.
    ppi_flags = IRQ_TYPE_LEVEL_HIGH
    if gic is not None and gic.version == 2:
        ppi_flags |= ((1 << len(mpidrs)) - 1) << 8
    with sw.add_node(""):
        if gic is not None:
            sw.property_u32("interrupt-parent", GIC_PHANDLE)
        sw.property_u32("#address-cells", 2)
        sw.property_u32("#size-cells", 2)
        sw.property_string("compatible", "linux,dummy-virt")
        sw.property_string("model", "emu,dummy-virt")
        if gic is not None:
            with sw.add_node(f"intc@{gic.windows[0][0]:x}"):
                compatible = "arm,gic-v3" if gic.version == 3 else "arm,cortex-a15-gic"
                sw.property_string("compatible", compatible)
                sw.property_u32("#interrupt-cells", 3)
                sw.property("interrupt-controller", b"")
                sw.property_u32("#address-cells", 2)
                sw.property_u32("#size-cells", 2)
                sw.property("ranges", b"")
                sw.property("reg", b"".join(_reg64(base, size) for base, size in gic.windows))
                sw.property_u32("phandle", GIC_PHANDLE)
        with sw.add_node("psci"):
            sw.property("compatible", _strings("arm,psci-1.0", "arm,psci-0.2", "arm,psci"))
            sw.property_string("method", conduit)
            # Function ids for the original "arm,psci" binding, as QEMU gives them.
            sw.property_u32("cpu_suspend", CPU_SUSPEND64)
            sw.property_u32("cpu_off", CPU_OFF)
            sw.property_u32("cpu_on", CPU_ON64)
            sw.property_u32("migrate", MIGRATE64)
        with sw.add_node(f"memory@{ram_base:x}"):
            sw.property_string("device_type", "memory")
            sw.property("reg", _reg64(ram_base, ram_size))
        with sw.add_node("cpus"):
            sw.property_u32("#address-cells", 2 if wide else 1)
            sw.property_u32("#size-cells", 0)
            for affinity in affinities:
                with sw.add_node(f"cpu@{affinity:x}"):
                    sw.property_string("device_type", "cpu")
                    sw.property_string("compatible", CPU_COMPATIBLE)
                    sw.property(
                        "reg", _cells(affinity >> 32, affinity & 0xFFFF_FFFF) if wide else _cells(affinity)
                    )
                    sw.property_string("enable-method", "psci")
        with sw.add_node("apb-pclk"):
            sw.property_string("compatible", "fixed-clock")
            sw.property_u32("#clock-cells", 0)
            sw.property_u32("clock-frequency", APB_PCLK_HZ)
            sw.property_string("clock-output-names", "clk24mhz")
            sw.property_u32("phandle", APB_PCLK_PHANDLE)
        with sw.add_node(uart_node):
            sw.property("compatible", _strings(*uart.compatible))
            sw.property("reg", _reg64(uart.base, uart.size))
            sw.property("clock-names", _strings("uartclk", "apb_pclk"))
            sw.property("clocks", _cells(APB_PCLK_PHANDLE, APB_PCLK_PHANDLE))
            if gic is not None:
                sw.property("interrupts", _cells(GIC_SPI, UART_SPI, IRQ_TYPE_LEVEL_HIGH))
        with sw.add_node("timer"):
            sw.property("compatible", _strings("arm,armv8-timer", "arm,armv7-timer"))
            sw.property("always-on", b"")
            if gic is not None:
                sw.property("interrupts", b"".join(_cells(GIC_PPI, ppi, ppi_flags) for ppi in TIMER_PPIS))
        with sw.add_node("chosen"):
            # A command line is bytes to the kernel: one that is not UTF-8 (from a shell's
            # argv, as the surrogate escapes Python decodes it to) passes through unchanged.
            sw.property("bootargs", os.fsencode(bootargs) + b"\0")
            sw.property_string("stdout-path", f"/{uart_node}")
            if initrd is not None:
                sw.property_u64("linux,initrd-start", initrd[0])
                sw.property_u64("linux,initrd-end", initrd[1])
    fdt = sw.as_fdt()
    fdt.pack()
    return bytes(fdt.as_bytearray())


def machine_dtb(vm, *, bootargs: str = "", initrd_size: int = 0, conduit: str = "hvc") -> bytes:
    """The DTB for ``vm``'s RAM and vCPUs, with the initrd where ``layout`` puts it."""
    # The initrd's place does not depend on the DTB's size: lay out with size 0 to learn it.
    place = layout(vm.ram_base, vm.ram_size, initrd_size, 0)
    chip = vm.irqchip
    gic = GicNode(chip.version, tuple(chip.windows())) if chip is not None else None
    return build_dtb(
        ram_base=vm.ram_base,
        ram_size=vm.ram_size,
        mpidrs=[v.mpidr for v in vm.vcpus],
        conduit=conduit,
        bootargs=bootargs,
        initrd=(place.initrd_start, place.initrd_end) if initrd_size else None,
        gic=gic,
    )


FDT_MAGIC = 0xD00DFEED
FDT_HEADER_SIZE = 40


def read_dtb(data: bytes, name: str = "DTB") -> libfdt.Fdt:
    """Parse a user-supplied DTB; a bad one is an ``ImageError``.

    libfdt trusts the header's ``totalsize``, so a blob shorter than it says is refused
    before libfdt reads past its end.
    """
    if len(data) < FDT_HEADER_SIZE:
        raise ImageError(f"{name}: not a valid device tree blob ({len(data)} bytes, shorter than its header)")
    magic, totalsize = struct.unpack_from(">II", data)
    if magic == FDT_MAGIC and len(data) < totalsize:
        raise ImageError(
            f"{name}: truncated device tree blob: its header says {totalsize} bytes, it has {len(data)}"
        )
    try:
        fdt = libfdt.Fdt(data)
        fdt.path_offset("/")
    except libfdt.FdtException as err:
        raise ImageError(f"{name}: not a valid device tree blob ({err})") from None
    return fdt
