"""The assembler: keystone and GNU as agree, unsafe constructs are routed or rejected, errors name lines."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from emu.arm.asm import assemble, assemble_gnu, assemble_keystone, screen
from emu.errors import AsmError
from tests.conftest import needs_gnu_as

BASE = 0x4008_0000

# Snippets both assemblers must encode identically (engine notes section 9).
AGREE = {
    "hypercalls": "hvc #0\nhvc #0x1234\nsmc #0\nsmc #0xffff\nsvc #1\nbrk #3\n",
    "system registers": "mrs x0, mpidr_el1\nmrs x1, currentel\nmrs x2, cntvct_el0\nmsr vbar_el1, x3\n"
    "msr daifclr, #2\nmsr spsel, #1\nmrs x4, s3_0_c12_c12_0\n",
    "barriers and hints": "isb\ndsb sy\ndmb ish\nsev\nsevl\nwfe\nwfi\nyield\neret\n",
    "exclusives and maintenance": "again: ldaxr x1, [x0]\nstlxr w2, x1, [x0]\ncbnz w2, again\n"
    "tlbi vmalle1is\ndc civac, x0\nic iallu\nat s1e1r, x0\n",
    "branches and labels": "start: cbz x0, done\ntbnz x1, #3, start\nb.ne start\nbl start\n"
    "adr x5, start\nadr x6, done\ndone: ret\n",
    "addressing": "ldp x29, x30, [sp], #16\nstp x29, x30, [sp, #-16]!\nstr x2, [x3, #8]!\n"
    "ldr w4, [x5, x6, lsl #2]\n",
    "data": '.align 3\nvalue: .quad 0x1122334455667788\n.word 7\n.hword 3\n.byte 1, 2\n.asciz "hi"\n',
    "macros and equates": ".equ FOO, 3\n.macro setx reg, val\n mov \\reg, #\\val\n.endm\nsetx x0, FOO\n"
    "setx x1, 7\n",
    "vector table": ".balign 0x800\nvectors:\n.rept 16\nb .\n.balign 0x80\n.endr\n",
}


@needs_gnu_as
@pytest.mark.parametrize("name", sorted(AGREE))
def test_keystone_matches_gnu_as(name: str) -> None:
    source = AGREE[name]
    assert screen(source) is None
    assert assemble_keystone(source, BASE) == assemble_gnu(source, BASE)


@needs_gnu_as
def test_literal_pools_load_the_same_values() -> None:
    # Keystone pads the pool with NOPs where GNU as pads with zeros; the loaded values
    # and the code before the pool are the same.
    source = "ldr x0, =0x84000003\nldr x1, =0xc6000040\nhvc #0\n"
    ks, gnu = assemble_keystone(source, BASE), assemble_gnu(source, BASE)
    assert ks[:12] == gnu[:12]
    for image in (ks, gnu):
        words = [int.from_bytes(image[i : i + 8], "little") for i in range(16, len(image) - 7, 4)]
        assert 0x84000003 in words and 0xC6000040 in words


@pytest.mark.parametrize(
    "source, reason",
    [
        ("adrp x0, label\nlabel: nop\n", "adrp"),
        ("add x0, x0, :lo12:label\nlabel: nop\n", ":lo12:"),
        ("ldaddal x0, x1, [x2]\n", "LSE"),
        ("casal x0, x1, [x2]\n", "LSE"),
        ("paciasp\n", "pointer-authentication"),
        ("1: b 1b\n", "numeric local labels"),
        ("nop\ncbz x0, 2f\n2: nop\n", "numeric local label"),
        (".section .text.boot\nnop\n", ".section"),
        (".text\nnop\n", "section directives"),
        (".inst 0xd503201f\n", ".inst"),
        ('.include "x.S"\n', ".include"),
        ("#include <x.h>\n", "preprocessor"),
    ],
)
def test_constructs_keystone_mishandles_are_screened(source: str, reason: str) -> None:
    found = screen(source)
    assert found is not None and reason in found.reason


@pytest.mark.parametrize(
    "source", ["mov x0, #1 // adrp is fine in a comment\n", "b label // 1: no\nlabel: nop\n"]
)
def test_comments_are_not_screened(source: str) -> None:
    assert screen(source) is None


def test_keystone_only_rejects_screened_source_with_the_line() -> None:
    with pytest.raises(AsmError) as err:
        assemble("nop\nnop\nadrp x0, there\nthere: nop\n", BASE, assembler="keystone")
    assert err.value.line == 3 and "adrp" in str(err.value) and "there" in str(err.value)


@needs_gnu_as
def test_screened_source_goes_to_gnu_as_and_is_right() -> None:
    # adrp at a non-zero base is the case keystone encodes wrongly (engine notes 0.12).
    image = assemble("adrp x0, data\nadd x0, x0, :lo12:data\nnop\n.balign 4096\ndata: .quad 1\n", BASE)
    adrp = int.from_bytes(image[:4], "little")
    immlo, immhi = (adrp >> 29) & 3, (adrp >> 5) & 0x7FFFF
    assert (immhi << 2 | immlo) == 1  # one page forward from 0x40080000
    add = int.from_bytes(image[4:8], "little")
    assert (add >> 10) & 0xFFF == 0  # data sits at a page boundary


@needs_gnu_as
def test_lse_and_local_labels_assemble_with_gnu_as() -> None:
    image = assemble("1: ldaddal x0, x1, [x2]\ncbnz x1, 1b\n", BASE)
    assert len(image) == 8


def test_keystone_crash_does_not_take_the_process_down() -> None:
    # A bare ".text" segfaults keystone 0.9.2; the helper process absorbs it.
    with pytest.raises(AsmError) as err:
        assemble_keystone(".text\nnop\n", BASE)
    assert "keystone crashed" in str(err.value)
    assert assemble_keystone("nop\n", BASE) == bytes.fromhex("1f2003d5")


@pytest.mark.parametrize(
    "source, line, words",
    [
        ("nop\nfoo x1\nnop\n", 2, "unknown instruction"),
        ("nop\nnop\nb nowhere\n", 3, "undefined symbol"),
        ("mov x0, #0x84000003\n", 1, "invalid operands"),
        ("nop\nadd x0, x1, x2, x3\n", 2, "invalid operands"),
        ("x:\nnop\nx:\n", 3, "defined twice"),
    ],
)
def test_keystone_errors_name_the_line(source: str, line: int, words: str) -> None:
    with pytest.raises(AsmError) as err:
        assemble(source, BASE, assembler="keystone")
    assert err.value.line == line and words in err.value.reason, str(err.value)
    assert err.value.text == source.splitlines()[line - 1]


def test_forward_references_do_not_confuse_line_search() -> None:
    with pytest.raises(AsmError) as err:
        assemble("b later\nnop\nbogus x9\nlater: nop\n", BASE, assembler="keystone")
    assert err.value.line == 3


@needs_gnu_as
@pytest.mark.parametrize(
    "source, line, words",
    [
        ("nop\n1: foo x1\n", 2, "unknown mnemonic"),
        ("adrp x0, nowhere\n", 1, "undefined symbol 'nowhere'"),
    ],
)
def test_gnu_errors_name_the_line(source: str, line: int, words: str) -> None:
    with pytest.raises(AsmError) as err:
        assemble(source, BASE)
    assert err.value.line == line and words in str(err.value), str(err.value)


def test_unknown_assembler_choice() -> None:
    with pytest.raises(ValueError):
        assemble("nop\n", BASE, assembler="nasm")


def test_comments_never_reach_keystone() -> None:
    # An apostrophe in a comment used to make keystone misplace errors or emit nothing.
    source = 'nop // the boot CPU\'s job\n/* a block\n comment */ mov x0, #1\n.ascii "a // b"\n'
    image = assemble(source, BASE, assembler="keystone")
    assert image[:8] == bytes.fromhex("1f2003d5200080d2") and image[8:14] == b"a // b"


def test_error_line_is_right_after_tricky_comments() -> None:
    with pytest.raises(AsmError) as err:
        assemble("nop // it's\nadd x9, x9, #62500 // too big\nnop\n", BASE, assembler="keystone")
    assert err.value.line == 2 and err.value.text == "add x9, x9, #62500 // too big"


# -- sources that would cut the input short, hang or flood an assembler ---------------------


@pytest.mark.parametrize(
    "source, line, words",
    [
        ('nop\n.ascii "abc\nnop\n', 2, "unterminated string"),
        ("nop\n\0nop\nnop\n", 2, "NUL byte"),
        ("nop\n.space 200000000\n", 2, "would emit 200000000 bytes"),
        ("nop\n.fill 0x1000000, 8\n", 2, "would emit"),
        (".rept 10000000\nnop\n.endr\n", 1, "repeats more than"),
        (".rept 2000\n.rept 2000\nnop\n.endr\n.endr\n", 2, "repeats more than"),
        (".rept 1000\n.space 100000\n.endr\n", 2, "would emit"),
    ],
)
@pytest.mark.parametrize("assembler", ["keystone", "auto"])
def test_runaway_or_truncating_sources_are_refused_with_the_line(source, line, words, assembler) -> None:
    start = time.monotonic()
    with pytest.raises(AsmError) as err:
        assemble(source, BASE, assembler=assembler)
    assert err.value.line == line and words in err.value.reason
    assert time.monotonic() - start < 2


def test_escaped_quotes_and_semicolons_are_fine() -> None:
    assert assemble('.ascii "a\\"b"\n.asciz "x;y"\nnop\n', BASE)


def test_an_empty_source_is_an_error() -> None:
    for source in ("", "\n// nothing\n", ".equ X, 1\n"):
        with pytest.raises(AsmError, match="no instructions or data"):
            assemble(source, BASE)


def test_incbin_of_a_missing_file_names_the_line() -> None:
    with pytest.raises(AsmError) as err:
        assemble('nop\n.incbin "/nonexistent/blob"\n', BASE)
    assert err.value.line == 2


def test_a_literal_out_of_reach_is_an_error_naming_the_load() -> None:
    # Keystone pools literals after the code and would silently truncate the offset.
    with pytest.raises(AsmError) as err:
        assemble("ldr x0, =0x123456789abcdef0\n.space 2000000\nnop\n", BASE)
    assert err.value.line == 1


def test_keystone_is_bounded_in_time(monkeypatch) -> None:
    import emu.arm.asm as asm

    monkeypatch.setattr(asm, "ASM_TIMEOUT_S", 0.5)
    start = time.monotonic()
    with pytest.raises(AsmError, match=r"did not finish within 0\.5 s"):
        assemble(".equ N, 50000000\n.rept N\nnop\n.endr\n", BASE, assembler="keystone")
    assert time.monotonic() - start < 3
    assert assemble("nop\n", BASE, assembler="keystone") == bytes.fromhex("1f2003d5")


def test_an_interrupted_assembly_kills_the_helper(monkeypatch) -> None:
    # Ctrl-C while keystone works: emu's exit must not wait for an answer nobody wants.
    import emu.arm.asm as asm

    def interrupted(proc):
        raise KeyboardInterrupt

    worker = asm._KeystoneWorker()
    helper = worker._start()
    monkeypatch.setattr(asm._KeystoneWorker, "_read_reply", staticmethod(interrupted))
    try:
        with pytest.raises(KeyboardInterrupt):
            worker.asm(".equ N, 50000000\n.rept N\nnop\n.endr\n", BASE)
        assert helper.poll() is not None and worker._proc is None
    finally:
        helper.kill()
        helper.wait()


def test_keystone_output_is_bounded(monkeypatch) -> None:
    import emu.arm.asm as asm

    monkeypatch.setattr(asm, "MAX_IMAGE_BYTES", 1024)
    worker = asm._KeystoneWorker()
    try:
        reply = worker.asm(".space 4096\n", BASE)
    finally:
        worker.close()
    assert not reply["ok"] and "more than" in reply["message"]


@pytest.mark.skipif(
    not Path(f"/proc/self/task/{__import__('os').getpid()}/children").exists(),
    reason="needs Linux /proc/<pid>/task/<tid>/children",
)
def test_the_keystone_helper_dies_with_emu(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    program = tmp_path / "slow.S"
    program.write_text(".equ N, 50000000\n.rept N\nnop\n.endr\n")
    emu = subprocess.Popen([sys.executable, "-m", "emu", "run", program], cwd=ROOT, stderr=subprocess.DEVNULL)
    children = Path(f"/proc/{emu.pid}/task/{emu.pid}/children")
    try:
        deadline = time.monotonic() + 20
        helpers: list[int] = []
        while not helpers and time.monotonic() < deadline:
            time.sleep(0.1)
            helpers = [int(p) for p in children.read_text().split()] if children.exists() else []
        assert helpers, "the helper never started"
    finally:
        emu.send_signal(signal.SIGKILL)
        emu.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in helpers):
        time.sleep(0.05)
    alive = [pid for pid in helpers if Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"
