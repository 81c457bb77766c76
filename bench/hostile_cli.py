"""Hostile command lines: bad input and Ctrl-C against the ``emu`` command, each case its own process.

Part 1 gives every subcommand what a careless user or an attacker would: missing, unreadable,
empty, binary, endless and huge program files, truncated ELFs and Images, malformed assembly,
out-of-range numbers, unknown capabilities, filters and registers, garbage device trees and
initrds, ``--vmm`` files that raise, exit, sleep or return the wrong thing, damaged snapshots,
unwritable outputs, an unreachable Dask scheduler and a stdout nobody reads. Each case must end
within its cap with the status the case table records for that kind of mistake (1 for an error
in the input, 2 for a bad flag), exactly one ``emu: error: ...`` line on stderr (nothing where
the table says so: a guest fault, a timeout, or a stdout nobody reads, where emu stops quietly
with status 1), no traceback or internal error, no process of its group left running (an
assembler, a campaign worker) and no output file it promised only on success.

Part 2 interrupts every kind of guest loop (a tight branch, PL011 and GIC MMIO polling, WFI,
an exception storm, a ``--vmm`` handler that sleeps or spins, eight spinning vCPUs, a long
assembly, ``explore`` and ``fuzz --jobs 2`` mid-campaign, ``--gdb`` waiting for its client):
each starts with ``--timeout 60``, gets SIGINT 1.5 s later (sent to its process group, as a
terminal's Ctrl-C is, or to emu alone, as ``kill -INT`` is) and must exit within 1 s with
status 130, the one line ``emu: interrupted`` and nothing of its group left alive. Then the
same loops under ``--timeout 1`` must stop within 1 s of the deadline with status 5 (6 for the
guest that waits with nothing to wake it). These cases run at most two at a time (a campaign
with ``--jobs 2`` alone), so a 2-core host does not distort their timing, and each kind
``--repeat`` times.

Every case is a real ``python -m emu`` in a temporary directory and a process group of its
own, killed with its group at its wall-clock cap (after SIGABRT, so the Python stacks say where
it hung). A case may carry a ``known`` pattern: problems already understood and left unfixed
are reported as KNOWN, not counted. Prints one line per failing case, a summary and the stop
latencies per loop kind; exits 1 if any case failed.

    python bench/hostile_cli.py [--jobs 2] [--repeat 3] [--only SUBSTRING] [--list] [--json]
                                [--python PATH]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"

# Besides its verdict a case's stderr may hold progress bars and the gdb stub's address.
PROGRESS = r"(?:exploring|fuzzing [\w.-]+) \[[#.]*\] \d+/\d+(?!\d)"
NOISE = re.compile(rf"^(?:{PROGRESS}|emu: gdb stub listening on \S+)$")
GLUED = re.compile(rf"^{PROGRESS}(?=\S)")
FORBIDDEN = ("Traceback", "internal error", "Exception ignored")
# Text output starts with this banner, printed just before the guest's first instruction.
BANNER = r"(?m)^emu: \S.* on [\w.-]+ \("
# Seconds a case's group may take to die after its leader exits (an exiting worker's last breath).
GRACE_S = 1.0
# How long after its readiness line a loop keeps running before the signal.
SETTLE_S = 0.3

# A file in the case's directory: text, bytes, or made by a function of (path, python).
Content = str | bytes | Callable[[Path, str], None]


@dataclass(frozen=True)
class Case:
    """One hostile command line and what emu must do with it.

    ``argv`` follows ``emu`` and runs in a fresh directory holding ``files``; ``{fw}`` is the
    firmware directory and ``{busy_port}`` a TCP port something already listens on.
    """

    name: str
    argv: tuple[str, ...]
    status: int
    files: Mapping[str, Content] = field(default_factory=dict)
    # stderr: "error" (one ``emu: error:`` line), "interrupted", "quiet" (nothing).
    expect: str = "error"
    fragment: str = ""  # the error line must contain it
    stdout_has: str = ""
    cap: float = 30.0
    absent: tuple[str, ...] = ()  # files that must not exist afterwards
    stdout: str = "pipe"  # "closed": a pipe whose reader has gone (``| head -c0``)
    wrap: tuple[str, ...] = ()  # argv prefix (prlimit, setpriv)
    env: Mapping[str, str] = field(default_factory=dict)
    # Part 2: the loop kind, when to send SIGINT and to whom, and the stop it must make.
    kind: str = ""
    interrupt_after: float | None = None
    signal_to: str = "group"
    ready: str | None = None  # regex on stdout or stderr: the loop is running
    within: float | None = None  # seconds from the signal (or the deadline) to the exit
    deadline: float | None = None  # the --timeout under test, counted from ``ready``
    requires: Callable[[], str | None] | None = None  # a reason to skip, or None
    # A regex matching every problem already understood (and left unfixed): reported as
    # "known", not counted as a failure; any other problem still fails the case.
    known: str = ""
    cores: int = 1  # busy while it runs (a campaign with --jobs 2: 2); a timed case of 2 runs alone

    @property
    def timed(self) -> bool:
        """A part-2 case: run at most two at a time, so the host's load does not time it."""
        return bool(self.kind)


@dataclass
class Result:
    case: Case
    problems: list[str]
    status: int | None = None
    took: float = 0.0
    latency: float | None = None  # signal to exit, or deadline to exit
    skipped: str = ""
    stderr: list[str] = field(default_factory=list)  # its verdict lines

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "skip"
        if self.problems:
            known = self.case.known and all(re.search(self.case.known, p) for p in self.problems)
            return "known" if known else "fail"
        return "pass"


# -- guest programs -------------------------------------------------------------------------

HALT = "ldr x0, =0x84000008\nhvc #0\n"  # PSCI SYSTEM_OFF
# The same as machine code, for binary formats.
HALT_CODE = struct.pack("<3I", 0xD2800100, 0xF2B08000, 0xD4000002)
FORWARD_ONCE = "ldr x0, =0xc6000040\nhvc #0x1\n" + HALT
VECTORS = "\n    .balign 0x800\nvectors:\n    .rept 16\n    b sync\n    .balign 0x80\n    .endr\n"

LOOPS: dict[str, str] = {
    "tight": "spin: b spin\n",
    "pl011-poll": "ldr x1, =0x09000000\npoll: ldr w2, [x1, #0x18]\nb poll\n",
    "gic-poll": "ldr x1, =0x08000000\npoll: ldr w2, [x1, #0x4]\nb poll\n",  # GICD_TYPER
    # The virtual timer's deadline passed and DAIF masks it: every WFI returns at once.
    "wfi-pending": "mov x0, #1\nmsr cntv_cval_el0, xzr\nmsr cntv_ctl_el0, x0\nloop: wfi\nb loop\n",
    # A timer one virtual second ahead, re-armed after each wake-up: virtual time leaps.
    "wfi-sleep": (
        "mov x0, #1\nmsr cntv_ctl_el0, x0\nldr x2, =1000000000\n"
        "loop: mrs x1, cntvct_el0\nadd x1, x1, x2\nmsr cntv_cval_el0, x1\nwfi\nb loop\n"
    ),
    "wfi-idle": "loop: wfi\nb loop\n",
    # Vectors installed, then an undefined instruction whose vector branches back to it.
    "exception-storm": "adr x1, vectors\nmsr vbar_el1, x1\nsync:\n.inst 0x00000000\n" + VECTORS,
    "hypercall-loop": "loop: ldr x0, =0xc6000040\nhvc #0x1\nb loop\n",
    "smp8-spin": (
        "mov x19, #1\nnext: ldr x0, =0xc4000003\nmov x1, x19\nadr x2, spin\nmov x3, #0\nhvc #0\n"
        "add x19, x19, #1\ncmp x19, #8\nb.ne next\nspin: b spin\n"
    ),
    # About 5 s of keystone for 56 MB of data; 4 s of GNU as for 3 million instructions.
    "long-asm": ".rept 1000000\n.quad 1,2,3,4,5,6,7\n.endr\n" + HALT,
    "long-asm-gnu": ".rept 1000\n.rept 1000\nadd x0, x0, #1\nsub x1, x1, #1\neor x2, x2, x3\n.endr\n.endr\n"
    + HALT,
}

SLEEPING_VMM = "import time\ndef handle_hypercall(vcpu, exit):\n    time.sleep(100)\n"
SPINNING_VMM = "def handle_hypercall(vcpu, exit):\n    while True:\n        pass\n"


# -- file makers ----------------------------------------------------------------------------


def elf(
    segments: Sequence[tuple[int, bytes, int]] = ((0x4008_0000, HALT_CODE, 0),),
    *,
    entry: int = 0x4008_0000,
    machine: int = 183,  # EM_AARCH64
    elfclass: int = 2,
    p_type: int = 1,  # PT_LOAD
    filesz_extra: int = 0,
    phnum: int | None = None,
    phoff: int = 64,
    cut: int | None = None,
) -> bytes:
    """An ELF64 little-endian executable: one program header per (paddr, data, bss) segment."""
    count = len(segments) if phnum is None else phnum
    ident = b"\x7fELF" + bytes([elfclass, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, entry, phoff, 0, 0, 64, 56, count, 64, 0, 0)
    offset = 64 + 56 * len(segments)
    table, body = b"", b""
    for paddr, data, bss in segments:
        filesz = len(data) + filesz_extra
        table += struct.pack("<IIQQQQQQ", p_type, 5, offset, paddr, paddr, filesz, len(data) + bss, 0x1000)
        body += data
        offset += len(data)
    image = header + table + body
    return image if cut is None else image[:cut]


def arm64_image(*, text_offset: int = 0x80000, image_size: int = 0x1000, magic: bytes = b"ARM\x64") -> bytes:
    """A Linux arm64 Image header (Documentation/arm64/booting.rst) followed by HALT_CODE."""
    header = struct.pack("<IIQQQQQQ4sI", 0x14000010, 0, text_offset, image_size, 0, 0, 0, 0, magic, 0)
    return header + HALT_CODE


def sparse(size: int) -> Callable[[Path, str], None]:
    """A file of ``size`` zero bytes that costs no disk."""

    def make(path: Path, python: str) -> None:
        with open(path, "wb") as out:
            out.truncate(size)

    return make


def symlink(target: str) -> Callable[[Path, str], None]:
    def make(path: Path, python: str) -> None:
        path.symlink_to(target)

    return make


def fifo(path: Path, python: str) -> None:
    os.mkfifo(path)


def directory(path: Path, python: str) -> None:
    path.mkdir()


def unreadable(text: str) -> Callable[[Path, str], None]:
    def make(path: Path, python: str) -> None:
        path.write_text(text)
        path.chmod(0)

    return make


_SNAPSHOTS: dict[str, bytes] = {}
_SNAPSHOT_LOCK = threading.Lock()


def good_snapshot(python: str) -> bytes:
    """A real snapshot (a spinning guest stopped at its budget), taken once per campaign."""
    with _SNAPSHOT_LOCK:
        if python not in _SNAPSHOTS:
            with tempfile.TemporaryDirectory(prefix="emu-hostile-snap-") as tmp:
                (Path(tmp) / "spin.S").write_text(LOOPS["tight"])
                subprocess.run(
                    [python, "-m", "emu", "run", "spin.S", "--max-insns", "1000", "--save", "good.snap"],
                    cwd=tmp,
                    env=_child_env({}),
                    capture_output=True,
                    timeout=60,
                )
                _SNAPSHOTS[python] = (Path(tmp) / "good.snap").read_bytes()
        return _SNAPSHOTS[python]


def snapshot(
    document: Callable[[dict[str, Any]], None] | None = None,
    *,
    drop: tuple[str, ...] = (),
    members: Mapping[str, Callable[[bytes], bytes]] | None = None,
    raw: Callable[[bytes], bytes] | None = None,
) -> Callable[[Path, str], None]:
    """A snapshot file made from a good one: its ``snapshot.json`` edited by ``document``,
    members dropped or rewritten, or the whole file's bytes rewritten by ``raw``."""

    def make(path: Path, python: str) -> None:
        good = good_snapshot(python)
        if raw is not None:
            path.write_bytes(raw(good))
            return
        with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(path, "w") as out:
            for name in src.namelist():
                if name in drop:
                    continue
                data = src.read(name)
                if name == "snapshot.json" and document is not None:
                    doc = json.loads(data)
                    document(doc)
                    data = json.dumps(doc).encode()
                if members and name in members:
                    data = members[name](data)
                out.writestr(name, data)

    return make


def corrupt_member(name: str) -> Callable[[bytes], bytes]:
    """Flip a byte in the middle of a member's compressed data (its CRC no longer matches)."""

    def rewrite(data: bytes) -> bytes:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo(name)
        out = bytearray(data)
        name_len, extra_len = struct.unpack_from("<HH", out, info.header_offset + 26)
        out[info.header_offset + 30 + name_len + extra_len + info.compress_size // 2] ^= 0x55
        return bytes(out)

    return rewrite


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set ``a.b.c`` in a snapshot document."""

    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[key]
        doc[last] = value

    return edit


# -- environment ----------------------------------------------------------------------------


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EMU_DEBUG", "PYTHONPATH")}
    # The installed emu, as a user's shell runs it, not a source tree in the working directory.
    env["PYTHONSAFEPATH"] = "1"
    # A case that hangs is sent SIGABRT at its cap: its Python stacks say where it hung.
    env["PYTHONFAULTHANDLER"] = "1"
    env.update(extra)
    return env


def _no_dac_override() -> tuple[str, ...]:
    """As root a mode-000 file is still readable: drop the capabilities that allow it."""
    if os.geteuid() != 0:
        return ()
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")


def _needs_unprivileged_read() -> str | None:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "running as root without setpriv: a mode-000 file is readable"
    return None


def _needs(tool: str) -> Callable[[], str | None]:
    def check() -> str | None:
        return None if shutil.which(tool) else f"{tool} is not installed"

    return check


def _host_memory_below(size: int) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            with open("/proc/meminfo") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        if int(line.split()[1]) * 1024 < size:
                            return None
                        return f"the host has {int(line.split()[1]) >> 20} GiB available"
        except OSError:
            pass
        return "no /proc/meminfo"

    return check


def _gnu_as() -> str | None:
    return None if shutil.which("aarch64-linux-gnu-as") else "GNU as for aarch64 is not installed"


FSIZE_LIMIT = ("prlimit", "--fsize=1048576", "--")  # 1 MiB: smaller than guest RAM


# -- the cases ------------------------------------------------------------------------------


def _words(argv: str | Sequence[str]) -> tuple[str, ...]:
    """A command line as the table writes it: words split as a shell would, or a list."""
    return tuple(shlex.split(argv)) if isinstance(argv, str) else tuple(argv)


def _err(name: str, argv: str | Sequence[str], status: int, fragment: str = "", **kw: Any) -> Case:
    """A mistake emu must report with ``status`` and one error line containing ``fragment``."""
    return Case(name, _words(argv), status, fragment=fragment, **kw)


def _flag(name: str, argv: str | Sequence[str], fragment: str, **kw: Any) -> Case:
    """A bad flag: status 2 and argparse's one line, against a program that would run."""
    files = {"halt.S": HALT, **kw.pop("files", {})}
    return Case(name, _words(argv), 2, files=files, fragment=fragment, **kw)


def input_cases() -> list[Case]:
    """Part 1: bad input over every subcommand, each with its documented status."""
    halt = {"halt.S": HALT}
    fwd = {"fwd.S": FORWARD_ONCE}
    run_fwd = ("run", "fwd.S", "--cap", "hvc-to-user", "--vmm", "vmm.py")
    cases: list[Case] = []
    add = cases.append

    # Program files.
    add(_err("program/missing", "run missing.S", 1, "missing.S: no such file"))
    add(_err("program/directory", "run d", 1, "d: is a directory", files={"d": directory}))
    add(
        _err(
            "program/unreadable",
            "run secret.S",
            1,
            "Permission denied",
            files={"secret.S": unreadable(HALT)},
            wrap=_no_dac_override(),
            requires=_needs_unprivileged_read,
        )
    )
    add(_err("program/empty", "run empty.bin", 1, "empty image", files={"empty.bin": b""}))
    add(_err("program/empty-asm", "run empty.S", 1, "contains no instructions", files={"empty.S": ""}))
    add(_err("program/binary-as-asm", "run bin.S", 1, "not UTF-8", files={"bin.S": b"\xff\xfe\x00\x01"}))
    add(_err("program/dev-null", "run /dev/null", 1, "empty image"))
    add(_err("program/dev-zero", "run /dev/zero", 1, "/dev/zero", cap=30))
    add(_err("program/proc-self-mem", "run /proc/self/mem", 1, "Input/output error"))
    add(_err("program/not-a-directory", "run halt.S/x.S", 1, "halt.S/x.S", files=halt))
    add(_err("program/symlink-loop", "run loop.S", 1, "loop.S", files={"loop.S": symlink("loop.S")}))
    add(
        _err(
            "program/dangling-symlink", "run gone.S", 1, "no such file", files={"gone.S": symlink("nowhere")}
        )
    )
    add(_err("program/name-too-long", ["run", "x" * 300 + ".S"], 1, "File name too long"))
    add(
        _err(
            "program/huge-flat",
            "run big.bin",
            1,
            "do not fit in guest RAM",
            files={"big.bin": sparse(200 << 20)},
        )
    )
    add(
        _err(
            "program/garbage-flat",
            "run garbage.bin",
            3,
            expect="quiet",
            stdout_has="guest fault",
            files={"garbage.bin": b"\xff" * 64},
        )
    )
    # ELF and Image headers.
    add(_err("elf/truncated-header", "run t.elf", 1, "bad ELF", files={"t.elf": elf(cut=40)}))
    add(_err("elf/truncated-program-headers", "run t.elf", 1, "t.elf", files={"t.elf": elf(cut=90)}))
    add(
        _err(
            "elf/segment-past-eof",
            "run t.elf",
            1,
            "truncated ELF",
            files={"t.elf": elf(filesz_extra=0x10000)},
        )
    )
    add(_err("elf/x86-64", "run t.elf", 1, "not AArch64", files={"t.elf": elf(machine=62)}))
    add(_err("elf/32-bit", "run t.elf", 1, "t.elf", files={"t.elf": elf(elfclass=1)}))
    add(
        _err(
            "elf/no-loadable-segment", "run t.elf", 1, "no loadable segments", files={"t.elf": elf(p_type=4)}
        )
    )
    add(
        _err(
            "elf/segment-outside-ram",
            "run t.elf",
            1,
            "do not fit in guest RAM",
            files={"t.elf": elf(((0x1000, HALT_CODE, 0),), entry=0x1000)},
        )
    )
    add(
        _err(
            "elf/huge-bss",
            "run t.elf",
            1,
            "do not fit in guest RAM",
            files={"t.elf": elf(((0x4008_0000, HALT_CODE, 1 << 40),))},
        )
    )
    add(_err("elf/65535-program-headers", "run t.elf", 1, "t.elf", files={"t.elf": elf(phnum=0xFFFF)}))
    add(_err("elf/program-headers-far-away", "run t.elf", 1, "t.elf", files={"t.elf": elf(phoff=1 << 62)}))
    add(
        _err(
            "image/bad-magic",
            "run Image --format image",
            1,
            "wrong Image magic",
            files={"Image": arm64_image(magic=b"XXXX")},
        )
    )
    add(_err("image/too-short", "run Image --format image", 1, "too short", files={"Image": b"\0" * 10}))
    add(
        _err(
            "image/huge-text-offset",
            "run Image",
            1,
            "do not fit in guest RAM",
            files={"Image": arm64_image(text_offset=1 << 40)},
        )
    )
    add(
        _err(
            "image/huge-image-size",
            "run Image",
            1,
            "do not fit in guest RAM",
            files={"Image": arm64_image(image_size=1 << 40)},
        )
    )
    add(_err("format/elf-on-text", "run halt.S --format elf", 1, "bad ELF", files=halt))
    add(_err("format/asm-on-binary", "run b.bin --format asm", 1, "not UTF-8", files={"b.bin": b"\x80\x81"}))
    add(_flag("format/unknown", "run halt.S --format exe", "invalid choice"))

    # Assembly.
    asm_cases: dict[str, tuple[str | bytes, str]] = {
        "unknown-mnemonic": ("nop\nnop\nmovv x0, #1\n", "line 3"),
        "unterminated-string": ('nop\n.ascii "abc\nnop\n', "line 2: unterminated string"),
        "incbin-missing": ('nop\n.incbin "/nonexistent/blob"\n', "line 2"),
        "nul-byte": ("nop\n\0nop\n", "line 2: NUL byte"),
        "space-huge": ("nop\n.space 0x100000000\n", "line 2: would emit"),
        "fill-huge": ("nop\n.fill 0x10000000, 8\n", "line 2: would emit"),
        "rept-huge": (".rept 100000000\nnop\n.endr\n", "line 1: repeats more than"),
        "rept-symbolic-count": (".equ N, 50000000\n.rept N\nnop\n.endr\n", "did not finish within 10 s"),
        "rept-nested": (".rept 2000\n.rept 2000\nnop\n.endr\n.endr\n", "line 2: repeats more than"),
        "mov-immediate-out-of-range": ("mov x0, #0x123456789\n", "line 1"),
        "add-immediate-out-of-range": ("add x0, x0, #5000\n", "line 1"),
        "undefined-label": ("nop\nb nowhere\n", "line 2: undefined symbol"),
        "label-defined-twice": ("a: nop\na: nop\n", "line 2"),
        "only-comments": ("// nothing\n/* at all */\n", "contains no instructions"),
        "include-missing": ('.include "/nonexistent/x.S"\n', "line 1"),
        "include-itself": ('.include "self.S"\nnop\n', "self.S"),
        "macro-recursion": (".macro m\nm\n.endm\nm\n", "prog.S"),
        "bad-utf8-inside": (b"nop\n\xc3\x28\nnop\n", "not UTF-8"),
        "section-directive-keystone": (".text\nnop\n", "line 1"),
        "org-huge-gnu": (".org 0x10000000\nnop\n", "MiB"),
        "balign-huge": ("nop\n.balign 0x40000000\nnop\n", "prog.S"),
        "incbin-dev-zero": ('.incbin "/dev/zero"\n', "line 1"),
    }
    for label, (source, fragment) in asm_cases.items():
        name = "self.S" if label == "include-itself" else "prog.S"
        argv = ["run", name]
        requires = None
        if label == "section-directive-keystone":
            argv += ["--assembler", "keystone"]
        if label in (
            "include-missing",
            "include-itself",
            "org-huge-gnu",
            "incbin-missing",
            "incbin-dev-zero",
        ):
            requires = _gnu_as
        add(_err(f"asm/{label}", argv, 1, fragment, files={name: source}, requires=requires))
    for label in ("unknown-mnemonic", "undefined-label", "unterminated-string", "balign-huge"):
        source, fragment = asm_cases[label]
        add(
            _err(
                f"asm/{label}-gnu",
                "run prog.S --assembler gnu",
                1,
                fragment,
                files={"prog.S": source},
                requires=_gnu_as,
            )
        )
    add(
        _err(
            "asm/huge-source-error-at-the-end",
            "run big.S",
            1,
            "line 200001",
            files={"big.S": "nop\n" * 200_000 + "movv x0, #1\n"},
            cap=60,
        )
    )
    add(_flag("asm/unknown-assembler", "run halt.S --assembler nasm", "invalid choice"))

    # Numbers.
    numbers = [
        ("--cpus", "0", "must be at least 1"),
        ("--cpus", "-1", "must be at least 1"),
        ("--cpus", "10000", "must be at most 512"),
        ("--cpus", "abc", "not an integer"),
        ("--cpus", "", "not an integer"),
        ("--cpus", "1.5", "not an integer"),
        ("--mem", "-5", "not a memory size"),
        ("--mem", "xyz", "not a memory size"),
        ("--mem", "12Q", "not a memory size"),
        ("--mem", "", "not a memory size"),
        ("--timeout", "nan", "must be a finite number"),
        ("--timeout", "inf", "must be a finite number"),
        ("--timeout", "1e999", "must be a finite number"),
        ("--timeout", "-1", "must be positive"),
        ("--timeout", "0", "must be positive"),
        ("--timeout", "soon", "not a number"),
        ("--max-insns", "-1", "must be at least 1"),
        ("--max-insns", "0", "must be at least 1"),
        ("--max-insns", "abc", "not an integer"),
        ("--max-insns", "1e6", "not an integer"),
        ("--quantum", "0", "must be at least 1"),
        ("--quantum", "-3", "must be at least 1"),
        ("--quantum", "x", "not an integer"),
        ("--seed", "x", "invalid int value"),
        ("--seed", "1.5", "invalid int value"),
        ("--reboots", "-1", "must be at least 0"),
        ("--reboots", "many", "not an integer"),
    ]
    for flag, value, fragment in numbers:
        add(_flag(f"number/{flag[2:]}={value or 'empty'}", ["run", "halt.S", flag, value], fragment))
    add(_err("number/mem=1M", "run halt.S --mem 1M", 1, "too small for the boot layout", files=halt))
    add(_err("number/mem=64K", "run halt.S --mem 64K", 1, "do not fit in guest RAM", files=halt))
    add(_err("number/mem=1000", "run halt.S --mem 1000", 1, "multiple of 4 KiB", files=halt))
    add(_err("number/mem=0", "run halt.S --mem 0", 1, "", files=halt))
    add(_err("number/mem=16384G", "run halt.S --mem 16384G", 1, "host memory", files=halt))
    add(
        _err(
            "number/mem=64G",
            "run halt.S --mem 64G",
            1,
            "host memory",
            files=halt,
            requires=_host_memory_below(64 << 30),
        )
    )
    add(_err("number/gicv2-with-9-cpus", "run halt.S --gic v2 --cpus 9", 1, "", files=halt))

    # Capabilities, the SMCCC filter, ONE_REG writes, profiles and other choices.
    add(_flag("cap/unknown", "run halt.S --cap no-such-cap", "unknown capability"))
    add(_flag("cap/empty", ["run", "halt.S", "--cap", ""], "unknown capability"))
    add(_err("cap/psci-to-user-alone", "run halt.S --cap psci-to-user", 1, "EINVAL", files=halt))
    add(_err("cap/not-in-profile", "run halt.S --cap system-suspend", 1, "EINVAL", files=halt))
    add(_flag("filter/garbage", "run halt.S --smccc-filter foo", "not BASE:NR:ACTION"))
    add(_flag("filter/no-action", "run halt.S --smccc-filter 0x84000000:0x20", "BASE:NR:ACTION"))
    add(_flag("filter/bad-action", "run halt.S --smccc-filter 1:2:explode", "explode"))
    add(_flag("filter/bad-numbers", "run halt.S --smccc-filter x:y:deny", "--smccc-filter"))
    add(
        _err(
            "filter/profile-without-filter", "run halt.S --smccc-filter 0xc6000000:1:deny", 1, "", files=halt
        )
    )
    add(
        _err(
            "filter/arm-architecture-range",
            "run halt.S --profile linux-6.6 --smccc-filter 0x80000000:1:deny",
            1,
            "EEXIST",
            files=halt,
        )
    )
    add(
        _err(
            "filter/overlap",
            "run halt.S --profile linux-6.6 --smccc-filter 0xc6000000:0x10:deny --smccc-filter 0xc6000008:0x10:deny",
            1,
            "EEXIST",
            files=halt,
        )
    )
    add(
        _err(
            "filter/zero-functions",
            "run halt.S --profile linux-6.6 --smccc-filter 0xc6000000:0:deny",
            1,
            "",
            files=halt,
        )
    )
    add(_flag("reg/unknown", "run halt.S --set-reg FOO=1", "unknown register"))
    add(_flag("reg/bad-value", "run halt.S --set-reg STD_BMAP=zz", "--set-reg"))
    add(_flag("reg/no-equals", "run halt.S --set-reg STD_BMAP", "not NAME=VALUE"))
    add(
        _err(
            "reg/unsupported-bits",
            "run halt.S --profile linux-6.1 --set-reg STD_BMAP=0xffff",
            1,
            "EINVAL",
            files=halt,
        )
    )
    add(_err("reg/psci-version", "run halt.S --set-reg PSCI_VERSION=0x99999", 1, "", files=halt))
    add(_err("reg/unknown-id", "run halt.S --set-reg 0x6030000000160099=1", 1, "", files=halt))
    add(_flag("profile/unknown", "run halt.S --profile linux-9.9", "invalid choice"))
    add(_flag("gic/unknown", "run halt.S --gic v4", "invalid choice"))
    add(_flag("conduit/unknown", "run halt.S --conduit svc", "invalid choice"))
    add(_flag("schedule/unknown", "run halt.S --schedule fifo", "invalid choice"))
    add(_flag("flag/unknown-option", "run halt.S --frobnicate", "unrecognized arguments"))
    add(_flag("command/unknown", "bogus", "invalid choice"))
    add(_flag("command/none", [], "required"))
    add(_flag("run/no-program", "run", "give PROGRAM or --restore FILE"))
    add(_flag("profiles/extra-argument", "profiles extra", "unrecognized arguments"))
    add(
        _err(
            "append/not-utf8",
            ["run", "halt.S", "--append", os.fsdecode(b"console=\xff")],
            0,
            expect="quiet",
            files=halt,
        )
    )

    # Device trees and initrds.
    fdt_header = struct.pack(">10I", 0xD00DFEED, 0x10000, 0x38, 0x100, 0x28, 17, 16, 0, 0x20, 0x40)
    dtbs = {
        "garbage": (b"garbage", "not a valid device tree"),
        "empty": (b"", ""),
        "truncated": (fdt_header, ""),
    }
    for label, (data, fragment) in dtbs.items():
        add(_err(f"dtb/{label}", "run halt.S --dtb x.dtb", 1, fragment, files={**halt, "x.dtb": data}))
    add(_err("dtb/missing", "run halt.S --dtb x.dtb", 1, "x.dtb", files=halt))
    add(_err("dtb/directory", "run halt.S --dtb d", 1, "d", files={**halt, "d": directory}))
    add(_err("dtb/dev-zero", "run halt.S --dtb /dev/zero", 1, "/dev/zero", files=halt))
    add(
        _err(
            "initrd/too-large",
            "run halt.S --initrd big.img",
            1,
            "too small for the boot layout",
            files={**halt, "big.img": sparse(200 << 20)},
        )
    )
    add(_err("initrd/missing", "run halt.S --initrd x.img", 1, "x.img", files=halt))
    add(_err("initrd/directory", "run halt.S --initrd d", 1, "d", files={**halt, "d": directory}))
    add(_err("initrd/dev-zero", "run halt.S --initrd /dev/zero", 1, "/dev/zero", files=halt))

    # --vmm files.
    vmms: dict[str, tuple[str | bytes | None, str]] = {
        "missing": (None, "no such file"),
        "syntax-error": ("def handle_hypercall(vcpu, exit:\n", "SyntaxError"),
        "raises-at-import": ("raise RuntimeError('boom')\n", "vmm.py:1: RuntimeError: boom"),
        "exit-0-at-import": ("import sys\nsys.exit(0)\n", "vmm.py:2: called sys.exit(0) while loading"),
        "exit-3-at-import": ("import sys\nsys.exit(3)\n", "vmm.py:2: called sys.exit(3) while loading"),
        "missing-module": ("import no_such_module_here\n", "ModuleNotFoundError"),
        "binary-garbage": (b"\x7fELF\x00\x01\x02\xff\xfe", "vmm.py"),
        "empty": ("", "defines neither"),
        "defines-neither": ("x = 1\n", "defines neither"),
        "handler-not-callable": ("handle_hypercall = 5\n", "is not callable"),
        "snapshot-without-restore": (
            "def handle_hypercall(vcpu, exit):\n    return 0\ndef snapshot():\n    return 1\n",
            "defines one of snapshot() and restore(state)",
        ),
        "exit-0-in-handler": (
            "import sys\ndef handle_hypercall(vcpu, exit):\n    sys.exit(0)\n",
            "handle_hypercall called sys.exit(0)",
        ),
        "exit-3-in-handler": (
            "import sys\ndef handle_hypercall(vcpu, exit):\n    sys.exit(3)\n",
            "handle_hypercall called sys.exit(3)",
        ),
        "returns-float": ("def handle_hypercall(vcpu, exit):\n    return 1.5\n", "not 1.5"),
        "returns-string": ("def handle_hypercall(vcpu, exit):\n    return 'yes'\n", "must return None"),
        "returns-five": (
            "def handle_hypercall(vcpu, exit):\n    return (1, 2, 3, 4, 5)\n",
            "must return None",
        ),
        "returns-huge-generator": (
            "def handle_hypercall(vcpu, exit):\n    return (i for i in range(10**18))\n",
            "must return None",
        ),
        "returns-bad-iterable": (
            "class Bad:\n    def __iter__(self):\n        raise ValueError('no')\n"
            "def handle_hypercall(vcpu, exit):\n    return Bad()\n",
            "ValueError",
        ),
        "wrong-signature": ("def handle_hypercall():\n    return 0\n", "raised TypeError"),
        "recursion": (
            "def handle_hypercall(vcpu, exit):\n    return handle_hypercall(vcpu, exit)\n",
            "RecursionError",
        ),
        "raises-in-handler": (
            "def handle_hypercall(vcpu, exit):\n    return 1 // 0\n",
            "vmm.py:2: handle_hypercall",
        ),
    }
    for label, (vmm_source, fragment) in vmms.items():
        vmm_files: dict[str, Content] = dict(fwd)
        if vmm_source is not None:
            vmm_files["vmm.py"] = vmm_source
        add(_err(f"vmm/{label}", run_fwd, 1, fragment, files=vmm_files))
    add(_err("vmm/directory", [*run_fwd[:-1], "d"], 1, "is a directory", files={**fwd, "d": directory}))
    add(_err("vmm/not-python", [*run_fwd[:-1], "vmm.txt"], 1, "vmm.txt", files={**fwd, "vmm.txt": "x = 1\n"}))
    add(
        _err(
            "vmm/policy-raises",
            "run on.S --cpus 2 --cap hvc-to-user --cap psci-to-user --vmm vmm.py",
            1,
            "cpu_on_policy raised RuntimeError",
            files={
                "on.S": "ldr x0, =0xc4000003\nmov x1, #1\nadr x2, .\nmov x3, #0\nhvc #0\n",
                "vmm.py": "def cpu_on_policy(caller, target):\n    raise RuntimeError('no')\n",
            },
        )
    )
    for label, source in (("sleeps", SLEEPING_VMM), ("spins", SPINNING_VMM)):
        add(
            _err(
                f"vmm/{label}-past-timeout",
                [*run_fwd, "--timeout", "1"],
                5,
                expect="quiet",
                stdout_has="timeout",
                files={**fwd, "vmm.py": source},
                cap=15,
            )
        )
    add(
        _err(
            "vmm/snapshot-raises",
            [*run_fwd, "--save", "x.snap"],
            1,
            "snapshot",
            files={
                **fwd,
                "vmm.py": "def handle_hypercall(vcpu, exit):\n    return 0\n"
                "def snapshot():\n    raise RuntimeError('no')\ndef restore(state):\n    pass\n",
            },
            absent=("x.snap",),
        )
    )
    add(
        _err(
            "vmm/snapshot-not-plain-data",
            [*run_fwd, "--save", "x.snap"],
            1,
            "snapshot",
            files={
                **fwd,
                "vmm.py": "def handle_hypercall(vcpu, exit):\n    return 0\n"
                "def snapshot():\n    return {1, 2}\ndef restore(state):\n    pass\n",
            },
            absent=("x.snap",),
        )
    )

    # Snapshots for --restore.
    restore = ("run", "--restore", "x.snap", "--timeout", "3")
    snapshots: dict[str, tuple[Content, str]] = {
        "empty": (b"", "not an emu snapshot"),
        "text": ("hello\n", "not an emu snapshot"),
        "truncated": (snapshot(raw=lambda b: b[:1000]), "not an emu snapshot"),
        "truncated-half": (snapshot(raw=lambda b: b[: len(b) // 2]), "x.snap"),
        "wrong-version": (snapshot(_set("version", 2)), "format version 2"),
        "other-unicorn": (snapshot(_set("meta.unicorn", "1.0.0")), "Unicorn 1.0.0"),
        "no-ram": (snapshot(drop=("ram.bin",)), "damaged emu snapshot"),
        "no-state-member": (snapshot(drop=("snapshot.json",)), "not an emu snapshot"),
        "state-not-json": (snapshot(members={"snapshot.json": lambda b: b[:-10]}), "not an emu snapshot"),
        "state-emptied": (snapshot(_set("state", {})), "damaged emu snapshot"),
        "meta-null": (snapshot(_set("meta", None)), "damaged emu snapshot"),
        "mem-size-text": (snapshot(_set("meta.mem_size", "big")), "damaged emu snapshot"),
        "unknown-profile": (snapshot(_set("meta.profile", "linux-9.9")), "x.snap"),
        "ram-index-list": (snapshot(members={"ram.json": lambda b: b"[]"}), "damaged emu snapshot"),
        "ram-index-wrong-size": (
            snapshot(members={"ram.json": lambda b: b'{"size": 5, "chunks": [[0, 99]]}'}),
            "",
        ),
        "context-truncated": (
            snapshot(members={"blobs/state.vcpus.0.context": lambda b: b[:10]}),
            "CPU context",
        ),
        "no-vcpus": (snapshot(_set("meta.vcpus", [])), "vCPUs"),
        "bad-crc-ram": (snapshot(raw=corrupt_member("ram.bin")), "damaged emu snapshot"),
        "bad-crc-state": (snapshot(raw=corrupt_member("snapshot.json")), "x.snap"),
        "bad-deflate-context": (snapshot(raw=corrupt_member("blobs/state.vcpus.0.context")), "x.snap"),
    }
    for label, (content, fragment) in snapshots.items():
        add(_err(f"restore/{label}", restore, 1, fragment, files={"x.snap": content}))
    add(_err("restore/missing", restore, 1, "no such file"))
    add(_err("restore/directory", restore, 1, "x.snap", files={"x.snap": directory}))
    add(_flag("restore/and-program", "run halt.S --restore x.snap", "not both", files={"x.snap": snapshot()}))
    add(
        _err(
            "restore/trace-insns-not-recorded",
            [*restore, "--trace-insns"],
            1,
            "--trace-insns",
            files={"x.snap": snapshot()},
        )
    )

    # Outputs that must be written whole or not at all.
    budget = ("run", "spin.S", "--max-insns", "1000")
    spin = {"spin.S": LOOPS["tight"]}
    add(
        _err(
            "save/missing-directory", [*budget, "--save", "no/x.snap"], 1, "cannot write snapshot", files=spin
        )
    )
    add(
        _err(
            "save/directory",
            [*budget, "--save", "d"],
            1,
            "cannot write snapshot",
            files={**spin, "d": directory},
        )
    )
    add(_err("save/dev-full", [*budget, "--save", "/dev/full"], 1, "No space left on device", files=spin))
    add(
        _err(
            "save/file-size-limit",
            [*budget, "--save", "x.snap"],
            1,
            "File too large",
            files=spin,
            wrap=FSIZE_LIMIT,
            absent=("x.snap",),
            requires=_needs("prlimit"),
        )
    )
    add(
        _err(
            "save/after-a-failing-vmm",
            [*run_fwd, "--save", "x.snap", "--trace", "t.jsonl"],
            1,
            "ZeroDivisionError",
            files={**fwd, "vmm.py": "def handle_hypercall(vcpu, exit):\n    return 1 // 0\n"},
            absent=("x.snap", "t.jsonl"),
        )
    )
    add(
        _err(
            "save/after-bad-assembly",
            "run bad.S --save x.snap",
            1,
            "line 1",
            files={"bad.S": "movv x0, #1\n"},
            absent=("x.snap",),
        )
    )
    add(_err("trace/missing-directory", [*budget, "--trace", "no/t.jsonl"], 1, "--trace", files=spin))
    add(_err("trace/directory", [*budget, "--trace", "d"], 1, "--trace", files={**spin, "d": directory}))
    add(_err("trace/dev-full", [*budget, "--trace", "/dev/full"], 1, "No space left on device", files=spin))
    add(_err("plot/missing-directory", [*budget, "--plot", "no/t.png"], 1, "--plot", files=spin))
    add(
        _err(
            "plot/unknown-format",
            [*budget, "--plot", "t.xyz"],
            1,
            "--plot t.xyz",
            files=spin,
            absent=("t.xyz",),
        )
    )
    add(_err("dtb-command/missing-directory", "dtb -o no/x.dtb", 1, "-o no/x.dtb"))
    add(_err("dtb-command/directory", "dtb -o d", 1, "-o d", files={"d": directory}))
    add(_err("dtb-command/dev-full", "dtb -o /dev/full", 1, "No space left on device"))
    add(_flag("dtb-command/no-output", "dtb", "required"))
    add(_flag("dtb-command/cpus-0", "dtb --cpus 0 -o x.dtb", "must be at least 1", absent=("x.dtb",)))
    add(_err("dtb-command/initrd-missing", "dtb --initrd x.img -o x.dtb", 1, "x.img", absent=("x.dtb",)))

    # gdb.
    add(_flag("gdb/port-too-big", "run halt.S --gdb 99999", "expected [HOST:]PORT"))
    add(_flag("gdb/port-not-a-number", "run halt.S --gdb abc", "expected [HOST:]PORT"))
    add(_flag("gdb/port-negative", "run halt.S --gdb -1", "--gdb"))
    add(_flag("gdb/colon-only", "run halt.S --gdb :", "expected [HOST:]PORT"))
    add(_err("gdb/wait-without-gdb", "run halt.S --gdb-wait", 1, "--gdb-wait needs --gdb", files=halt))
    add(_err("gdb/port-in-use", "run halt.S --gdb {busy_port}", 1, "Address already in use", files=halt))
    add(_err("gdb/foreign-address", "run halt.S --gdb 192.0.2.1:1234", 1, "--gdb 192.0.2.1:1234", files=halt))
    add(_err("gdb/unknown-host", "run halt.S --gdb no-such-host.invalid:1234", 1, "--gdb", files=halt))

    # explore.
    add(_err("explore/missing-program", "explore missing.S --seeds 2", 1, "no such file"))
    add(_err("explore/bad-assembly", "explore bad.S --seeds 2", 1, "line 1", files={"bad.S": "movv\n"}))
    add(_flag("explore/no-program", "explore", "required"))
    add(_flag("explore/seeds-0", "explore halt.S --seeds 0", "must be at least 1"))
    add(_flag("explore/seeds-abc", "explore halt.S --seeds abc", "not an integer"))
    add(_flag("explore/jobs-0", "explore halt.S --jobs 0", "must be at least 1"))
    add(_flag("explore/jobs-abc", "explore halt.S --jobs abc", "not an integer"))
    add(_flag("explore/first-seed-x", "explore halt.S --first-seed x", "invalid int value"))
    add(_flag("explore/timeout-nan", "explore halt.S --timeout nan", "finite"))
    add(
        _err(
            "explore/vmm-raises-at-import",
            "explore halt.S --seeds 2 --jobs 2 --vmm vmm.py",
            1,
            "RuntimeError",
            files={**halt, "vmm.py": "raise RuntimeError('boom')\n"},
        )
    )
    add(
        _err(
            "explore/vmm-raises-in-worker",
            "explore fwd.S --seeds 4 --jobs 2 --cap hvc-to-user --vmm vmm.py",
            1,
            "ZeroDivisionError",
            files={**fwd, "vmm.py": "def handle_hypercall(vcpu, exit):\n    return 1 // 0\n"},
        )
    )
    add(
        _err(
            "explore/vmm-exits-in-worker",
            "explore fwd.S --seeds 4 --jobs 2 --cap hvc-to-user --vmm vmm.py",
            1,
            "sys.exit(3)",
            files={**fwd, "vmm.py": "import sys\ndef handle_hypercall(vcpu, exit):\n    sys.exit(3)\n"},
        )
    )
    add(
        _err(
            "explore/dask-unreachable",
            "explore halt.S --seeds 2 --dask tcp://127.0.0.1:1",
            1,
            "cannot reach the scheduler",
            files=halt,
            cap=40,
        )
    )
    add(_err("explore/dask-nonsense", "explore halt.S --seeds 2 --dask nonsense", 1, "--dask", files=halt))
    add(
        _err(
            "explore/file-size-limit",
            "explore halt.S --seeds 2",
            1,
            "",
            files=halt,
            wrap=FSIZE_LIMIT,
            requires=_needs("prlimit"),
        )
    )

    # fuzz.
    add(_flag("fuzz/examples-0", "fuzz --examples 0", "must be at least 1"))
    add(_flag("fuzz/examples-negative", "fuzz --examples -1", "must be at least 1"))
    add(_flag("fuzz/examples-abc", "fuzz --examples abc", "not an integer"))
    add(_flag("fuzz/profile-unknown", "fuzz --profile nope", "invalid choice"))
    add(_flag("fuzz/seed-x", "fuzz --seed x", "invalid int value"))
    add(_flag("fuzz/jobs-0", "fuzz --jobs 0", "must be at least 1"))
    add(_flag("fuzz/unknown-option", "fuzz --cpus 2", "unrecognized arguments"))
    add(
        _err(
            "fuzz/dask-unreachable",
            "fuzz --examples 2 --dask tcp://127.0.0.1:1",
            1,
            "cannot reach the scheduler",
            cap=40,
        )
    )
    add(_err("fuzz/dask-nonsense", "fuzz --examples 2 --dask nonsense", 1, "--dask"))

    # diff.
    add(_err("diff/one-profile", "diff halt.S --profiles rfc-2021", 1, "at least two", files=halt))
    add(_err("diff/empty-profiles", "diff halt.S --profiles ,,", 1, "at least two", files=halt))
    add(
        _err("diff/unknown-profile", "diff halt.S --profiles rfc-2021,nope", 1, "unknown profile", files=halt)
    )
    add(_flag("diff/no-profiles", "diff halt.S", "required"))
    add(_err("diff/missing-program", "diff missing.S --profiles rfc-2021,latest", 1, "no such file"))
    add(
        _err(
            "diff/vmm-raises",
            "diff fwd.S --profiles rfc-2021,latest --cap hvc-to-user --vmm vmm.py",
            1,
            "ZeroDivisionError",
            files={**fwd, "vmm.py": "def handle_hypercall(vcpu, exit):\n    return 1 // 0\n"},
        )
    )

    # coverage.
    add(_err("coverage/missing-trace", "coverage missing.jsonl", 1, "missing.jsonl"))
    add(_err("coverage/directory-trace", "coverage d.jsonl", 1, "d.jsonl", files={"d.jsonl": directory}))
    add(
        _err(
            "coverage/binary-trace", "coverage b.jsonl", 1, "b.jsonl", files={"b.jsonl": b"\x90\xff\x00" * 30}
        )
    )
    add(_err("coverage/garbage-trace", "coverage g.jsonl", 1, "g.jsonl:1", files={"g.jsonl": "garbage\n"}))
    add(_err("coverage/missing-program", "coverage missing.S", 1, "no such file"))
    add(_err("coverage/bad-assembly", "coverage bad.S", 1, "line 1", files={"bad.S": "movv\n"}))
    add(_flag("coverage/no-inputs", "coverage", "required"))

    # A stdout nobody reads (``emu ... | head -c0``): a quiet status 1, as other tools stop.
    closed: list[tuple[str, list[str], Mapping[str, Content]]] = [
        ("run-text", ["run", "halt.S"], halt),
        ("run-json", ["run", "halt.S", "--json"], halt),
        ("run-console-flood", ["run", "uart.S", "--timeout", "3"], {"uart.S": _UART_FLOOD}),
        ("profiles", ["profiles"], {}),
        ("explore", ["explore", "halt.S", "--seeds", "3"], halt),
        ("diff", ["diff", "halt.S", "--profiles", "rfc-2021,latest"], halt),
        ("coverage", ["coverage", "halt.S"], halt),
        ("fuzz", ["fuzz", "--examples", "3"], {}),
    ]
    for label, argv, closed_files in closed:
        add(_err(f"closed-stdout/{label}", argv, 1, expect="quiet", files=closed_files, stdout="closed"))
    return cases


_UART_FLOOD = "ldr x1, =0x09000000\nmov w2, #0x41\nloop: str w2, [x1]\nb loop\n"


@dataclass(frozen=True)
class Loop:
    """A kind of loop emu must stop: how to start it and what it prints once it runs."""

    kind: str
    argv: tuple[str, ...]
    files: Mapping[str, Content] = field(default_factory=dict)
    ready: str | None = BANNER
    timeout_too: bool = True  # also checked under --timeout 1
    signal_to: str = "group"
    known: str = ""
    after: float = 1.5  # seconds from the start to SIGINT
    cores: int = 1


# A campaign's progress bar has no newline until it is done; the verdict may land after it.
GLUED_PROGRESS = "progress bar"
SPIN = {"loop.S": LOOPS["tight"]}
RACE = ("explore", "{fw}/cpu_on_race.S", "--cpus", "4", "--seeds", "100000", "--jobs", "2")
FUZZ = ("fuzz", "--examples", "100000", "--jobs", "2")


def _unannounced(
    kind: str, argv: tuple[str, ...], files: Mapping[str, Content] | None = None, **kw: Any
) -> Loop:
    """A loop that prints nothing first (an assembly, a campaign, a FIFO's open): signalled
    ``after`` seconds from its start, with no --timeout twin (its wait is no guest's run)."""
    return Loop(kind, argv, files or {}, ready=None, timeout_too=False, **kw)


LOOP_KINDS: tuple[Loop, ...] = (
    *(
        Loop(kind, ("run", "loop.S"), {"loop.S": LOOPS[kind]})
        for kind in ("tight", "pl011-poll", "gic-poll", "wfi-pending", "wfi-sleep", "exception-storm")
    ),
    *(
        Loop(
            kind,
            ("run", "loop.S", "--cap", "hvc-to-user", "--vmm", "vmm.py"),
            {"loop.S": LOOPS["hypercall-loop"], "vmm.py": vmm},
        )
        for kind, vmm in (("vmm-sleeps", SLEEPING_VMM), ("vmm-spins", SPINNING_VMM))
    ),
    Loop("smp8-spin", ("run", "loop.S", "--cpus", "8"), {"loop.S": LOOPS["smp8-spin"]}),
    _unannounced("long-asm-keystone", ("run", "long.S"), {"long.S": LOOPS["long-asm"]}),
    _unannounced(
        "long-asm-keystone-pid", ("run", "long.S"), {"long.S": LOOPS["long-asm"]}, signal_to="process"
    ),
    _unannounced("long-asm-gnu", ("run", "long.S", "--assembler", "gnu"), {"long.S": LOOPS["long-asm-gnu"]}),
    _unannounced("fifo-open", ("run", "fifo.S"), {"fifo.S": fifo}),
    _unannounced("explore-jobs2", RACE, known=GLUED_PROGRESS, cores=2),
    _unannounced("explore-jobs2-pid", RACE, signal_to="process", known=GLUED_PROGRESS, cores=2),
    # While the workers start and the seeds are being handed out.
    _unannounced("explore-jobs2-early", RACE, after=0.8, known=GLUED_PROGRESS, cores=2),
    _unannounced("explore-jobs2-spin", ("explore", "loop.S", "--seeds", "100", "--jobs", "2"), SPIN, cores=2),
    _unannounced("fuzz-jobs2", FUZZ, known=GLUED_PROGRESS, cores=2),
    _unannounced("fuzz-jobs2-pid", FUZZ, signal_to="process", known=GLUED_PROGRESS, cores=2),
    _unannounced("diff-spin", ("diff", "loop.S", "--profiles", "rfc-2021,latest"), SPIN),
    Loop(
        "gdb-wait",
        ("run", "loop.S", "--gdb", "127.0.0.1:0", "--gdb-wait"),
        SPIN,
        ready=r"emu: gdb stub listening on",
        timeout_too=False,  # time stopped in gdb does not count against --timeout
    ),
)


def loop_cases(repeat: int = 3) -> list[Case]:
    """Part 2: Ctrl-C in every kind of guest loop, then the same loops under ``--timeout 1``."""
    cases: list[Case] = []
    for n in range(1, repeat + 1):
        for loop in LOOP_KINDS:
            timeout = () if loop.argv[0] == "fuzz" else ("--timeout", "60")
            cases.append(
                Case(
                    f"ctrl-c/{loop.kind}#{n}",
                    (*loop.argv, *timeout),
                    130,
                    files=loop.files,
                    expect="interrupted",
                    kind=loop.kind,
                    interrupt_after=loop.after,
                    signal_to=loop.signal_to,
                    ready=loop.ready,
                    within=1.0,
                    known=loop.known,
                    cores=loop.cores,
                )
            )
        cases.append(
            Case(
                f"ctrl-c/save-not-written#{n}",
                ("run", "loop.S", "--timeout", "60", "--save", "x.snap", "--trace", "t.jsonl"),
                130,
                files=SPIN,
                expect="interrupted",
                kind="save-not-written",
                interrupt_after=1.5,
                ready=BANNER,
                within=1.0,
                absent=("x.snap", "t.jsonl"),
            )
        )
        for loop in LOOP_KINDS:
            if loop.timeout_too:
                cases.append(
                    Case(
                        f"timeout/{loop.kind}#{n}",
                        (*loop.argv, "--timeout", "1"),
                        5,
                        files=loop.files,
                        expect="quiet",
                        stdout_has="timeout",
                        cap=20,
                        kind=loop.kind,
                        ready=loop.ready,
                        within=1.0,
                        deadline=1.0,
                    )
                )
        # WFI with nothing to wake it: idle (6) at once, whatever the timeout.
        cases.append(
            Case(
                f"timeout/wfi-idle#{n}",
                ("run", "loop.S", "--timeout", "60"),
                6,
                files={"loop.S": LOOPS["wfi-idle"]},
                expect="quiet",
                stdout_has="idle",
                cap=20,
                kind="wfi-idle",
                ready=BANNER,
                within=1.0,
                deadline=0.0,
            )
        )
        cases.append(
            Case(
                f"timeout/gdb-no-client#{n}",
                ("run", "loop.S", "--gdb", "127.0.0.1:0", "--timeout", "1"),
                5,
                files=SPIN,
                expect="quiet",
                cap=20,
                kind="gdb-no-client",
                ready=BANNER,
                within=1.0,
                deadline=1.0,
            )
        )
        # Each seed times out on its own; the campaign reports them (its own status is 0).
        cases.append(
            Case(
                f"timeout/explore-jobs2-spin#{n}",
                ("explore", "loop.S", "--seeds", "4", "--jobs", "2", "--timeout", "1"),
                0,
                files=SPIN,
                expect="quiet",
                stdout_has="timeout",
                cap=30,
                kind="explore-jobs2-spin",
                cores=2,
            )
        )
        # Ctrl-C while Python is still importing emu: no handler of emu's is installed yet.
        cases.append(
            Case(
                f"ctrl-c/during-start-up#{n}",
                ("run", "loop.S", "--timeout", "60"),
                130,
                files=SPIN,
                expect="interrupted",
                kind="during-start-up",
                interrupt_after=0.05,
                within=1.0,
                known=STARTUP_TRACEBACK,
            )
        )
    return cases


# Python's own KeyboardInterrupt before ``emu.tools.cli.main`` runs (importing emu takes about
# 0.2 s): status -2 and a traceback; earlier still, the interpreter's own start-up fails (1).
STARTUP_TRACEBACK = r"^exit status (killed by SIGINT|1), expected 130$|Traceback|not 'emu: interrupted'"


def all_cases(repeat: int = 3) -> list[Case]:
    return input_cases() + loop_cases(repeat)


# -- running one case -----------------------------------------------------------------------


class _Stream:
    """One pipe of the child, drained by a thread: its head and tail, and when ``pattern``
    first showed in it."""

    HEAD = 256 << 10
    TAIL = 64 << 10

    def __init__(self, pipe: Any, pattern: re.Pattern[str] | None, seen: threading.Event) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.size = 0
        self.pattern = pattern
        self.matched_at: float | None = None
        self._seen = seen
        self._thread = threading.Thread(target=self._drain, args=(pipe,), daemon=True)
        self._thread.start()

    def _drain(self, pipe: Any) -> None:
        fd = pipe.fileno()
        try:
            while chunk := os.read(fd, 1 << 16):
                now = time.monotonic()
                self.size += len(chunk)
                if len(self.head) < self.HEAD:
                    self.head += chunk[: self.HEAD - len(self.head)]
                self.tail = (self.tail + chunk)[-self.TAIL :]
                if self.pattern is not None and self.matched_at is None:
                    window = (self.tail[-4096 - len(chunk) :]).decode(errors="replace")
                    if self.pattern.search(window) or self.pattern.search(self.head.decode(errors="replace")):
                        self.matched_at = now
                        self._seen.set()
        except OSError:
            pass
        finally:
            pipe.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        if self.size <= self.HEAD:
            return self.head.decode(errors="replace")
        return self.head.decode(errors="replace") + "\n[...]\n" + self.tail.decode(errors="replace")


def _wait(proc: subprocess.Popen[bytes], until: float) -> bool:
    """Wait until ``proc`` exits or the monotonic clock reaches ``until``; whether it exited."""
    remaining = until - time.monotonic()
    if proc.poll() is not None:
        return True
    if remaining <= 0:
        return False
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        try:
            proc.wait(remaining)
        except subprocess.TimeoutExpired:
            return False
        return True
    fd = pidfd_open(proc.pid)
    try:
        select.select([fd], [], [], remaining)
    finally:
        os.close(fd)
    return proc.poll() is not None


def group_members(pgid: int) -> list[tuple[int, str]]:
    """The live (not zombie) processes of process group ``pgid``: pid and command line."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members.append((int(entry), cmdline.replace(b"\0", b" ").decode(errors="replace").strip()))
    return members


def _hung_at(stderr: str) -> str:
    """The innermost frames of the main thread in a faulthandler dump (after SIGABRT)."""
    _, _, dump = stderr.rpartition("Current thread ")
    frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', dump)
    return " < ".join(f"{Path(f).name}:{line} {name}" for f, line, name in frames[:4])


def verdict_lines(stderr: str) -> tuple[list[str], int]:
    """stderr's lines without progress bars and the gdb stub's address, and how many of
    them a progress bar ran into (drawn without its newline just before them)."""
    lines, glued = [], 0
    for segment in re.split(r"[\r\n]", stderr):
        text = segment.strip()
        if match := GLUED.match(text):
            text = text[match.end() :]
            glued += 1
        if text and not NOISE.match(text):
            lines.append(text)
    return lines, glued


def _short(text: object, limit: int = 160) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _status_text(status: int | None) -> str:
    if status is None:
        return "none"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return str(status)


@dataclass(frozen=True)
class Context:
    """What every case of a campaign shares."""

    python: str = sys.executable
    busy_port: int = 0


def run_case(case: Case, context: Context | None = None) -> Result:
    """Run ``case`` in a temporary directory and check everything it must do."""
    context = context or Context()
    if case.requires is not None and (reason := case.requires()):
        return Result(case, [], skipped=reason)
    with tempfile.TemporaryDirectory(prefix="emu-hostile-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        try:
            for name, content in case.files.items():
                path = work / name
                if isinstance(content, bytes):
                    path.write_bytes(content)
                elif isinstance(content, str):
                    path.write_text(content)
                else:
                    content(path, context.python)
        except (OSError, subprocess.SubprocessError) as err:
            return Result(case, [f"could not create its files: {err}"])
        return _run(case, work, context)


def _argv(case: Case, context: Context) -> list[str]:
    def expand(arg: str) -> str:
        return arg.replace("{fw}", str(FIRMWARE)).replace("{busy_port}", str(context.busy_port))

    return [*case.wrap, context.python, "-m", "emu", *map(expand, case.argv)]


def _run(case: Case, work: Path, context: Context) -> Result:
    problems: list[str] = []
    stdout: int = subprocess.PIPE
    if case.stdout == "closed":
        read_end, stdout = os.pipe()
        os.close(read_end)
    start = time.monotonic()
    proc = subprocess.Popen(
        _argv(case, context),
        cwd=work,
        env=_child_env(case.env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    if case.stdout == "closed":
        os.close(stdout)
    pgid = proc.pid
    pattern = re.compile(case.ready) if case.ready else None
    seen = threading.Event()
    out = _Stream(proc.stdout, pattern, seen) if proc.stdout is not None else None
    err = _Stream(proc.stderr, pattern, seen)
    cap_at = start + case.cap

    def ready_at() -> float | None:
        times = [s.matched_at for s in (out, err) if s is not None and s.matched_at is not None]
        return min(times) if times else None

    signalled: float | None = None
    if case.interrupt_after is not None:
        at = start + case.interrupt_after
        if pattern is not None:
            while not seen.wait(0.05) and proc.poll() is None and time.monotonic() < cap_at:
                pass
            ready = ready_at()
            if ready is not None:
                at = max(at, ready + SETTLE_S)
            elif proc.poll() is None:
                problems.append(f"never printed {case.ready!r}")
        if _wait(proc, at):
            problems.append(f"exited ({_status_text(proc.returncode)}) before it could be interrupted")
        else:
            try:
                if case.signal_to == "group":
                    os.killpg(pgid, signal.SIGINT)
                else:
                    os.kill(pgid, signal.SIGINT)
            except ProcessLookupError:
                pass
            signalled = time.monotonic()
    exited = _wait(proc, cap_at)
    end = time.monotonic()
    if not exited:
        problems.append(f"still running after its {case.cap:g} s cap (killed)")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pgid, signal.SIGABRT)
        _wait(proc, time.monotonic() + 2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    proc.wait()
    status = proc.returncode
    for stream in (out, err):
        if stream is not None:
            stream.join(5)
    left = group_members(pgid)
    grace = time.monotonic() + GRACE_S
    while left and time.monotonic() < grace:
        time.sleep(0.05)
        left = group_members(pgid)
    if left:
        problems.append("left running: " + "; ".join(f"{pid} {cmd[:80]}" for pid, cmd in left))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    latency = None
    if signalled is not None:
        latency = end - signalled
        if case.within is not None and latency > case.within:
            problems.append(f"took {latency:.2f} s to stop after SIGINT (limit {case.within:g} s)")
    elif case.deadline is not None:
        ready = ready_at()
        if ready is None:
            problems.append(f"never printed {case.ready!r}" if case.ready else "no start to time from")
        else:
            latency = end - ready - case.deadline
            if case.within is not None and latency > case.within:
                problems.append(f"stopped {latency:.2f} s after its deadline (limit {case.within:g} s)")

    if exited and status != case.status:
        problems.append(f"exit status {_status_text(status)}, expected {case.status}")
    stderr = err.text()
    if not exited and (where := _hung_at(stderr)):
        problems.append(f"hung in {where}")
    for word in FORBIDDEN:
        if word in stderr:
            problems.append(f"stderr has {word!r}: {_short(stderr[stderr.index(word) :][:300])}")
    lines, glued = verdict_lines(stderr)
    if glued:
        problems.append(f"a {GLUED_PROGRESS} was not ended before the next line of stderr")
    if case.expect == "error":
        if len(lines) != 1 or not lines[0].startswith("emu: error: "):
            problems.append(f"stderr is not one 'emu: error:' line: {_short(lines[:3])}")
        elif case.fragment and case.fragment not in lines[0]:
            problems.append(f"error line lacks {case.fragment!r}: {_short(lines[0])}")
    elif case.expect == "interrupted":
        if lines != ["emu: interrupted"]:
            problems.append(f"stderr is not 'emu: interrupted': {_short(lines[:3])}")
    elif case.expect == "quiet" and lines:
        problems.append(f"stderr is not empty: {_short(lines[:3])}")
    if case.stdout_has and (out is None or case.stdout_has not in out.text()):
        problems.append(f"stdout lacks {case.stdout_has!r}")
    for name in case.absent:
        if (work / name).exists() or (work / name).is_symlink():
            problems.append(f"left {name} behind")
    return Result(case, problems, status, end - start, latency, stderr=lines)


# -- the campaign ---------------------------------------------------------------------------


def run_cases(
    cases: Iterable[Case],
    *,
    jobs: int = 2,
    context: Context | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Every case: untimed ones ``jobs`` at a time, then the timed ones at most two cores' worth
    at a time (a campaign with --jobs 2 alone), so that the host's load does not time them."""
    cases = list(cases)
    if threading.current_thread() is threading.main_thread():
        # Started in the background (``cmd &``), this process ignores SIGINT, and so would
        # every emu it starts: a Ctrl-C case would then test nothing.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    with _busy_port() as port:
        context = replace(context or Context(), busy_port=port)
        results: list[Result] = []
        for batch, width in (
            ([c for c in cases if not c.timed], jobs),
            ([c for c in cases if c.timed and c.cores < 2], min(jobs, 2)),
            ([c for c in cases if c.timed and c.cores >= 2], 1),
        ):
            if not batch:
                continue
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, width)) as pool:
                futures = [pool.submit(run_case, case, context) for case in batch]
                for future in concurrent.futures.as_completed(futures):
                    result = future.result()
                    if on_result is not None:
                        on_result(result)
                    results.append(result)
    order = {case.name: i for i, case in enumerate(cases)}
    return sorted(results, key=lambda r: order[r.case.name])


class _busy_port:
    """A TCP port something listens on for the whole campaign (``{busy_port}``)."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def latencies(results: Iterable[Result]) -> dict[str, dict[str, float | int]]:
    """Per ``ctrl-c``/``timeout`` loop kind: runs, median and max stop latency (seconds)."""
    groups: dict[str, list[float]] = {}
    for r in results:
        if r.latency is not None and r.case.kind:
            groups.setdefault(f"{r.case.name.split('/')[0]}/{r.case.kind}", []).append(r.latency)
    return {
        key: {"runs": len(v), "median_s": statistics.median(v), "max_s": max(v)}
        for key, v in sorted(groups.items())
    }


def summary(results: Sequence[Result], wall: float) -> dict[str, Any]:
    counts = {v: sum(r.verdict == v for r in results) for v in ("pass", "fail", "known", "skip")}
    return {
        "cases": len(results),
        "inputs": sum(not r.case.timed for r in results),
        "timed": sum(r.case.timed for r in results),
        "passed": counts["pass"],
        "failed": counts["fail"],
        "known": counts["known"],
        "skipped": counts["skip"],
        "wall_s": round(wall, 1),
        "latency": latencies(results),
        "failures": [
            {"case": r.case.name, "status": r.status, "problems": r.problems}
            for r in results
            if r.verdict in ("fail", "known")
        ],
    }


def failure_line(result: Result) -> str:
    mark = "KNOWN" if result.verdict == "known" else "FAIL"
    return f"{mark} {result.case.name}: " + "; ".join(result.problems)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="cases at once (timed cases: at most 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each Ctrl-C and timeout kind")
    parser.add_argument("--only", metavar="SUBSTRING", help="only the cases whose name contains it")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that has emu installed")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    cases = [c for c in all_cases(args.repeat) if not args.only or args.only in c.name]
    if args.list:
        for case in cases:
            print(f"{case.name:48} {case.status:>3}  emu {' '.join(case.argv)[:100]}")
        return 0
    if not cases:
        print(f"no case matches {args.only!r}", file=sys.stderr)
        return 1

    def report(result: Result) -> None:
        if result.verdict in ("fail", "known") and not args.json:
            print(failure_line(result), flush=True)

    start = time.monotonic()
    results = run_cases(cases, jobs=args.jobs, context=Context(python=args.python), on_result=report)
    doc = summary(results, time.monotonic() - start)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"{doc['cases']} cases ({doc['inputs']} bad inputs, {doc['timed']} Ctrl-C and timeout runs): "
            f"{doc['passed']} passed, {doc['failed']} failed, {doc['known']} known, {doc['skipped']} skipped "
            f"in {doc['wall_s']} s"
        )
        for key, stats in doc["latency"].items():
            print(
                f"  {key:32} {stats['runs']} runs, median {stats['median_s']:.3f} s, max {stats['max_s']:.3f} s"
            )
        for r in results:
            if r.skipped:
                print(f"  skipped {r.case.name}: {r.skipped}")
    return 1 if doc["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
