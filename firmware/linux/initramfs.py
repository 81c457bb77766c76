"""Build the initramfs for booting Debian's arm64 kernel: a gzip-compressed cpio "newc"
archive, written in pure Python (no cpio binary, no mknod on the host).

Contents: a static busybox at /bin/busybox, the applet symlinks /init uses, /dev/console
(char 5,1) and /dev/null (char 1,3) as archive entries, empty /proc /sys /dev /tmp /root
directories, and /init, a shell script that mounts proc and sysfs, prints /proc/cpuinfo's
``processor`` lines and /proc/uptime, prints END_MARKER and powers off (PSCI SYSTEM_OFF).

The output is deterministic: entries sorted by path, mtime 0, uid/gid 0, inode numbers in
that order, gzip header mtime 0, so the same busybox gives a byte-identical archive.

    python3 firmware/linux/initramfs.py BUSYBOX -o initrd.gz
"""

from __future__ import annotations

import argparse
import gzip
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

# The line /init prints last, before it powers the machine off.
END_MARKER = "emu-linux-init: done, powering off"

INIT_SCRIPT = f"""#!/bin/sh
# PID 1 of the emu/QEMU reference boot: report what the kernel brought up, then power off.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "emu-linux-init: started"
grep ^processor /proc/cpuinfo
echo "emu-linux-init: uptime $(cat /proc/uptime)"
echo "{END_MARKER}"
poweroff -f
"""

# Applets the script runs, plus a few that help when poking at a boot by hand.
APPLETS = {
    "bin": ["cat", "dmesg", "echo", "grep", "ls", "mount", "sh", "sleep", "uname"],
    "sbin": ["poweroff", "reboot"],
}

DIRS = ["bin", "dev", "proc", "root", "sbin", "sys", "tmp"]

# (path, major, minor): character devices the kernel and the shell open.
CHAR_DEVICES = [("dev/console", 5, 1), ("dev/null", 1, 3)]

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    path: str  # without a leading slash
    mode: int  # file type and permission bits
    data: bytes = b""  # file contents, or the symlink's target
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _newc_record(ino: int, entry: Entry) -> bytes:
    name = entry.path.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = [
        ino,
        entry.mode,
        0,
        0,
        nlink,
        0,
        len(entry.data),
        0,
        0,
        entry.rdev[0],
        entry.rdev[1],
        len(name),
        0,
    ]
    header = NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
    record = header + name
    record += _pad4(len(record))
    return record + entry.data + _pad4(len(entry.data))


def cpio_newc(entries: list[Entry]) -> bytes:
    """An uncompressed newc archive of ``entries`` (in the order given) and the trailer."""
    out = bytearray()
    for ino, entry in enumerate(entries, start=1):
        out += _newc_record(ino, entry)
    out += _newc_record(0, Entry(TRAILER, 0))
    out += _pad4(len(out))
    return bytes(out)


def initramfs_entries(busybox: bytes, init: str = INIT_SCRIPT) -> list[Entry]:
    """The archive's entries, sorted by path."""
    entries = [Entry(d, stat.S_IFDIR | 0o755) for d in DIRS]
    entries.append(Entry("bin/busybox", stat.S_IFREG | 0o755, busybox))
    for folder, names in APPLETS.items():
        target = b"busybox" if folder == "bin" else b"../bin/busybox"
        entries += [Entry(f"{folder}/{n}", stat.S_IFLNK | 0o777, target) for n in names]
    entries += [Entry(p, stat.S_IFCHR | 0o600, rdev=(ma, mi)) for p, ma, mi in CHAR_DEVICES]
    entries.append(Entry("init", stat.S_IFREG | 0o755, init.encode()))
    return sorted(entries, key=lambda e: e.path)


def build_initramfs(busybox: Path, init: str = INIT_SCRIPT) -> bytes:
    """The gzip-compressed newc initramfs around the static ``busybox`` binary."""
    archive = cpio_newc(initramfs_entries(Path(busybox).read_bytes(), init))
    return gzip.compress(archive, compresslevel=9, mtime=0)


def parse_newc(archive: bytes) -> list[dict]:
    """Read an uncompressed newc archive back: one dict per entry (trailer excluded)."""
    names = [
        "ino",
        "mode",
        "uid",
        "gid",
        "nlink",
        "mtime",
        "filesize",
        "devmajor",
        "devminor",
        "rdevmajor",
        "rdevminor",
        "namesize",
        "check",
    ]
    out, pos = [], 0
    while True:
        if archive[pos : pos + 6] != NEWC_MAGIC:
            raise ValueError(f"bad newc magic at offset {pos:#x}")
        hdr = archive[pos + 6 : pos + 110]
        rec = {k: int(hdr[i * 8 : i * 8 + 8], 16) for i, k in enumerate(names)}
        pos += 110
        name = archive[pos : pos + rec["namesize"]]
        if not name.endswith(b"\0"):
            raise ValueError(f"name at {pos:#x} is not NUL-terminated")
        rec["name"] = name[:-1].decode()
        pos += rec["namesize"]
        pos += -pos % 4
        rec["data"] = archive[pos : pos + rec["filesize"]]
        pos += rec["filesize"]
        pos += -pos % 4
        if rec["name"] == TRAILER:
            return out
        out.append(rec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the busybox initramfs (gzip'd cpio newc).")
    ap.add_argument("busybox", type=Path, help="a static arm64 busybox binary")
    ap.add_argument("-o", "--output", type=Path, required=True, help="where to write initrd.gz")
    args = ap.parse_args(argv)
    if not args.busybox.is_file():
        print(f"error: {args.busybox}: no such file", file=sys.stderr)
        return 1
    data = build_initramfs(args.busybox)
    args.output.write_bytes(data)
    print(f"initramfs: {args.output} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
