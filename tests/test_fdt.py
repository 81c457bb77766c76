"""The generated device tree describes exactly what emu models, where QEMU virt puts it."""

from __future__ import annotations

import os

import libfdt
import pytest

from emu.errors import ImageError
from emu.vmm.boot import boot
from emu.vmm.fdt import build_dtb, layout, read_dtb
from tests.conftest import run_cli

MiB = 1 << 20


def tree(**kwargs) -> libfdt.Fdt:
    args = {"ram_base": 0x4000_0000, "ram_size": 128 * MiB, "mpidrs": [0x8000_0000, 0x8000_0001, 0x8000_0110]}
    args.update(kwargs)
    return libfdt.Fdt(build_dtb(**args))


def prop(fdt: libfdt.Fdt, path: str, name: str) -> bytes:
    return bytes(fdt.getprop(fdt.path_offset(path), name))


def test_root_memory_cpus_psci() -> None:
    fdt = tree()
    assert fdt.getprop(0, "#address-cells").as_uint32() == 2
    assert prop(fdt, "/memory@40000000", "reg") == (0x4000_0000).to_bytes(8, "big") + (128 * MiB).to_bytes(
        8, "big"
    )
    cpus = [fdt.get_name(off) for off in _children(fdt, "/cpus")]
    assert cpus == ["cpu@0", "cpu@1", "cpu@110"]
    assert prop(fdt, "/cpus/cpu@110", "reg") == (0x110).to_bytes(4, "big")
    assert prop(fdt, "/cpus/cpu@1", "enable-method") == b"psci\0"
    assert prop(fdt, "/psci", "compatible") == b"arm,psci-1.0\0arm,psci-0.2\0arm,psci\0"
    assert prop(fdt, "/psci", "method") == b"hvc\0"


def _children(fdt: libfdt.Fdt, path: str) -> list[int]:
    out, off = [], fdt.first_subnode(fdt.path_offset(path), [libfdt.NOTFOUND])
    while off >= 0:
        out.append(off)
        off = fdt.next_subnode(off, [libfdt.NOTFOUND])
    return out


def test_uart_timer_chosen_and_no_interrupt_controller() -> None:
    fdt = tree(bootargs="console=ttyAMA0 quiet", initrd=(0x4400_0000, 0x4400_1000), conduit="smc")
    assert prop(fdt, "/pl011@9000000", "compatible") == b"arm,pl011\0arm,primecell\0"
    assert prop(fdt, "/timer", "compatible").startswith(b"arm,armv8-timer\0")
    assert prop(fdt, "/chosen", "bootargs") == b"console=ttyAMA0 quiet\0"
    assert prop(fdt, "/chosen", "stdout-path") == b"/pl011@9000000\0"
    assert prop(fdt, "/chosen", "linux,initrd-start") == (0x4400_0000).to_bytes(8, "big")
    assert prop(fdt, "/chosen", "linux,initrd-end") == (0x4400_1000).to_bytes(8, "big")
    assert prop(fdt, "/psci", "method") == b"smc\0"
    for node in ("/intc", "/interrupt-controller"):
        with pytest.raises(libfdt.FdtException):
            fdt.path_offset(node)


def test_aff3_cpus_use_two_address_cells() -> None:
    fdt = tree(mpidrs=[0x8000_0000, 0x01_8000_0000])
    assert fdt.getprop(fdt.path_offset("/cpus"), "#address-cells").as_uint32() == 2


@pytest.mark.parametrize(
    "ram, initrd, start, dtb",
    [
        (128 * MiB, 0, 0x4400_0000, 0x4400_0000),
        (128 * MiB, 3 * MiB + 5, 0x4400_0000, 0x4440_0000),
        (1024 * MiB, 0, 0x4800_0000, 0x4800_0000),  # min(RAM / 2, 128 MiB)
    ],
)
def test_qemu_placement(ram, initrd, start, dtb) -> None:
    place = layout(0x4000_0000, ram, initrd, 0x1000)
    assert (place.initrd_start, place.dtb_address) == (start, dtb)


def test_bad_dtb_is_rejected() -> None:
    with pytest.raises(ImageError, match="not a valid device tree"):
        read_dtb(b"\x00" * 64)


def test_a_dtb_shorter_than_its_header_says_is_rejected() -> None:
    # libfdt trusts totalsize and would read past the end of the buffer.
    whole = build_dtb(ram_base=0x4000_0000, ram_size=128 * MiB, mpidrs=[0x8000_0000])
    with pytest.raises(
        ImageError, match=f"truncated device tree blob: its header says {len(whole)} bytes, it has 48"
    ):
        read_dtb(whole[:48])


def test_a_command_line_that_is_not_utf8_passes_through() -> None:
    # What Python makes of a shell argument with a byte that is not UTF-8.
    bootargs = os.fsdecode(b"console=ttyAMA0 label=\xff")
    fdt = tree(bootargs=bootargs)
    assert prop(fdt, "/chosen", "bootargs") == b"console=ttyAMA0 label=\xff\0"


def test_emu_dtb_command(tmp_path) -> None:
    out = tmp_path / "virt.dtb"
    result = run_cli("dtb", "--cpus", "4", "--append", "hello", "-o", out)
    assert result.status == 0
    fdt = libfdt.Fdt(out.read_bytes())
    assert len(_children(fdt, "/cpus")) == 4
    assert prop(fdt, "/chosen", "bootargs") == b"hello\0"


READ_CHOSEN = """
    // x0 = DTB; copy its first word, then read the initrd's first word where /chosen says
    // it is (the test passes the address in x21 by checking it against QEMU's rule).
    ldr w9, [x0]
    ldr x10, =0x44000000
    ldr x11, [x10]
    ldr x0, =0x84000008
    hvc #0
"""


def test_initrd_append_and_dtb_reach_the_guest(tmp_path) -> None:
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"INITRD!!" + bytes(100))
    program = tmp_path / "p.S"
    program.write_text(READ_CHOSEN)
    doc = run_cli("run", program, "--initrd", initrd, "--append", "root=/dev/ram", "--json").json()
    regs = doc["vcpus"][0]["regs"]
    assert regs["x9"] == 0xEDFE0DD0  # FDT magic, big-endian, read little-endian
    assert regs["x11"].to_bytes(8, "little") == b"INITRD!!"


def test_user_dtb_replaces_the_generated_one(tmp_path) -> None:
    mine = build_dtb(ram_base=0x4000_0000, ram_size=128 * MiB, mpidrs=[0x8000_0000], bootargs="mine")
    path = tmp_path / "mine.dtb"
    path.write_bytes(mine)
    result = boot(
        source="ldr w9, [x0]\nldr x0, =0x84000008\nhvc #0\n",
        boot_options=__import__("emu.vmm.machine", fromlist=["BootOptions"]).BootOptions(dtb=mine),
    )
    assert result.memory(0x4400_0000, len(mine)) == mine
    bad = tmp_path / "bad.dtb"
    bad.write_bytes(b"junk")
    cli = run_cli("run", tmp_path / "mine.dtb", "--format", "flat", "--dtb", bad)
    assert cli.status == 1 and "not a valid device tree" in cli.stderr
