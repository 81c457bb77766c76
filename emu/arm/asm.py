"""Assembling A64 guest snippets: keystone by default, GNU as where keystone is unsafe.

Keystone 0.9.2 mis-handles system code (engine notes 0.12 and 9): it encodes ``adrp``
wrongly at non-zero bases, aborts the process on ``:lo12:``, lacks LSE and PAuth, has no
numeric local labels, and silently emits nothing for ``.section``, ``.inst`` and
``.include``. It also crashes outright, e.g. on a plain ``.text``. So:

* the source is screened for those constructs first; they go to GNU
  ``aarch64-linux-gnu-as`` when it is installed and are rejected with a clear message
  otherwise;
* keystone itself runs in a helper process (``emu.arm._keystone_worker``), so a crash
  costs an error message, never the caller's process;
* every error names the source line and its text.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from emu.errors import AsmError

GNU_PREFIX = "aarch64-linux-gnu-"
GNU_MARCH = "armv8.5-a"

# Keystone error numbers (keystone.h) worth a plain-words message.
KS_ERR_ASM_SYMBOL_MISSING = 144
_KS_MESSAGES = {
    KS_ERR_ASM_SYMBOL_MISSING: "undefined symbol",
    143: "symbol defined twice",
    162: "invalid label",
    512: "invalid operand",
    513: "instruction needs a CPU feature keystone lacks",
    514: "unknown instruction",
    146: "unexpected token at start of statement",
    137: "unknown directive",
}

_LSE = r"(cas|casa|casal|casl|casp|caspa|caspal|caspl)[bh]?|ld(add|clr|eor|set|smax|smin|umax|umin)(a|al|l)?[bh]?|st(add|clr|eor|set|smax|smin|umax|umin)l?[bh]?|swp(a|al|l)?[bh]?"
_PAUTH = r"pac(ia|ib|da|db|ga|iza|izb|dza|dzb|iasp|ibsp|iaz|ibz|ia1716|ib1716)|aut(ia|ib|da|db|iza|izb|dza|dzb|iasp|ibsp|iaz|ibz|ia1716|ib1716)|xpac(i|d|lri)|bl?raa?z?|bl?rab?z?|reta[ab]|ereta[ab]|ldra[ab]"
_SCREENS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^\s*adrp\b", re.I), "adrp (keystone encodes it wrongly at non-zero addresses)"),
    (re.compile(r":[a-z_0-9]+:", re.I), "relocation operators such as :lo12: (keystone aborts on them)"),
    (re.compile(rf"^\s*({_LSE})\s", re.I), "LSE atomics (keystone does not know them)"),
    (
        re.compile(rf"^\s*({_PAUTH})\b", re.I),
        "pointer-authentication instructions (keystone does not know them)",
    ),
    (re.compile(r"^\s*\d+\s*:"), "numeric local labels (keystone does not support them)"),
    (
        re.compile(r"^\s*b(l|\.\w+)?\s+\d+[bf]\b|,\s*\d+[bf]\s*$", re.I),
        "numeric local label references (keystone does not support them)",
    ),
    (
        re.compile(r"^\s*\.(section|pushsection|popsection|previous)\b", re.I),
        ".section (keystone emits nothing for it)",
    ),
    (
        re.compile(r"^\s*\.(text|data|bss|rodata)\b", re.I),
        "section directives such as .text (keystone crashes on them)",
    ),
    (re.compile(r"^\s*\.inst\b", re.I), ".inst (keystone emits nothing for it)"),
    (re.compile(r"^\s*\.include\b", re.I), ".include (keystone emits nothing for it)"),
    (re.compile(r"^\s*\.org\b", re.I), ".org (keystone cannot place it)"),
    (re.compile(r"^\s*#\s*(include|define|if|ifdef|ifndef)\b"), "C preprocessor directives"),
)

_LABEL_DEF = re.compile(r"^\s*([A-Za-z_.$][\w.$]*)\s*:")


@dataclass(frozen=True)
class Screen:
    """Why a source needs GNU as: the first line with a construct keystone mishandles."""

    line: int
    text: str
    reason: str


def screen(source: str) -> Screen | None:
    """Find the first construct keystone cannot be trusted with, or None."""
    clean = strip_comments(source).splitlines()
    for number, raw in enumerate(source.splitlines(), 1):
        for statement in clean[number - 1].split(";"):
            for pattern, reason in _SCREENS:
                if pattern.search(statement):
                    return Screen(number, raw, reason)
    return None


def gnu_as_available() -> bool:
    return all(shutil.which(GNU_PREFIX + tool) for tool in ("as", "ld", "objcopy"))


def assemble(source: str, address: int, *, assembler: str = "auto") -> bytes:
    """Assemble A64 ``source`` for execution at ``address``; raise ``AsmError`` on any problem.

    ``assembler`` is ``"auto"`` (keystone unless the source needs GNU as), ``"keystone"``
    or ``"gnu"``.
    """
    if assembler not in ("auto", "keystone", "gnu"):
        raise ValueError(f"unknown assembler {assembler!r}")
    needs = screen(source)
    if assembler == "gnu" or (assembler == "auto" and needs and gnu_as_available()):
        return assemble_gnu(source, address)
    if needs:
        hint = (
            ""
            if gnu_as_available() or assembler == "keystone"
            else "; install GNU as (Debian: binutils-aarch64-linux-gnu) to assemble it"
        )
        raise AsmError(f"keystone cannot assemble {needs.reason}{hint}", needs.line, needs.text)
    return assemble_keystone(source, address)


# -- keystone, in a helper process ------------------------------------------------------


class _KeystoneWorker:
    """A long-lived ``python -m emu._keystone_worker`` speaking JSON lines."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            env = dict(
                os.environ,
                PYTHONPATH=os.pathsep.join(
                    filter(None, [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")])
                ),
            )
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "emu.arm._keystone_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
        return self._proc

    def asm(self, source: str, address: int) -> dict:
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps({"source": source, "address": address}) + "\n")
            proc.stdin.flush()
            reply = proc.stdout.readline()
        except BrokenPipeError:
            reply = ""
        if not reply:
            proc.wait()
            self._proc = None
            return {
                "ok": False,
                "crashed": True,
                "errno": None,
                "message": f"keystone crashed (exit status {proc.returncode})",
            }
        return json.loads(reply)

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            self._proc.wait(timeout=5)
        self._proc = None


_worker = _KeystoneWorker()
atexit.register(_worker.close)


def strip_comments(source: str) -> str:
    """Blank out ``//`` and ``/* */`` comments, keeping line numbers and string literals.

    Keystone's lexer trips over text inside comments (an apostrophe starts a character
    literal that runs to the end of the input), so comments never reach it.
    """
    out: list[str] = []
    i, n = 0, len(source)
    in_string = in_block = False
    while i < n:
        ch = source[i]
        if in_block:
            if source.startswith("*/", i):
                in_block = False
                out.append("  ")
                i += 2
                continue
            out.append("\n" if ch == "\n" else " ")
        elif in_string:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(source[i + 1])
                i += 1
            elif ch == '"' or ch == "\n":
                in_string = False
        elif ch == '"':
            in_string = True
            out.append(ch)
        elif source.startswith("//", i):
            end = source.find("\n", i)
            end = n if end < 0 else end
            out.append(" " * (end - i))
            i = end
            continue
        elif source.startswith("/*", i):
            in_block = True
            out.append("  ")
            i += 2
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def assemble_keystone(source: str, address: int) -> bytes:
    """Assemble with keystone (in the helper process); errors are located to a line."""
    clean = strip_comments(source)
    reply = _worker.asm(clean, address)
    if reply["ok"] and not reply["hex"] and _has_statements(clean):
        reply = {"ok": False, "errno": None, "message": "keystone produced no code for this source"}
    if reply["ok"]:
        return bytes.fromhex(reply["hex"])
    line, text = _locate_keystone_error(clean, address, reply)
    if line is not None:
        text = source.splitlines()[line - 1]
    raise AsmError(_keystone_message(reply), line, text)


def _has_statements(source: str) -> bool:
    for raw in source.splitlines():
        body = _LABEL_DEF.sub("", raw).strip()
        if body and not body.startswith(
            (
                ".equ",
                ".set",
                ".macro",
                ".endm",
                ".align",
                ".balign",
                ".p2align",
                ".globl",
                ".global",
                ".type",
                ".ltorg",
                ".pool",
            )
        ):
            return True
    return False


def _keystone_message(reply: dict) -> str:
    detail = (reply.get("diagnostic") or "").strip()
    if detail:
        return detail
    if reply.get("crashed"):
        return reply["message"]
    known = _KS_MESSAGES.get(reply.get("errno", -1))
    if known:
        return known
    errno = reply.get("errno") or 0
    if errno >= 512:
        # Architecture-specific operand-match failures (KS_ERR_ASM_ARCH + code).
        return f"invalid operands for this instruction (keystone error {errno})"
    return reply["message"]


def _fails(source: str, address: int, ignore_missing: bool) -> dict | None:
    reply = _worker.asm(source, address)
    if reply["ok"]:
        return None
    if ignore_missing and reply.get("errno") == KS_ERR_ASM_SYMBOL_MISSING:
        return None
    return reply


def _locate_keystone_error(source: str, address: int, reply: dict) -> tuple[int | None, str | None]:
    """Binary-search the shortest failing prefix of the source.

    For an undefined symbol the prefix is completed with every label the whole source
    defines, so only a reference to a symbol that is defined nowhere still fails.
    """
    lines = source.splitlines()
    missing = reply.get("errno") == KS_ERR_ASM_SYMBOL_MISSING
    labels = [m.group(1) + ":" for m in map(_LABEL_DEF.match, lines) if m]

    def prefix(n: int) -> str:
        head = lines[:n]
        if missing:
            defined = {m.group(1) for m in map(_LABEL_DEF.match, head) if m}
            head = head + [lab for lab in labels if lab[:-1] not in defined]
        return "\n".join(head)

    lo, hi = 1, len(lines)
    if _fails(prefix(hi), address, ignore_missing=not missing) is None:
        return None, None
    while lo < hi:
        mid = (lo + hi) // 2
        if _fails(prefix(mid), address, ignore_missing=not missing) is not None:
            hi = mid
        else:
            lo = mid + 1
    return lo, lines[lo - 1]


# -- GNU as --------------------------------------------------------------------------------

_GNU_DIAG = re.compile(r"^[^:]*:(\d+): (?:Error|Fatal error): (.*)$", re.M)
_UNDEFINED = re.compile(r"undefined reference to `([^']+)'")


def assemble_gnu(source: str, address: int) -> bytes:
    """Assemble and link at ``address`` with GNU binutils; the flat image of all sections."""
    if not gnu_as_available():
        raise AsmError(f"GNU as ({GNU_PREFIX}as) is not installed (Debian: binutils-aarch64-linux-gnu)")
    with tempfile.TemporaryDirectory(prefix="emu-as-") as tmp:
        d = Path(tmp)
        (d / "prog.S").write_text(source if source.endswith("\n") else source + "\n")
        (d / "link.ld").write_text(
            f"SECTIONS {{ . = {address:#x}; .image : {{ *(.text .text.*) *(.rodata .rodata.*) "
            "*(.data .data.*) *(.bss .bss.* COMMON) }\n /DISCARD/ : { *(.note*) *(.comment) } }\n"
        )
        _run_gnu(["as", f"-march={GNU_MARCH}", "-o", "prog.o", "prog.S"], d, source)
        _run_gnu(["ld", "-T", "link.ld", "-o", "prog.elf", "prog.o"], d, source)
        _run_gnu(["objcopy", "-O", "binary", "-j", ".image", "prog.elf", "prog.bin"], d, source)
        return (d / "prog.bin").read_bytes()


def _run_gnu(argv: list[str], cwd: Path, source: str) -> None:
    proc = subprocess.run([GNU_PREFIX + argv[0], *argv[1:]], cwd=cwd, capture_output=True, text=True)
    if proc.returncode == 0:
        return
    lines = source.splitlines()
    diag = _GNU_DIAG.search(proc.stderr)
    if diag:
        number = int(diag.group(1))
        text = lines[number - 1] if 0 < number <= len(lines) else None
        raise AsmError(diag.group(2).strip(), number, text)
    undefined = _UNDEFINED.search(proc.stderr)
    if undefined:
        name = undefined.group(1)
        for number, text in enumerate(lines, 1):
            if re.search(rf"(?<![\w.$]){re.escape(name)}(?![\w.$])", text.split("//", 1)[0]):
                raise AsmError(f"undefined symbol {name!r}", number, text)
        raise AsmError(f"undefined symbol {name!r}")
    first = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit status {proc.returncode}"
    raise AsmError(f"{argv[0]} failed: {first}")
