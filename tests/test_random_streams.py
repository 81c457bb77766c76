"""The random-stream campaign (``bench/random_streams.py``): a small one finds nothing wrong,
and each kind of defect it exists to find is reported when one is planted."""

from __future__ import annotations

import errno
import importlib.util
import json
import struct
import subprocess
import sys

import pytest

from emu.errors import KvmError
from emu.tools import cli
from emu.tools.report import EXIT_STATUS
from emu.vmm.machine import Machine
from tests.conftest import ROOT, needs_gnu_as


def _load():
    spec = importlib.util.spec_from_file_location("random_streams", ROOT / "bench" / "random_streams.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rs = _load()


def test_a_small_campaign_in_both_modes_finds_no_defect() -> None:
    campaign = rs.run_campaign(seed=0, count=40, vectors="both", jobs=1)
    assert [r.index for r in campaign.results] == list(range(40))
    assert [r.problem for r in campaign.results if r.problem] == []
    table = campaign.table()
    assert sum(row["vectors"] for row in table.values()) == 20
    assert sum(row["no vectors"] for row in table.values()) == 20
    # Vectors let streams run on to SYSTEM_OFF or the budget; without them a fault ends most.
    assert table["fault"]["no vectors"] > table["fault"]["vectors"]
    assert table["system_event"]["vectors"] + table["budget"]["vectors"] > 10


def test_streams_depend_only_on_seed_and_index() -> None:
    assert rs.make_stream(3, 17) == rs.make_stream(3, 17)
    assert rs.make_stream(3, 17).image != rs.make_stream(4, 17).image
    stream = rs.make_stream(0, 0)
    assert stream.vectors and not rs.make_stream(0, 1).vectors
    assert not rs.make_stream(0, 0, "no").vectors and rs.make_stream(0, 1, "yes").vectors
    assert 16 <= len(stream.body) <= 63 + 7  # the last item may be several words (MOVs, then accesses)
    assert stream.words[-len(rs.TERMINATOR) :] == rs.TERMINATOR


def test_results_do_not_depend_on_jobs(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # spawned workers import the module by name
    monkeypatch.setattr(rs, "CHUNK", 3)
    one = rs.run_campaign(seed=7, count=8, jobs=1).results
    two = rs.run_campaign(seed=7, count=8, jobs=2).results
    assert [(r.index, r.kind, r.detail, r.problem) for r in one] == [
        (r.index, r.kind, r.detail, r.problem) for r in two
    ]


def test_a_stream_whose_run_raises_is_reported(monkeypatch, tmp_path, capsys) -> None:
    run = Machine.run

    def planted(self, *args, **kwargs):
        if self.program.name == "stream-3":
            raise KeyError("planted")
        return run(self, *args, **kwargs)

    monkeypatch.setattr(Machine, "run", planted)
    status = rs.main(["--count", "6", "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 1
    assert "defects: 1" in out and "stream 3 (no vectors): emu: internal error: KeyError: 'planted'" in out
    words = " ".join(f"{w:08x}" for w in rs.make_stream(0, 3).words)
    assert f"  words: {words}" in out
    assert (tmp_path / "stream-0-3.bin").read_bytes() == rs.make_stream(0, 3).image
    assert f"emu run {tmp_path / 'stream-0-3.bin'} --format flat" in out


@pytest.mark.parametrize(
    "second, problem",
    [
        (rs.Outcome("budget", "instruction budget of 20000 exhausted", "b"), "nondeterministic"),
        (rs.Outcome("timeout", "timeout after 5 s"), "hang"),
        (rs.Outcome("error", "EmuError: vCPU 0: Unicorn stopped with error 6"), "emu gave up"),
        (rs.Outcome("fault", "data abort at an instruction emu cannot decode"), "emu gave up"),
    ],
    ids=["nondeterminism", "hang", "unicorn-error", "cannot-decode"],
)
def test_each_kind_of_defect_is_named(monkeypatch, second, problem: str) -> None:
    first = rs.Outcome("budget", "instruction budget of 20000 exhausted", "a")
    outcomes = iter([first, second])
    monkeypatch.setattr(rs, "run_stream", lambda stream: next(outcomes))
    result = rs.check_stream(0, 0)
    assert result.problem is not None and result.problem.startswith(problem), result.problem
    assert rs.problem_of(first, first) is None


def test_the_written_image_reproduces_with_emu_run(tmp_path, capsys) -> None:
    campaign = rs.Campaign(seed=0, count=4, vectors="both")
    for index in range(4):
        stream = rs.make_stream(0, index)
        outcome = rs.run_stream(stream)
        _path, command = rs.reproducer(campaign, rs.Result(index, stream.vectors, outcome.kind, ""), tmp_path)
        status = cli.main([*command.split()[1:], "--json"])
        stop = json.loads(capsys.readouterr().out)["stop"]
        assert stop["reason"] == outcome.kind
        assert status == EXIT_STATUS[outcome.kind]


@needs_gnu_as
def test_hand_encoded_instructions_are_what_gnu_as_makes(tmp_path) -> None:
    cases = [
        ("movk x5, #0xbeef, lsl #48", rs.movk(5, 0xBEEF, 3)),
        ("msr vbar_el1, x1", rs.msr(rs.VBAR_EL1, 1)),
        ("mrs x30, esr_el1", rs.mrs(30, rs.ESR_EL1)),
        ("lsr x30, x30, #27", rs.lsr_imm(30, 30, 27)),
        ("cmp x30, #0x10", rs.cmp_imm(30, 0x10)),
        ("orr x30, x30, #0x1c0", rs.orr_imm(30, 30, 58, 2)),
        ("mov sp, x9", rs.add_imm(31, 9, 0)),
        ("msr tcr_el1, x1", rs.msr(rs.TCR_EL1, 1)),
        ("msr mdscr_el1, x2", rs.msr(rs.sysreg(2, 0, 0, 2, 2), 2)),
        ("dc zva, x3", rs.SYS_OPS[0] | 3),
        ("tlbi vae1is, x3", rs.SYS_OPS[10] | 3),
        ("hvc #0x1234", rs.hvc(0x1234)),
        ("b .-8", rs.b(-2)),
    ]
    source = tmp_path / "enc.s"
    source.write_text("\n".join(text for text, _ in cases) + "\n")
    obj, raw = tmp_path / "enc.o", tmp_path / "enc.bin"
    subprocess.run(["aarch64-linux-gnu-as", str(source), "-o", str(obj)], check=True)
    subprocess.run(
        ["aarch64-linux-gnu-objcopy", "-O", "binary", "-j", ".text", str(obj), str(raw)], check=True
    )
    data = raw.read_bytes()
    assert list(struct.unpack(f"<{len(data) // 4}I", data)) == [word for _, word in cases]


def test_a_host_without_memory_for_the_vm_is_not_a_defect(monkeypatch, tmp_path, capsys) -> None:
    def no_memory(*args, **kwargs):
        raise KvmError(errno.ENOMEM, "128 MiB of guest RAM and 1 vCPU need about 132 MiB")

    monkeypatch.setattr(rs, "Vm", no_memory)
    monkeypatch.setattr(rs.time, "sleep", lambda seconds: None)
    assert rs.main(["--count", "2", "--output", str(tmp_path)]) == rs.EXIT_INCOMPLETE
    out = capsys.readouterr().out
    assert "not run, the host had no memory for their VM: streams 0, 1" in out and "defects: 0" in out
