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
* every error names the source line and its text;
* both assemblers are bounded: sources that would hang or flood them (an unterminated
  string, a NUL byte, a ``.space``/``.rept`` beyond ``MAX_IMAGE_BYTES``/``MAX_REPEATS``)
  are refused up front naming the line, every assembly must finish within
  ``ASM_TIMEOUT_S`` and produce at most ``MAX_IMAGE_BYTES``, and the helpers die with
  the process that started them.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from emu.arm.hostproc import die_with_parent
from emu.errors import AsmError

GNU_PREFIX = "aarch64-linux-gnu-"
GNU_MARCH = "armv8.5-a"

# Bounds on one assembly: wall time, output size, and the repetitions of .rept blocks
# (nested counts multiply).
ASM_TIMEOUT_S = 10.0
MAX_IMAGE_BYTES = 64 << 20
MAX_REPEATS = 1 << 20
# An LDR (literal) reaches +-1 MiB; keystone puts literal pools at the end of the code.
LITERAL_REACH = 1 << 20

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
    (re.compile(r"^\s*\.incbin\b", re.I), ".incbin (keystone ignores it)"),
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
    check_source(source)
    needs = screen(source)
    if assembler == "gnu" or (assembler == "auto" and needs and gnu_as_available()):
        return _nonempty(assemble_gnu(source, address))
    if needs:
        hint = (
            ""
            if gnu_as_available() or assembler == "keystone"
            else "; install GNU as (Debian: binutils-aarch64-linux-gnu) to assemble it"
        )
        raise AsmError(f"keystone cannot assemble {needs.reason}{hint}", needs.line, needs.text)
    image = _nonempty(assemble_keystone(source, address))
    literal = _literal_load(source) if len(image) > LITERAL_REACH else None
    if literal is not None:
        # Keystone pools every ``ldr Xt, =value`` at the end of the code and silently
        # truncates offsets out of reach; GNU as places pools correctly or says which
        # load is out of range.
        if assembler == "auto" and gnu_as_available():
            return _nonempty(assemble_gnu(source, address))
        raise AsmError(
            f"literal pool out of reach: the program is over {LITERAL_REACH >> 20} MiB and keystone "
            "places literals after all of it; use GNU as (--assembler gnu)",
            *literal,
        )
    return image


def _nonempty(image: bytes) -> bytes:
    if not image:
        raise AsmError("the source contains no instructions or data")
    return image


_LITERAL_LOAD = re.compile(r"^\s*(?:[A-Za-z_.$][\w.$]*\s*:\s*)?ldr\w*\s+\w+\s*,\s*=", re.I)


def _literal_load(source: str) -> tuple[int, str] | None:
    lines = source.splitlines()
    for number, line in enumerate(strip_comments(source).splitlines(), 1):
        if any(_LITERAL_LOAD.match(statement) for statement in line.split(";")):
            return number, lines[number - 1]
    return None


# .space/.skip/.zero SIZE, .fill REPEAT[, SIZE], .rept COUNT with a literal count.
_NUMBER = r"(0[xX][0-9a-fA-F]+|0[bB][01]+|\d+)"
_SPACE = re.compile(rf"^\s*(?:[A-Za-z_.$][\w.$]*\s*:\s*)?\.(space|skip|zero)\s+{_NUMBER}\b", re.I)
_FILL = re.compile(rf"^\s*(?:[A-Za-z_.$][\w.$]*\s*:\s*)?\.fill\s+{_NUMBER}(?:\s*,\s*{_NUMBER})?", re.I)
_REPT = re.compile(rf"^\s*\.rept\s+{_NUMBER}\b", re.I)
_ENDR = re.compile(r"^\s*\.endr\b", re.I)


def check_source(source: str) -> None:
    """Refuse, naming the line, what no assembler may be given: it would cut the source
    short (a NUL byte ends a C string), swallow the rest of it (an unterminated string)
    or run away (a count beyond ``MAX_IMAGE_BYTES`` or ``MAX_REPEATS``)."""
    lines = source.splitlines()
    for number, line in enumerate(lines, 1):
        if "\0" in line:
            raise AsmError(
                "NUL byte in the source (the assembler would stop reading there)",
                number,
                line.replace("\0", "\\0"),
            )
    repeats = [1]
    for number, line in enumerate(strip_comments(source).splitlines(), 1):
        if _unterminated_string(line):
            raise AsmError("unterminated string", number, lines[number - 1])
        for statement in line.split(";"):
            space, fill, rept = _SPACE.match(statement), _FILL.match(statement), _REPT.match(statement)
            if space:
                size = int(space.group(2), 0) * repeats[-1]
            elif fill:
                size = int(fill.group(1), 0) * int(fill.group(2) or "1", 0) * repeats[-1]
            else:
                size = 0
            if size > MAX_IMAGE_BYTES:
                raise AsmError(
                    f"would emit {size} bytes, more than the {MAX_IMAGE_BYTES >> 20} MiB a program may have",
                    number,
                    lines[number - 1],
                )
            if rept:
                repeats.append(repeats[-1] * int(rept.group(1), 0))
                if repeats[-1] > MAX_REPEATS:
                    raise AsmError(f"repeats more than {MAX_REPEATS} times", number, lines[number - 1])
            elif _ENDR.match(statement) and len(repeats) > 1:
                repeats.pop()


def _unterminated_string(line: str) -> bool:
    """Whether a line of comment-free source ends inside a double-quoted string."""
    in_string = escaped = False
    for ch in line:
        if escaped:
            escaped = False
        elif in_string and ch == "\\":
            escaped = True
        elif ch == '"':
            in_string = not in_string
    return in_string


# -- keystone, in a helper process ------------------------------------------------------


class _KeystoneWorker:
    """A long-lived ``python -I .../_keystone_worker.py`` speaking JSON lines.

    Each request must be answered within ``ASM_TIMEOUT_S`` with at most
    ``MAX_IMAGE_BYTES`` of code, or the helper is killed (and restarted next time).
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            env = dict(os.environ, EMU_ASM_PARENT=str(os.getpid()), EMU_ASM_MAX_BYTES=str(MAX_IMAGE_BYTES))
            # The helper runs as a file in isolated mode (-I: no script directory, user site
            # or PYTHON* variables), so it imports neither emu nor whatever the caller's path
            # would shadow: it starts in ~40 ms, not the ~200 ms importing emu takes. It is
            # told where this process finds keystone (found, not imported).
            spec = importlib.util.find_spec("keystone")
            if spec is not None and spec.origin is not None:
                env["EMU_ASM_KEYSTONE_PATH"] = str(Path(spec.origin).parent.parent)
            self._proc = subprocess.Popen(
                [sys.executable, "-I", str(Path(__file__).with_name("_keystone_worker.py"))],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                preexec_fn=die_with_parent,
            )
        return self._proc

    def asm(self, source: str, address: int) -> dict:
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps({"source": source, "address": address}).encode() + b"\n")
            proc.stdin.flush()
            reply = self._read_reply(proc)
        except BrokenPipeError:
            reply = b""
        except BaseException:
            # Ctrl-C mid-request: the answer is no longer wanted, and close() would wait for it.
            self._kill()
            raise
        if reply is None:
            self._kill()
            return {
                "ok": False,
                "crashed": True,
                "timeout": True,
                "errno": None,
                "message": f"keystone did not finish within {ASM_TIMEOUT_S:g} s",
            }
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

    @staticmethod
    def _read_reply(proc: subprocess.Popen[bytes]) -> bytes | None:
        """One reply line, b"" if the helper died, None if it overran its time or size."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + ASM_TIMEOUT_S
        limit = 2 * MAX_IMAGE_BYTES + 4096  # hex-encoded code plus the JSON around it
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b""
            chunks.append(chunk)
            size += len(chunk)
            if chunk.endswith(b"\n"):
                return b"".join(chunks)
            if size > limit:
                return None

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._kill()
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
    if reply.get("timeout"):
        raise AsmError(_keystone_message(reply))  # locating it would take as long again
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
        # Relative .incbin paths are the caller's, not the temporary directory's.
        _run_gnu(["as", f"-march={GNU_MARCH}", "-I", os.getcwd(), "-o", "prog.o", "prog.S"], d, source)
        _run_gnu(["ld", "-T", "link.ld", "-o", "prog.elf", "prog.o"], d, source)
        _run_gnu(["objcopy", "-O", "binary", "-j", ".image", "prog.elf", "prog.bin"], d, source)
        size = (d / "prog.bin").stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise AsmError(f"the program is {size} bytes, more than the {MAX_IMAGE_BYTES >> 20} MiB allowed")
        return (d / "prog.bin").read_bytes()


def _run_gnu(argv: list[str], cwd: Path, source: str) -> None:
    try:
        proc = subprocess.run(
            [GNU_PREFIX + argv[0], *argv[1:]],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=ASM_TIMEOUT_S,
            preexec_fn=die_with_parent,
        )
    except subprocess.TimeoutExpired:
        raise AsmError(f"{argv[0]} did not finish within {ASM_TIMEOUT_S:g} s") from None
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
