"""VM snapshots: everything a run depends on, captured so a restored VM continues byte for byte.

``vm.snapshot()`` returns a ``Snapshot``; ``vm.restore(snap)`` puts a VM back into that state;
``vm.save(path)`` / ``Vm.load(path)`` keep one in a file. Each stateful component captures
itself as plain data (``snapshot()`` returns dicts, lists, ints, strings, ``None`` and
``bytes``; ``restore(data)`` reads it back without keeping references into it), and this
module only assembles the parts and moves them to and from a file. Adding state to a
component means adding a key to its ``snapshot()``/``restore()``; bumping ``FORMAT_VERSION``
is needed only when old files can no longer be read.

What a ``Snapshot`` holds:

* ``meta``: format version, emu and Unicorn versions, the VM's shape (profile, vCPU ids,
  RAM size) and configuration (schedule, quantum, budget, seed);
* ``state``: the parts' plain data: every vCPU (its Unicorn context, mp_state, wait,
  timers, ...), the model, the virtual clock, the scheduler with its RNG position, the
  TRNG generator, run limits, the trace so far, devices, and the upper layers'
  ``extensions`` (the VMM's own state);
* ``ram``: guest RAM as an immutable in-memory file (``RamImage``). A VM restored from it
  maps it copy-on-write, so restoring the same snapshot again only drops the pages the
  guest has written since (cost: the pages touched, not the RAM size).

File format (version 1): a zip archive (deflate) with

* ``snapshot.json``: ``{"format": "emu-snapshot", "version": 1, "meta": {...}, "state": {...}}``;
  every ``bytes`` value in ``state`` is replaced by ``{"$blob": NAME}``, a member of the
  archive under ``blobs/`` (Unicorn contexts are ``blobs/vcpuN.context``: the engine's
  CPU state, which only the same Unicorn version can read);
* ``ram.json``: ``{"size": N, "chunks": [[offset, length], ...]}``, the extents of RAM that
  hold data (pages the guest or the loader touched);
* ``ram.bin``: those extents' bytes, concatenated in order (everything else reads as zero).

A file of another format version, or a context from another Unicorn version, is refused
with one ``SnapshotError`` line.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import unicorn

from emu.errors import EmuError

FORMAT = "emu-snapshot"
FORMAT_VERSION = 1
_STATE_MEMBER = "snapshot.json"
_RAM_INDEX = "ram.json"
_RAM_DATA = "ram.bin"
_BLOBS = "blobs/"


class SnapshotError(EmuError):
    """A snapshot that cannot be taken, read or restored into this VM."""


class Snapshottable(Protocol):
    """A component that captures itself as plain data and restores from it."""

    def snapshot(self) -> Any: ...

    def restore(self, data: Any) -> None: ...


def emu_version() -> str:
    try:
        return metadata.version("hvc-emu")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def unicorn_version() -> str:
    return str(unicorn.__version__)


class RamImage:
    """Guest RAM as it was at a snapshot: an in-memory file that is never written again.

    ``map_into(address, size)`` makes RAM at ``address`` a private (copy-on-write)
    mapping of it; ``reset(address, size)`` drops the pages written since, so they read
    the snapshot's contents again.
    """

    def __init__(self, size: int, fd: int) -> None:
        self.size = size
        self._fd = fd
        self._view: mmap.mmap | None = None

    @classmethod
    def capture(cls, ram: mmap.mmap, address: int, base: RamImage | None = None) -> RamImage:
        """Copy RAM (mapped at host ``address``) into a new in-memory file.

        Only pages that can hold data are read: with ``base`` (the image RAM is a
        copy-on-write mapping of), its data extents are copied file to file and the pages
        written since are added; without, the pages the process ever touched (pages never
        touched read as zero and are left out, so a snapshot costs what the guest used).
        """
        size = len(ram)
        view = memoryview(ram)
        fd = _memory_file(size)
        if base is not None:
            for offset, length in base.extents():
                _copy_range(base.fileno(), fd, offset, length)
            pages = written_pages(address, size)
        else:
            pages = touched_pages(address, size)
        for offset, length in _runs(pages):
            os.pwrite(fd, view[offset : offset + length], offset)
        view.release()
        return cls(size, fd)

    @classmethod
    def from_extents(cls, size: int, extents: list[tuple[int, bytes]]) -> RamImage:
        fd = _memory_file(size)
        for offset, data in extents:
            os.pwrite(fd, data, offset)
        return cls(size, fd)

    def fileno(self) -> int:
        return self._fd

    def read(self) -> mmap.mmap:
        """A new read-only view of the whole image."""
        return mmap.mmap(self._fd, self.size, prot=mmap.PROT_READ)

    def view(self) -> mmap.mmap:
        """A read-only view of the whole image, kept for reuse."""
        if self._view is None:
            self._view = self.read()
        return self._view

    def extents(self) -> list[tuple[int, int]]:
        """(offset, length) of the parts of the file that hold data (the rest reads as zero)."""
        extents, offset = [], 0
        while offset < self.size:
            try:
                start = os.lseek(self._fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data past offset
                break
            end = min(os.lseek(self._fd, start, os.SEEK_HOLE), self.size)
            extents.append((start, end - start))
            offset = end
        return extents

    def close(self) -> None:
        if self._view is not None:
            self._view.close()
            self._view = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    while length > 0:
        done = os.copy_file_range(src, dst, length, offset, offset)
        if done <= 0:
            raise SnapshotError("cannot copy snapshot RAM")
        offset += done
        length -= done


def _runs(pages: list[int]) -> list[tuple[int, int]]:
    """Page offsets (ascending) as (offset, length) runs of adjacent pages."""
    runs: list[tuple[int, int]] = []
    for offset in pages:
        if runs and runs[-1][0] + runs[-1][1] == offset:
            runs[-1] = (runs[-1][0], runs[-1][1] + PAGE)
        else:
            runs.append((offset, PAGE))
    return runs


@dataclass
class Snapshot:
    """One VM's complete state at a point between runs (see the module documentation)."""

    meta: dict[str, Any]
    state: dict[str, Any]
    ram: RamImage
    # Extra plain data the taker attaches (e.g. a test's label); saved with the rest.
    notes: dict[str, Any] = field(default_factory=dict)

    # -- file ------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the snapshot to ``path`` (the zip container described above)."""
        blobs: dict[str, bytes] = {}
        state = _extract_blobs(self.state, blobs, "state")
        document = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "meta": self.meta,
            "notes": self.notes,
            "state": state,
        }
        try:
            text = json.dumps(document, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise SnapshotError(
                f"cannot write snapshot {path}: its state is not plain data ({err})"
            ) from None
        archive: zipfile.ZipFile | None = None
        try:
            with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
                archive.writestr(_member(_STATE_MEMBER), text)
                for name, data in blobs.items():
                    archive.writestr(_member(_BLOBS + name), data)
                extents = self.ram.extents()
                archive.writestr(_member(_RAM_INDEX), json.dumps({"size": self.ram.size, "chunks": extents}))
                with self.ram.read() as ram, archive.open(_member(_RAM_DATA), "w", force_zip64=True) as out:
                    for offset, length in extents:
                        out.write(ram[offset : offset + length])
        except BaseException as err:
            # Half a snapshot would only be refused later as damaged: leave none once the
            # file is ours (a device such as /dev/full is not ours to remove).
            if archive is not None:
                with contextlib.suppress(OSError):
                    if stat.S_ISREG(os.stat(path).st_mode):
                        os.unlink(path)
            if isinstance(err, OSError):
                raise SnapshotError(f"cannot write snapshot {path}: {err.strerror or err}") from None
            raise

    @classmethod
    def load(cls, path: str | Path) -> Snapshot:
        """Read a snapshot file; a file of another format version is refused."""
        try:
            archive = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise SnapshotError(f"snapshot {path}: no such file") from None
        except (zipfile.BadZipFile, OSError) as err:
            raise SnapshotError(f"{path}: not an emu snapshot ({err})") from None
        with archive:
            try:
                document = json.loads(archive.read(_STATE_MEMBER))
            except (KeyError, ValueError, zipfile.BadZipFile, zlib.error, EOFError) as err:
                raise SnapshotError(f"{path}: not an emu snapshot ({err})") from None
            if not isinstance(document, dict) or document.get("format") != FORMAT:
                raise SnapshotError(f"{path}: not an emu snapshot")
            version = document.get("version")
            if version != FORMAT_VERSION:
                meta = document.get("meta") or {}
                raise SnapshotError(
                    f"{path}: snapshot format version {version} (written by emu {meta.get('emu', '?')}); "
                    f"this emu {emu_version()} reads only version {FORMAT_VERSION}"
                )
            with damaged(path):
                state = _insert_blobs(document["state"], lambda name: archive.read(_BLOBS + name))
                index = json.loads(archive.read(_RAM_INDEX))
                data = archive.read(_RAM_DATA)
        with damaged(path):
            extents, position = [], 0
            for offset, length in index["chunks"]:
                extents.append((offset, data[position : position + length]))
                position += length
            ram = RamImage.from_extents(index["size"], extents)
            return cls(document["meta"], state, ram, document.get("notes") or {})


# What reading or restoring state of the wrong shape raises: a damaged or hand-edited file.
_MALFORMED = (
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    AttributeError,
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
)


@contextlib.contextmanager
def damaged(path: str | Path) -> Iterator[None]:
    """Reading or restoring the snapshot in ``path``: state of the wrong shape is a
    ``SnapshotError`` naming the file, not whatever Python error it met first."""
    try:
        yield
    except EmuError:
        raise
    except _MALFORMED as err:
        kind = "zlib" if isinstance(err, zlib.error) else type(err).__name__
        raise SnapshotError(f"{path}: damaged emu snapshot ({kind}: {err})") from err


def _memory_file(size: int) -> int:
    """An in-memory file of ``size`` bytes (``ulimit -f`` bounds these too)."""
    fd = os.memfd_create("emu-ram", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except OSError as err:
        os.close(fd)
        raise SnapshotError(
            f"cannot hold a snapshot of {size >> 20} MiB of RAM in memory: {err.strerror}"
        ) from None
    return fd


def _member(name: str) -> zipfile.ZipInfo:
    """An archive member with a fixed date, so the same state gives the same file."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def _extract_blobs(value: Any, blobs: dict[str, bytes], path: str) -> Any:
    """``value`` with every bytes leaf replaced by a reference into ``blobs``."""
    if isinstance(value, bytes | bytearray):
        name = path.replace("/", "_")
        blobs[name] = bytes(value)
        return {"$blob": name}
    if isinstance(value, dict):
        return {k: _extract_blobs(v, blobs, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_extract_blobs(v, blobs, f"{path}.{i}") for i, v in enumerate(value)]
    return value


def _insert_blobs(value: Any, read: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$blob"}:
            return read(value["$blob"])
        return {k: _insert_blobs(v, read) for k, v in value.items()}
    if isinstance(value, list):
        return [_insert_blobs(v, read) for v in value]
    return value


def check_compatible(meta: dict[str, Any]) -> None:
    """Refuse a snapshot whose vCPU contexts this Unicorn cannot read."""
    theirs = meta.get("unicorn")
    if theirs != unicorn_version():
        raise SnapshotError(
            f"snapshot taken with Unicorn {theirs}; its vCPU contexts cannot be restored by "
            f"Unicorn {unicorn_version()}"
        )


# -- mapping RAM onto an image -----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_MAP_PRIVATE = 0x02
_MAP_FIXED = 0x10
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_image(address: int, size: int, image: RamImage) -> None:
    """Replace the host pages at ``address`` with a private (copy-on-write) mapping of ``image``.

    The address does not change, so every Unicorn instance that maps guest RAM there
    (``mem_map_ptr``) keeps working; what it reads is now the image.
    """
    if image.size != size:
        raise SnapshotError(f"snapshot RAM is {image.size:#x} bytes, this VM has {size:#x}")
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    got = _libc.mmap(address, size, prot, _MAP_PRIVATE | _MAP_FIXED, image.fileno(), 0)
    if got == _MAP_FAILED or got != address:
        err = ctypes.get_errno()
        raise SnapshotError(f"cannot map snapshot RAM: {os.strerror(err)}")


# -- which pages changed since RAM was last reset to its image ------------------------------------

PAGE = 0x1000
# /proc/self/pagemap: one u64 per page; in its top byte, bit 7 = present, bit 6 = swapped,
# bit 5 = file page or shared anonymous. A private page (present, not file) or a swapped one
# is a copy the process wrote: in RAM mapped from an image, a page written since.
_WRITTEN = bytes(1 if (b & 0x40) or (b & 0xA0) == 0x80 else 0 for b in range(256))
# Present or swapped: a page the process has touched (of anonymous RAM, the only ones with data).
_TOUCHED = bytes(1 if b & 0xC0 else 0 for b in range(256))


def written_pages(address: int, size: int) -> list[int]:
    """Offsets (from ``address``) of the pages of a mapping of a ``RamImage`` written since
    it was mapped or last reset."""
    return _pages(address, size, _WRITTEN)


def touched_pages(address: int, size: int) -> list[int]:
    """Offsets of the pages of an anonymous mapping that were ever touched."""
    return _pages(address, size, _TOUCHED)


def _pages(address: int, size: int, table: bytes) -> list[int]:
    pages = size // PAGE
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
            pagemap.seek(address // PAGE * 8)
            entries = pagemap.read(pages * 8)
    except OSError:
        entries = b""
    if len(entries) != pages * 8:
        return list(range(0, size, PAGE))  # cannot tell: every page may hold data
    flags = entries[7::8].translate(table)
    found, index = [], flags.find(1)
    while index >= 0:
        found.append(index * PAGE)
        index = flags.find(1, index + 1)
    return found


def changed_pages(ram: mmap.mmap, image: RamImage, address: int) -> list[int]:
    """Offsets of the pages of ``ram`` (a mapping of ``image`` at ``address``) whose contents
    differ from the image: what a reset to the image changes."""
    view = image.view()
    return [
        offset
        for offset in written_pages(address, len(ram))
        if ram[offset : offset + PAGE] != view[offset : offset + PAGE]
    ]
