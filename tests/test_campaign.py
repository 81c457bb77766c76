"""Campaigns that scale: --jobs (a process pool), --dask (a real LocalCluster of two worker
processes on loopback) and the pytest kit under pytest-xdist; output never depends on how
the work was spread, and every failure is one `emu: error:` line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from emu.tools.campaign import run_campaign
from tests.conftest import FIRMWARE, ROOT, run_cli

RACE = str(FIRMWARE / "cpu_on_race.S")


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def fail_on_zero_else_sleep(x: int) -> int:
    if x == 0:
        raise ValueError("zero")
    time.sleep(30)
    return x


def blocks_ctrl_c(_x: int) -> bool:
    return signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_pool_results_come_back_in_item_order() -> None:
    seen: list[int] = []
    assert run_campaign(square, [5, 1, 4, 2], jobs=2, on_result=lambda i, _r: seen.append(i)) == [
        25,
        1,
        16,
        4,
    ]
    assert sorted(seen) == [0, 1, 2, 3]


def test_a_worker_error_reaches_the_caller() -> None:
    with pytest.raises(ValueError, match="three"):
        run_campaign(fail_on_three, [1, 2, 3, 4], jobs=2)


def test_workers_leave_ctrl_c_to_the_parent() -> None:
    # A terminal's Ctrl-C reaches the workers too; one waiting for work would print a traceback.
    assert run_campaign(blocks_ctrl_c, [0, 1], jobs=2) == [True, True]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_worker_error_does_not_wait_for_the_items_still_running() -> None:
    start = time.monotonic()
    with pytest.raises(ValueError, match="zero"):
        run_campaign(fail_on_zero_else_sleep, [1, 0, 2, 3], jobs=2)
    assert time.monotonic() - start < 15


def test_ctrl_c_stops_explore_workers_that_spin(tmp_path) -> None:
    # kill -INT to emu alone: each worker runs a guest that would spin until its 60 s timeout.
    program = tmp_path / "spin.S"
    program.write_text("spin: b spin\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "emu", "explore", program, "--seeds", "100", "--jobs", "2", "--timeout", "60"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        time.sleep(3)  # the workers are spawned and in their first seed
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, stderr = proc.communicate(timeout=20)
        took = time.monotonic() - sent
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the workers too, should they outlive it
        proc.wait()
    assert (proc.returncode, stderr.strip()) == (130, "emu: interrupted")
    assert took < 2


def _explore_in_own_group(*extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "emu", "explore", RACE, "--cpus", "8", "--seeds", "100000", *extra],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = open(f"/proc/{entry}/stat").read()  # noqa: SIM115
                fields = stat[stat.rindex(")") + 2 :].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    members.append(int(entry))
    return members


def test_an_interrupted_explore_ends_its_progress_line_first() -> None:
    proc = _explore_in_own_group("--jobs", "2")
    try:
        time.sleep(3)  # chunks have finished: the bar is drawn
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group
        _, stderr = proc.communicate(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    lines = stderr.split("\n")
    assert proc.returncode == 130
    assert lines[-2:] == ["emu: interrupted", ""] and lines[-3].lstrip("\r").startswith("exploring [")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_explore() -> None:
    proc = _explore_in_own_group("--jobs", "2")
    try:
        time.sleep(3)
        assert len(_group_members(proc.pid)) >= 3  # emu and its two workers
        proc.kill()  # kill -9: emu cannot clean up
        proc.wait()
        deadline = time.monotonic() + 2
        while _group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _group_members(proc.pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()


# A campaign of many short items, Ctrl-C'd while they run.
INTERRUPTED_CAMPAIGN = """
import os, signal, threading, time
from emu.tools.campaign import run_campaign
threading.Timer(3, os.kill, (os.getpid(), signal.SIGINT)).start()  # once all are submitted
try:
    run_campaign(time.sleep, [0.002] * 20000, jobs=2)
except KeyboardInterrupt:
    print("interrupted")
"""


def test_ctrl_c_among_many_pending_items_never_hangs() -> None:
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", INTERRUPTED_CAMPAIGN],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its workers too, should it hang
            proc.wait()
        assert out == "interrupted\n", err


def test_explore_with_jobs_prints_the_same_bytes() -> None:
    args = ("explore", RACE, "--cpus", "4", "--seeds", "45", "--json")
    one = run_cli(*args, timeout=180)
    two = run_cli(*args, "--jobs", "2", timeout=180)
    assert one.status == 0, one.stderr
    assert one.stdout == two.stdout
    assert "exploring [" in two.stderr and "45/45" in two.stderr


def test_explore_with_a_vmm_file_on_workers_matches_one_process() -> None:
    args = (
        "explore",
        str(FIRMWARE / "hotadd.S"),
        "--cpus",
        "4",
        "--seeds",
        "25",
        "--vmm",
        str(FIRMWARE / "hotadd_vmm.py"),
        "--cap",
        "hvc-to-user",
        "--cap",
        "psci-to-user",
    )
    one = run_cli(*args, timeout=180)
    two = run_cli(*args, "--jobs", "2", timeout=180)
    assert one.status == 0, one.stderr
    assert one.stdout == two.stdout and "DENIED (-3) x1" in one.stdout


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("dask.distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close(timeout=30)


def test_explore_and_fuzz_on_a_dask_cluster_match_one_process(dask_cluster) -> None:
    args = ("explore", RACE, "--cpus", "4", "--seeds", "30", "--json")
    local = run_cli(*args, timeout=180)
    remote = run_cli(*args, "--dask", dask_cluster, timeout=180)
    assert remote.status == 0, remote.stderr
    assert remote.stdout == local.stdout
    fuzz = ("fuzz", "--examples", "30", "--seed", "5")
    local = run_cli(*fuzz, timeout=180)
    remote = run_cli(*fuzz, "--dask", dask_cluster, timeout=180)
    assert remote.status == 0, remote.stderr
    assert remote.stdout == local.stdout


def _cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def test_unreachable_scheduler_is_one_error_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "emu", "explore", RACE, "--seeds", "2", "--dask", "tcp://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=_cli_env(EMU_DASK_TIMEOUT="1"),
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("emu: error: --dask tcp://127.0.0.1:9: cannot reach the scheduler")
    assert proc.stderr.count("\n") == 1, proc.stderr


def test_dask_missing_is_one_error_line(tmp_path) -> None:
    (tmp_path / "dask").mkdir()
    (tmp_path / "dask" / "__init__.py").write_text("raise ImportError('no dask', name='dask')\n")
    proc = subprocess.run(
        [sys.executable, "-m", "emu", "fuzz", "--examples", "1", "--dask", "tcp://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=_cli_env(PYTHONPATH=str(tmp_path)),
    )
    assert proc.returncode == 1
    assert proc.stderr == "emu: error: --dask needs dask.distributed: pip install 'hvc-emu[cluster]'\n"


def test_the_pytest_kit_runs_under_xdist(tmp_path) -> None:
    pytest.importorskip("xdist")
    (tmp_path / "test_boot_flows.py").write_text(
        textwrap.dedent(
            f"""
            from hypothesis import given, settings
            from emu.testing.strategies import smccc_calls
            from emu.tools.fuzz import run_case
            from emu.vmm.machine import Vmm

            def test_smp_boot(emu_boot, emu_schedule):
                boot = emu_boot({str(FIRMWARE / "smp_boot.S")!r}, cpus=4, schedule=emu_schedule)
                boot.assert_system_event("SHUTDOWN")

            def answer_everything(vcpu, exit_):
                return 0

            @settings(max_examples=10, deadline=None, database=None)
            @given(smccc_calls("rfc-2021", caps=("ARM_HVC_TO_USER",)))
            def test_my_vmm_answers_every_call(case):
                outcome = run_case(case, Vmm(answer_everything))
                assert not outcome.stop.startswith("host exception"), outcome.stop
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--emu-seeds", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "bringing up nodes" in proc.stdout and "4 passed" in proc.stdout, proc.stdout[-2000:]


def test_workers_are_forked_only_from_a_single_threaded_process(monkeypatch) -> None:
    from emu.tools import campaign

    monkeypatch.setattr(campaign.threading, "active_count", lambda: 1)
    assert campaign._start_method() == ("fork" if sys.platform == "linux" else "spawn")
    # A fork could leave another thread's lock held forever in the child.
    monkeypatch.setattr(campaign.threading, "active_count", lambda: 2)
    assert campaign._start_method() == "spawn"
