"""Guest programs from files, placed where QEMU's ``-kernel`` would place them.

The format comes from the content, as for QEMU's ``-kernel`` (``--format`` forces one):

* ELF (the magic 0x7f "ELF"; pyelftools): every PT_LOAD segment at its physical address,
  entry ``e_entry``.
* Linux arm64 ``Image`` (the header magic "ARM" 0x64 at byte 56): ``text_offset`` and
  ``image_size`` place it at RAM base + text_offset (+2 MiB when text_offset is below
  QEMU's 4 KiB boot stub, as QEMU does), or at 0x40080000 when image_size is 0.
* A64 assembly: a ``.S``/``.s``/``.asm`` file, or any other file that is UTF-8 text;
  assembled for 0x40080000.
* Anything else: a flat binary at RAM base + 0x80000, as QEMU does for raw images.

The entry state is the arm64 boot protocol's (Documentation/arm64/booting.rst): EL1h,
DAIF masked, MMU and caches off, x0 = the DTB's physical address, x1..x3 = 0.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from emu.arm.asm import assemble
from emu.errors import EmuError, ImageError, unreadable
from emu.kvm.vm import LOAD_ADDR, RAM_BASE

ASSEMBLY_SUFFIXES = (".s", ".asm")
FORMATS = ("auto", "asm", "elf", "image", "flat")

ELF_MAGIC = b"\x7fELF"
# arm64 Image header (Documentation/arm64/booting.rst): magic "ARM\x64" at byte 56.
IMAGE_MAGIC = b"ARM\x64"
IMAGE_MAGIC_OFFSET = 56
IMAGE_HEADER_SIZE = 64
# QEMU keeps its boot stub in the first 4 KiB of RAM and moves small text_offsets up 2 MiB.
QEMU_BOOTLOADER_MAX = 0x1000
FLAT_OFFSET = LOAD_ADDR - RAM_BASE
# A file that is not a regular file (a pipe, a device such as /dev/zero) has no size to trust
# and may never end: it is read up to this many bytes.
MAX_STREAM_BYTES = 1 << 30


@dataclass(frozen=True)
class Segment:
    address: int
    data: bytes
    # Bytes after ``data`` that must read as zero (an ELF segment's .bss).
    zero_fill: int = 0

    @property
    def end(self) -> int:
        return self.address + len(self.data) + self.zero_fill


@dataclass(frozen=True)
class Program:
    """What to put in guest RAM and where the boot CPU starts."""

    segments: tuple[Segment, ...]
    entry: int
    kind: str
    name: str = ""

    @property
    def start(self) -> int:
        return min(s.address for s in self.segments)

    @property
    def end(self) -> int:
        return max(s.end for s in self.segments)

    @classmethod
    def flat(cls, data: bytes, address: int = LOAD_ADDR, kind: str = "flat", name: str = "") -> Program:
        return cls((Segment(address, data),), address, kind, name)


def load_program(path: str | Path, assembler: str = "auto", fmt: str = "auto") -> Program:
    """The program in ``path``; every problem is an ``EmuError`` naming the file."""
    path = Path(path)
    data = read_input(path)
    if fmt == "auto":
        fmt = detect_format(path, data)
    if fmt == "asm":
        return _assembly(path, data, assembler)
    if not data:
        raise ImageError(f"{path}: empty image")
    if fmt == "elf":
        return _elf(path, data)
    if fmt == "image":
        return _linux_image(path, data)
    if fmt == "flat":
        return Program.flat(data, name=str(path))
    raise ValueError(f"unknown format {fmt!r}")


def read_input(path: str | Path, what: str = "") -> bytes:
    """The bytes of a program, initrd or DTB file; ``what`` (e.g. ``--initrd``) prefixes errors.

    A pipe or a device is read up to ``MAX_STREAM_BYTES``: /dev/zero would otherwise fill
    the host's memory.
    """
    name = f"{what} {path}" if what else str(path)
    try:
        with open(path, "rb") as src:
            if stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                return src.read()
            data = src.read(MAX_STREAM_BYTES + 1)
    except OSError as err:
        raise unreadable(name, err) from None
    if len(data) > MAX_STREAM_BYTES:
        raise ImageError(f"{name}: not a regular file, and longer than {MAX_STREAM_BYTES >> 20} MiB")
    return data


def detect_format(path: Path, data: bytes) -> str:
    """``elf``, ``image``, ``asm`` or ``flat``: magic numbers first, then text, else flat."""
    if data.startswith(ELF_MAGIC):
        return "elf"
    if data[IMAGE_MAGIC_OFFSET : IMAGE_MAGIC_OFFSET + 4] == IMAGE_MAGIC:
        return "image"
    if path.suffix.lower() in ASSEMBLY_SUFFIXES or (data and _is_text(data)):
        return "asm"
    return "flat"


# Control characters text files carry; any other byte below 0x20 marks binary data.
_TEXT_CONTROLS = frozenset(b"\t\n\r\f\v")


def _is_text(data: bytes) -> bool:
    """UTF-8 with no control characters but whitespace: what an editor writes."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not any(b < 0x20 and b not in _TEXT_CONTROLS for b in data) and 0x7F not in data


def _assembly(path: Path, data: bytes, assembler: str) -> Program:
    try:
        source = data.decode()
    except UnicodeDecodeError:
        raise ImageError(f"{path}: not UTF-8 text") from None
    try:
        image = assemble(source, LOAD_ADDR, assembler=assembler)
    except EmuError as err:
        raise EmuError(f"{path}: {err}") from None
    return Program.flat(image, kind="asm", name=str(path))


def _elf(path: Path, data: bytes) -> Program:
    import io

    try:
        elf = ELFFile(io.BytesIO(data))
        if elf["e_machine"] != "EM_AARCH64" or elf.elfclass != 64:
            raise ImageError(f"{path}: ELF for {elf['e_machine']} ({elf.elfclass}-bit), not AArch64")
        segments = []
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            offset, filesz = seg["p_offset"], seg["p_filesz"]
            if offset + filesz > len(data):
                raise ImageError(
                    f"{path}: truncated ELF: a PT_LOAD segment needs bytes up to "
                    f"{offset + filesz:#x}, the file has {len(data):#x}"
                )
            segments.append(Segment(seg["p_paddr"], data[offset : offset + filesz], seg["p_memsz"] - filesz))
        entry = elf["e_entry"]
    except ImageError:
        raise
    except (ELFError, struct.error, ValueError, KeyError) as err:
        raise ImageError(f"{path}: bad ELF: {err}") from None
    if not segments:
        raise ImageError(f"{path}: ELF has no loadable segments")
    return Program(tuple(segments), entry, "elf", str(path))


def _linux_image(path: Path, data: bytes) -> Program:
    if len(data) < IMAGE_HEADER_SIZE:
        raise ImageError(f"{path}: too short for a Linux arm64 Image header ({len(data)} bytes)")
    if data[IMAGE_MAGIC_OFFSET : IMAGE_MAGIC_OFFSET + 4] != IMAGE_MAGIC:
        found = data[IMAGE_MAGIC_OFFSET : IMAGE_MAGIC_OFFSET + 4]
        raise ImageError(f"{path}: wrong Image magic {found!r} at byte 56 (expected b'ARM\\x64')")
    text_offset, image_size = struct.unpack_from("<QQ", data, 8)
    if image_size == 0:
        offset = FLAT_OFFSET  # pre-3.17 kernels: text_offset is not valid
    else:
        offset = text_offset + (2 << 20 if text_offset < QEMU_BOOTLOADER_MAX else 0)
    address = RAM_BASE + offset
    zero_fill = max(image_size - len(data), 0)
    return Program((Segment(address, data, zero_fill),), address, "image", str(path))
