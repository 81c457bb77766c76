"""Reading guest programs from files: A64 assembly (assembled at the load address) or flat binaries."""

from __future__ import annotations

from pathlib import Path

from emu.asm import assemble
from emu.errors import EmuError, ImageError
from emu.vm import LOAD_ADDR

ASSEMBLY_SUFFIXES = (".s", ".asm")
FLAT_SUFFIXES = (".bin",)


def load_program(path: str | Path, assembler: str = "auto", address: int = LOAD_ADDR) -> bytes:
    """The image bytes for ``path``; every problem is an ``EmuError`` naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory") from None
    except OSError as err:
        raise ImageError(f"{path}: {err.strerror}") from None
    suffix = path.suffix.lower()
    if suffix in ASSEMBLY_SUFFIXES:
        try:
            source = data.decode()
        except UnicodeDecodeError:
            raise ImageError(f"{path}: not UTF-8 text") from None
        try:
            return assemble(source, address, assembler=assembler)
        except EmuError as err:
            raise EmuError(f"{path}: {err}") from None
    if suffix in FLAT_SUFFIXES:
        if not data:
            raise ImageError(f"{path}: empty image")
        return data
    raise ImageError(f"{path}: unknown program type {suffix or '(no suffix)'!r}; "
                     "expected .S assembly or a .bin flat image")
