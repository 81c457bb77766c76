"""The trace: one ordered event model, JSON Lines round trip, displays, timeline, coverage."""

from __future__ import annotations

import re

import pytest

from emu.abi.trace import read_jsonl
from emu.tools import coverage
from emu.vmm.boot import boot
from tests.conftest import FIRMWARE, run_cli


@pytest.fixture(scope="module")
def smp():
    return boot(FIRMWARE / "smp_boot.S", cpus=4)


def test_events_are_ordered_and_typed(smp) -> None:
    trace = smp.vm.trace
    kinds = {e.kind for e in trace.events}
    assert kinds == {"hypercall", "psci", "power", "vm"}
    assert trace.hypercalls == smp.vm.hypercalls and trace.psci == smp.vm.psci_events
    times = [e.time_ns for e in trace.events]
    assert times == sorted(times)
    assert trace.initial_power == {0: "on", 1: "off", 2: "off", 3: "off"}
    assert [e.what for e in trace.vm_events] == ["system_event", "stop"]


def test_jsonl_round_trip(smp, tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    smp.vm.trace.write_jsonl(path)
    back = read_jsonl(path)
    assert back.events == smp.vm.trace.events
    assert back.initial_power == smp.vm.trace.initial_power and back.profile == "rfc-2021"


def test_cli_trace_file_reads_back(tmp_path) -> None:
    path = tmp_path / "run.jsonl"
    result = run_cli("run", FIRMWARE / "exceptions.S", "--trace", path)
    assert result.status == 0
    trace = read_jsonl(path)
    assert len(trace.exceptions) == 14 and trace.exceptions[0].ec == 0
    assert trace.hypercalls[-1].name == "PSCI_SYSTEM_OFF"


def test_instruction_trace_is_off_unless_asked(tmp_path) -> None:
    assert boot(FIRMWARE / "trng.S").vm.trace.insns == []
    path = tmp_path / "insns.jsonl"
    run_cli("run", FIRMWARE / "smc_conduit.S", "--trace-insns", "--trace", path)
    insns = read_jsonl(path).insns
    assert insns[0].pc == 0x4008_0000 and insns[0].text == "mov x0, #0x84000000"
    assert any(i.text == "smc #0" for i in insns)


def test_bad_trace_file(tmp_path) -> None:
    from emu.errors import ImageError

    path = tmp_path / "junk.jsonl"
    path.write_text('{"kind": "header", "profile": "rfc-2021", "initial_power": {}}\nnot json\n')
    with pytest.raises(ImageError, match=r"junk\.jsonl:2"):
        read_jsonl(path)


def test_unreadable_trace_files(tmp_path) -> None:
    from emu.errors import ImageError

    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\x90\xff\x00" * 30)
    (tmp_path / "dir.jsonl").mkdir()
    for path, words in [
        (tmp_path / "missing.jsonl", "no such file"),
        (tmp_path / "dir.jsonl", "is a directory"),
        (binary, "not an emu trace (not UTF-8 text)"),
    ]:
        with pytest.raises(ImageError, match=f"{path.name}: {re.escape(words)}"):
            read_jsonl(path)
    result = run_cli("coverage", tmp_path / "missing.jsonl")
    assert (result.status, result.stderr) == (1, f"emu: error: {tmp_path / 'missing.jsonl'}: no such file\n")


def test_text_and_html_displays(smp) -> None:
    trace = smp.vm.trace
    html = trace._repr_html_()
    assert "<table>" in html and "PSCI_CPU_ON64(target=0x1, entry=" in html and "SUCCESS" in html
    assert "vCPU 1 on" in html
    from emu.tools.display import trace_text

    text = trace_text(trace)
    assert "PSCI_SYSTEM_OFF" in text and text.startswith("Trace(")
    assert "<table>" in smp.vm._repr_html_() and "<table>" in smp.vm.vcpus[0]._repr_html_()
    assert "x0 0x" in repr(smp.vm.vcpus[0].get_regs())
    assert "SystemEventExit(vcpu=0, type=SHUTDOWN" in smp.vm.hypercalls[-1].exit._repr_html_()


def test_timeline_picture(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "t.png"
    result = run_cli("run", FIRMWARE / "smp_boot.S", "--cpus", "8", "--plot", path)
    assert result.status == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    fig = boot(FIRMWARE / "smp_boot.S", cpus=8).vm.trace.plot()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert labels.count("CPU_ON64") == 8 and labels.count("CPU_OFF") == 7 and "SYSTEM_OFF" in labels
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"vCPU {i}" for i in range(8)]


def test_coverage_report(tmp_path) -> None:
    cov = coverage.Coverage()
    cov.add(boot(FIRMWARE / "psci_boot_check.S").vm.trace)
    report = cov.report()["rfc-2021"]
    assert report["groups"]["ARCH"]["covered"] == 3
    assert "SMCCC_ARCH_WORKAROUND_2" in report["groups"]["ARCH"]["missing"]
    assert report["groups"]["PSCI"]["results"]["PSCI_FEATURES"] == ["NOT_SUPPORTED (-1)", "SUCCESS"]


def test_coverage_command(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    run_cli("run", FIRMWARE / "trng.S", "--trace", path)
    result = run_cli("coverage", path, FIRMWARE / "vendor_call.S", "--cap", "hvc-to-user", "--json")
    assert result.status == 0
    report = result.json()["rfc-2021"]
    assert report["groups"]["TRNG"]["covered"] == 5
    assert "VENDOR_HYP64:0x0040" in report["forwarded_or_unhandled"]
    text = run_cli("coverage", path)
    assert text.stdout.startswith("ABI coverage, profile rfc-2021:")


def test_interrupt_events_round_trip(tmp_path) -> None:
    from emu.abi.trace import InterruptEvent, read_jsonl
    from emu.vmm.boot import boot
    from tests.test_syshook import TIMER_IRQ

    result = boot(source=TIMER_IRQ)
    trace = result.vm.trace
    assert [type(e) for e in trace.interrupts] == [InterruptEvent] * 3
    path = tmp_path / "trace.jsonl"
    trace.write_jsonl(path)
    again = read_jsonl(path)
    assert again.interrupts == trace.interrupts
    assert [e.what for e in again.interrupts] == ["raised", "acked", "completed"]
