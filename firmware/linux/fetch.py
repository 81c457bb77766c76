#!/usr/bin/env python3
"""Fetch the assets for booting an unmodified Debian arm64 kernel, with apt, into a cache.

    python3 firmware/linux/fetch.py [--cache DIR] [--series 6.1] [--refresh]

Into the cache directory (``$EMU_LINUX_CACHE``, else ``firmware/linux/.cache/``) it writes:

- ``Image``: ``boot/vmlinuz-*`` from the newest ``linux-image-<abi>-arm64-unsigned`` the
  archive offers for the series (a raw arm64 Image; decompressed if it is gzip'd);
- ``busybox``: ``bin/busybox`` from ``busybox-static:arm64``;
- ``initrd.gz``: the initramfs around that busybox (``initramfs.py`` beside this file);
- ``manifest.json``: the package names and versions and each file's SHA-256.

The packages are only downloaded (``apt-get download``) and unpacked in Python from
``dpkg-deb --fsys-tarfile``, never installed. When the arm64 package lists are missing it adds
the architecture and runs ``apt-get update`` (root only). A complete cache is left alone
(``--refresh`` looks for newer packages); the initramfs is rebuilt only when it would change.
Python standard library only, so it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import initramfs  # noqa: E402  (beside this file)

DEFAULT_CACHE = HERE / ".cache"
CACHE_ENV = "EMU_LINUX_CACHE"
BUSYBOX_PKG = "busybox-static"
ARCH = "arm64"
IMAGE_MAGIC = b"ARM\x64"  # arm64 Image header, at offset 0x38
IMAGE_MAGIC_OFFSET = 0x38
FILES = ("Image", "busybox", "initrd.gz")
MANIFEST = "manifest.json"


class FetchError(Exception):
    """Stops the fetch with a one-line ``error:`` message."""


def step(msg: str) -> None:
    print(f"fetch: {msg}", flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(cmd: list[str], what: str) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise FetchError(f"{cmd[0]} not found: apt is unavailable (a Debian host is needed)") from None
    if p.returncode != 0:
        lines = [ln for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
        detail = lines[-1].strip() if lines else f"exit status {p.returncode}"
        raise FetchError(f"{what} failed: {detail}")
    return p.stdout


def require_apt() -> None:
    missing = [t for t in ("apt-get", "apt-cache", "dpkg", "dpkg-deb") if shutil.which(t) is None]
    if missing:
        raise FetchError(f"{', '.join(missing)} not found: apt is unavailable (a Debian host is needed)")


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# --- the cache ------------------------------------------------------------------------------


def cached_manifest(cache: Path) -> dict | None:
    """The manifest when every file it lists is present with its recorded hash."""
    try:
        manifest = json.loads((cache / MANIFEST).read_text())
        files = manifest["files"]
        if all(name in files and sha256(cache / name) == files[name] for name in FILES[:2]):
            return manifest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)


# --- apt --------------------------------------------------------------------------------------


def ensure_arm64_lists(updated: list[bool]) -> None:
    foreign = run(["dpkg", "--print-foreign-architectures"], "dpkg --print-foreign-architectures")
    if ARCH in foreign.split():
        return
    if not is_root():
        raise FetchError(
            f"the {ARCH} architecture is not enabled and enabling it needs root "
            f"(dpkg --add-architecture {ARCH} && apt-get update)"
        )
    step(f"enabling the {ARCH} architecture (dpkg --add-architecture {ARCH})")
    run(["dpkg", "--add-architecture", ARCH], f"dpkg --add-architecture {ARCH}")
    apt_update(updated)


def apt_update(updated: list[bool]) -> None:
    if updated[0]:
        return
    if not is_root():
        raise FetchError("the package lists lack the packages and apt-get update needs root")
    step("updating the package lists (apt-get update)")
    run(["apt-get", "update", "-qq"], "apt-get update")
    updated[0] = True


def kernel_packages(series: str) -> list[str]:
    """``linux-image-<abi>-arm64-unsigned`` names of the series, oldest first."""
    pattern = re.compile(rf"^linux-image-({re.escape(series)}\.\d+-\d+)-{ARCH}-unsigned$")
    out = run(
        [
            "apt-cache",
            "search",
            "--names-only",
            rf"^linux-image-{re.escape(series)}\.[0-9]+-[0-9]+-{ARCH}-unsigned$",
        ],
        "apt-cache search",
    )
    found = {}
    for line in out.splitlines():
        m = pattern.match(line.split(" ", 1)[0])
        if m:
            found[m.group(0)] = tuple(int(x) for x in re.findall(r"\d+", m.group(1)))
    return sorted(found, key=found.get)


def candidate_version(pkg: str) -> str | None:
    out = run(["apt-cache", "policy", f"{pkg}:{ARCH}"], f"apt-cache policy {pkg}:{ARCH}")
    m = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M)
    return None if m is None or m.group(1) == "(none)" else m.group(1)


def resolve(series: str, updated: list[bool]) -> tuple[str, str, str]:
    """(kernel package, its version, busybox version); one apt-get update if lists lack them."""
    for attempt in range(2):
        kernels = kernel_packages(series)
        bb_version = candidate_version(BUSYBOX_PKG)
        kernel = kernels[-1] if kernels else None
        k_version = candidate_version(kernel) if kernel else None
        if k_version and bb_version:
            return kernel, k_version, bb_version
        if attempt == 0 and not updated[0] and is_root():
            apt_update(updated)
            continue
        break
    if not k_version:
        raise FetchError(f"no linux-image-{series}.*-{ARCH}-unsigned package in the apt lists")
    raise FetchError(f"no {BUSYBOX_PKG}:{ARCH} package in the apt lists")


def download(pkg: str, version: str, into: Path) -> Path:
    run(
        ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{pkg}:{ARCH}={version}"],
        f"apt-get download {pkg}:{ARCH}",
    )
    debs = sorted(into.glob(f"{pkg}_*_{ARCH}.deb"))
    if not debs:
        raise FetchError(f"apt-get download {pkg}:{ARCH} left no .deb")
    return debs[-1]


def extract_member(deb: Path, pattern: str) -> tuple[str, bytes]:
    """The one regular file in the .deb's data whose path matches ``pattern``."""
    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    found = None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.isfile() and re.fullmatch(pattern, member.name.lstrip("./")):
                    found = (member.name.lstrip("./"), tar.extractfile(member).read())
                    break
    except tarfile.TarError as exc:
        raise FetchError(f"{deb.name}: unreadable data archive ({exc})") from exc
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()
    if found is None:
        raise FetchError(f"{deb.name}: no file matching {pattern}")
    return found


def arm64_image(name: str, data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        step(f"{name} is gzip-compressed: decompressing")
        data = gzip.decompress(data)
    if data[IMAGE_MAGIC_OFFSET : IMAGE_MAGIC_OFFSET + 4] != IMAGE_MAGIC:
        raise FetchError(f"{name} is not an arm64 Image (no 'ARM\\x64' magic at 0x38)")
    return data


# --- main -------------------------------------------------------------------------------------


def fetch(cache: Path, series: str, refresh: bool) -> int:
    cache.mkdir(parents=True, exist_ok=True)
    manifest = cached_manifest(cache)
    if manifest and not refresh:
        step(
            f"cache complete in {cache}: {manifest['kernel']['package']} "
            f"{manifest['kernel']['version']}, {BUSYBOX_PKG} {manifest['busybox']['version']}"
        )
    else:
        require_apt()
        updated = [False]
        ensure_arm64_lists(updated)
        kernel, k_version, bb_version = resolve(series, updated)
        step(f"newest {series} kernel: {kernel} {k_version}; {BUSYBOX_PKG} {bb_version}")
        if (
            manifest
            and manifest["kernel"]["version"] == k_version
            and manifest["kernel"]["package"] == kernel
            and manifest["busybox"]["version"] == bb_version
        ):
            step("cache already holds these versions")
        else:
            manifest = download_and_extract(cache, kernel, k_version, bb_version)
    build_initrd(cache, manifest)
    return 0


def download_and_extract(cache: Path, kernel: str, k_version: str, bb_version: str) -> dict:
    with tempfile.TemporaryDirectory(dir=cache, prefix="debs.") as tmp:
        tmpdir = Path(tmp)
        tmpdir.chmod(0o755)
        cwd = os.getcwd()
        os.chdir(tmpdir)
        try:
            step(f"downloading {kernel}:{ARCH} {k_version}")
            k_deb = download(kernel, k_version, tmpdir)
            step(f"downloading {BUSYBOX_PKG}:{ARCH} {bb_version}")
            bb_deb = download(BUSYBOX_PKG, bb_version, tmpdir)
        finally:
            os.chdir(cwd)
        step(f"extracting boot/vmlinuz-* from {k_deb.name}")
        name, image = extract_member(k_deb, r"boot/vmlinuz-.*")
        image = arm64_image(name, image)
        write_atomic(cache / "Image", image)
        step(f"extracting bin/busybox from {bb_deb.name}")
        _, busybox = extract_member(bb_deb, r"bin/busybox")
        write_atomic(cache / "busybox", busybox, 0o755)
    manifest = {
        "arch": ARCH,
        "kernel": {"package": kernel, "version": k_version, "file": name},
        "busybox": {"package": BUSYBOX_PKG, "version": bb_version},
        "files": {"Image": sha256(cache / "Image"), "busybox": sha256(cache / "busybox")},
    }
    write_atomic(cache / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    step(f"wrote {cache / 'Image'} ({len(image)} bytes) and {cache / 'busybox'}")
    return manifest


def build_initrd(cache: Path, manifest: dict) -> None:
    initrd = initramfs.build_initramfs(cache / "busybox")
    path = cache / "initrd.gz"
    if path.is_file() and path.read_bytes() == initrd:
        step(f"initramfs up to date: {path}")
        return
    write_atomic(path, initrd)
    manifest["files"]["initrd.gz"] = hashlib.sha256(initrd).hexdigest()
    write_atomic(cache / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    step(f"built initramfs {path} ({len(initrd)} bytes)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fetch Debian's arm64 kernel and a static busybox.")
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE),
        help=f"cache directory (default ${CACHE_ENV}, else {DEFAULT_CACHE})",
    )
    ap.add_argument("--series", default="6.1", help="kernel series (default 6.1)")
    ap.add_argument(
        "--refresh", action="store_true", help="ask apt for newer packages even when the cache is complete"
    )
    args = ap.parse_args(argv)
    try:
        return fetch(args.cache.resolve(), args.series, args.refresh)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
