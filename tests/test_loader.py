"""Loading programs as QEMU's -kernel does: flat, Linux arm64 Image, ELF; bad images fail in one line."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from emu.arm.asm import assemble
from emu.errors import ImageError
from emu.vmm.boot import boot
from emu.vmm.loader import Program, detect_format, load_program
from tests.conftest import run_cli

HELLO = """
    ldr x1, =0x09000000
    mov w2, #0x4b               // 'K'
    str w2, [x1]
    mov w2, #0x0a
    str w2, [x1]
    adr x19, here
    ldr x0, =0x84000008
    hvc #0
here:
"""


def linux_image(
    code_at: int, text_offset: int, image_size: int | None = None, magic: bytes = b"ARM\x64"
) -> bytes:
    """A minimal arm64 Image: a header whose code0 branches over it to ``code``."""
    body = assemble(HELLO, code_at + 64)
    header = bytearray(64)
    struct.pack_into("<I", header, 0, 0x14000000 | (64 // 4))  # b +64
    struct.pack_into(
        "<QQ", header, 8, text_offset, len(header) + len(body) if image_size is None else image_size
    )
    header[56:60] = magic
    return bytes(header) + body


@pytest.mark.parametrize(
    "text_offset, image_size, load",
    [
        (0x80000, None, 0x4008_0000),
        (0x0, None, 0x4020_0000),  # below QEMU's boot stub: moved up 2 MiB
        (0x80000, 0, 0x4008_0000),  # image_size 0: text_offset not valid, default place
    ],
)
def test_linux_image_is_placed_by_its_header(tmp_path, text_offset, image_size, load) -> None:
    path = tmp_path / "Image"
    path.write_bytes(linux_image(load, text_offset, image_size))
    program = load_program(path)
    assert (program.kind, program.entry, program.start) == ("image", load, load)
    result = boot(path)
    result.assert_system_event("SHUTDOWN")
    assert result.console == "K\n"
    regs = result.vm.vcpus[0].get_regs()
    assert regs["x19"] == load + 64 + 0x20  # ran where it was linked


def test_elf_segments_and_bss(tmp_path) -> None:
    import shutil

    if shutil.which("aarch64-linux-gnu-ld") is None:
        pytest.skip("GNU binutils for aarch64 not installed")
    import subprocess

    (tmp_path / "p.S").write_text(HELLO.replace("here:", "here:\n.bss\nzeros: .space 64\n"))
    subprocess.run(["aarch64-linux-gnu-as", "-o", tmp_path / "p.o", tmp_path / "p.S"], check=True)
    subprocess.run(
        ["aarch64-linux-gnu-ld", "-Ttext=0x40200000", "-o", tmp_path / "p.elf", tmp_path / "p.o"], check=True
    )
    program = load_program(tmp_path / "p.elf")
    assert program.kind == "elf" and program.entry == 0x40200000
    assert any(s.zero_fill for s in program.segments)
    result = boot(tmp_path / "p.elf")
    assert result.console == "K\n"
    assert result.vm.vcpus[0].get_regs()["x0"] == 2**64 - 6


@pytest.mark.parametrize(
    "make, fmt, fragment",
    [
        (lambda: linux_image(0x40080000, 0x80000, magic=b"ARM\x32"), "image", "wrong Image magic"),
        (lambda: b"\x00" * 40, "image", "too short"),
        (lambda: b"\x7fELF\x02\x01\x01" + b"\x00" * 20, "auto", "bad ELF"),
        (lambda: b"", "auto", "empty image"),
    ],
)
def test_bad_images(tmp_path, make, fmt, fragment) -> None:
    path = tmp_path / "image.bin"
    path.write_bytes(make())
    with pytest.raises(ImageError, match=fragment):
        load_program(path, fmt=fmt)


def test_truncated_elf(tmp_path) -> None:
    import shutil
    import subprocess

    if shutil.which("aarch64-linux-gnu-ld") is None:
        pytest.skip("GNU binutils for aarch64 not installed")
    (tmp_path / "p.S").write_text(HELLO)
    subprocess.run(["aarch64-linux-gnu-as", "-o", tmp_path / "p.o", tmp_path / "p.S"], check=True)
    subprocess.run(
        ["aarch64-linux-gnu-ld", "-Ttext=0x40200000", "-o", tmp_path / "p.elf", tmp_path / "p.o"], check=True
    )
    data = (tmp_path / "p.elf").read_bytes()
    (tmp_path / "cut.elf").write_bytes(data[:0x10020])
    result = run_cli("run", tmp_path / "cut.elf")
    assert result.status == 1 and "Traceback" not in result.stderr
    assert "truncated ELF" in result.stderr or "bad ELF" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_image_larger_than_ram(tmp_path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"\x1f\x20\x03\xd5" * (2 << 20))  # 8 MiB of NOPs
    result = run_cli("run", path, "--mem", "8M")
    assert result.status == 1 and "do not fit in guest RAM" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_wrong_magic_from_the_cli(tmp_path) -> None:
    path = tmp_path / "Image"
    path.write_bytes(linux_image(0x40080000, 0x80000, magic=b"XXXX"))
    result = run_cli("run", path, "--format", "image")
    assert (
        result.status == 1
        and result.stderr.startswith("emu: error: ")
        and "wrong Image magic" in result.stderr
    )


def test_image_overlapping_the_dtb_area_is_refused(tmp_path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"\x1f\x20\x03\xd5" * (17 << 20))  # 68 MiB from 0x40080000 reaches 0x44000000
    result = run_cli("run", path)
    assert result.status == 1 and "initrd/DTB area" in result.stderr


def test_flat_program_helper() -> None:
    program = Program.flat(b"\x00" * 8)
    assert (program.start, program.end, program.entry) == (0x40080000, 0x40080008, 0x40080000)


FLAT_HELLO = assemble(HELLO, 0x4008_0000)


@pytest.mark.parametrize("name", ["psci.flat", "psci", "psci.img", "psci.bin", "Image.gz.not"])
def test_any_name_boots_a_flat_binary(tmp_path, name) -> None:
    """QEMU's -kernel takes any file: what is neither ELF, Image nor text is a flat binary."""
    path = tmp_path / name
    path.write_bytes(FLAT_HELLO)
    assert load_program(path).kind == "flat"
    result = boot(path)
    result.assert_system_event("SHUTDOWN")
    assert result.console == "K\n"


@pytest.mark.parametrize(
    "name, content, kind",
    [
        ("guest", b"\x7fELF" + bytes(60), "elf"),
        ("guest.S", b"\x7fELF" + bytes(60), "elf"),  # the magic decides, not the name
        ("kernel", bytes(56) + b"ARM\x64" + bytes(8), "image"),
        ("boot.txt", b"  nop\n\tb .\n", "asm"),  # UTF-8 text is assembly, whatever its name
        ("boot", "// caf\u00e9\nnop\n".encode(), "asm"),
        ("boot.S", b"", "asm"),  # an empty .S is (empty) assembly, not a flat image
        ("zeros", bytes(16), "flat"),
        ("almost-text", b"nop\n\x01\n", "flat"),  # a control byte: binary
        ("latin1", b"nop // caf\xe9\n", "flat"),  # not UTF-8: binary
    ],
)
def test_format_is_detected_from_the_content(name, content, kind) -> None:
    assert detect_format(Path(name), content) == kind


def test_the_header_line_names_the_detected_format(tmp_path) -> None:
    path = tmp_path / "psci.flat"
    path.write_bytes(FLAT_HELLO)
    result = run_cli("run", str(path))
    assert result.status == 0
    assert f"emu: {path} (flat, entry 0x40080000)" in result.stdout.splitlines()[0]


def test_format_flag_still_forces_one(tmp_path) -> None:
    path = tmp_path / "hello.S"
    path.write_bytes(FLAT_HELLO)  # not text, but told it is a flat binary
    assert load_program(path, fmt="flat").kind == "flat"
