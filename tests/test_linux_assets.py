"""The Debian-kernel initramfs builder (firmware/linux/initramfs.py): a valid gzip'd cpio newc
archive with an executable /init, busybox and its applets, device nodes as entries, and the
same bytes for the same input. Runs offline on a stand-in busybox."""

from __future__ import annotations

import gzip
import importlib.util
import stat
import struct
import sys

import pytest

from tests.conftest import FIRMWARE

LINUX = FIRMWARE / "linux"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"linux_{name}", LINUX / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


initramfs = _load("initramfs")


@pytest.fixture
def busybox(tmp_path):
    path = tmp_path / "busybox"
    path.write_bytes(b"\x7fELF" + bytes(range(256)) * 7)  # not 4-aligned: exercises padding
    return path


def entries(data: bytes) -> dict[str, dict]:
    return {e["name"]: e for e in initramfs.parse_newc(gzip.decompress(data))}


def test_archive_is_gzipped_newc_with_trailer(busybox):
    data = initramfs.build_initramfs(busybox)
    assert data[:2] == b"\x1f\x8b"
    raw = gzip.decompress(data)
    assert raw.startswith(b"070701")
    assert len(raw) % 4 == 0
    assert b"TRAILER!!!\0" in raw[-512:]
    # every header is 110 ASCII bytes: magic + 13 eight-digit hex fields
    assert all(c in b"0123456789ABCDEF" for c in raw[6:110])


def test_init_is_an_executable_script_that_reports_and_powers_off(busybox):
    found = entries(initramfs.build_initramfs(busybox))
    init = found["init"]
    assert stat.S_ISREG(init["mode"]) and init["mode"] & 0o111
    script = init["data"].decode()
    assert script.startswith("#!/bin/sh\n")
    for needle in (
        "mount -t proc",
        "mount -t sysfs",
        "^processor /proc/cpuinfo",
        "cat /proc/uptime",
        initramfs.END_MARKER,
        "poweroff -f",
    ):
        assert needle in script


def test_busybox_applets_devices_and_dirs(busybox):
    found = entries(initramfs.build_initramfs(busybox))
    bb = found["bin/busybox"]
    assert bb["data"] == busybox.read_bytes() and bb["mode"] & 0o111
    for name in ("bin/sh", "bin/mount", "bin/cat", "bin/grep", "sbin/poweroff"):
        assert stat.S_ISLNK(found[name]["mode"]), name
    assert found["bin/sh"]["data"] == b"busybox"
    assert found["sbin/poweroff"]["data"] == b"../bin/busybox"
    console, null = found["dev/console"], found["dev/null"]
    assert stat.S_ISCHR(console["mode"]) and (console["rdevmajor"], console["rdevminor"]) == (5, 1)
    assert stat.S_ISCHR(null["mode"]) and (null["rdevmajor"], null["rdevminor"]) == (1, 3)
    for d in ("dev", "proc", "sys", "bin", "sbin"):
        assert stat.S_ISDIR(found[d]["mode"]), d
    # parents come before their children, so the kernel can create each path in order
    names = list(found)
    assert names == sorted(names)
    assert all(e["uid"] == 0 and e["gid"] == 0 and e["mtime"] == 0 for e in found.values())


def test_deterministic(busybox, tmp_path):
    first = initramfs.build_initramfs(busybox)
    copy = tmp_path / "elsewhere"
    copy.write_bytes(busybox.read_bytes())
    assert initramfs.build_initramfs(copy) == first
    assert struct.unpack_from("<I", first, 4)[0] == 0  # gzip header mtime


def test_cli_writes_the_same_bytes(busybox, tmp_path):
    out = tmp_path / "initrd.gz"
    assert initramfs.main([str(busybox), "-o", str(out)]) == 0
    assert out.read_bytes() == initramfs.build_initramfs(busybox)
    assert initramfs.main([str(tmp_path / "missing"), "-o", str(out)]) == 1


def test_fetch_reports_missing_apt(tmp_path, monkeypatch, capsys):
    fetch = _load("fetch")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert fetch.main(["--cache", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "apt is unavailable" in err[0]


def test_fetch_accepts_raw_and_gzipped_images():
    fetch = _load("fetch")
    image = bytes(0x38) + b"ARM\x64" + bytes(0x100)
    assert fetch.arm64_image("vmlinuz", image) == image
    assert fetch.arm64_image("vmlinuz", gzip.compress(image)) == image
    with pytest.raises(fetch.FetchError):
        fetch.arm64_image("vmlinuz", bytes(0x100))
