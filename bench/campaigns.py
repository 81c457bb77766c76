"""Campaign scaling: ``emu explore`` on 1 vs 2 processes and on a Dask cluster, fuzz throughput.

Runs ``emu explore firmware/cpu_on_race.S --cpus 8 --seeds 400`` with ``--jobs 1`` and
``--jobs 2``, each a command in a new process timed from ``cli.main`` on, and in-process with
``--dask`` on a LocalCluster of two worker processes (started, and warmed with one small
campaign, before the clock starts), checks the three outputs are identical,
and prints the speed-ups measured in this run, each the median over rounds of the three
measured back to back (targets on 2 cores: >= 1.8x for --jobs 2,
>= 1.6x for Dask). Then ``emu fuzz`` throughput, examples per second (each example runs
twice, for the determinism check), with every case on one restored booted VM (what
``emu fuzz`` does) and with a new VM built for every case, and the ratio of the two.

    python bench/campaigns.py [--seeds 400] [--examples 200] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from emu.tools import cli
from emu.tools.fuzz import fuzz_chunk, plan

RACE = str(Path(__file__).resolve().parent.parent / "firmware" / "cpu_on_race.S")


# One ``emu explore`` command in a process of its own (as a user runs it, so its pool may
# fork: this process has the Dask cluster's threads), timed from ``cli.main`` on: the
# interpreter start-up before it is the same for every variant and is reported apart.
_TIMED_EXPLORE = """
import contextlib, io, json, sys, time
from emu.tools import cli
out, err = io.StringIO(), io.StringIO()
start = time.perf_counter()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    status = cli.main(sys.argv[1:])
print(json.dumps({"elapsed": time.perf_counter() - start, "status": status, "out": out.getvalue(),
                  "err": err.getvalue()}))
"""


def explore(seeds: int, *extra: str) -> tuple[float, str]:
    argv = ["explore", RACE, "--cpus", "8", "--seeds", str(seeds), "--json", *extra]
    proc = subprocess.run(
        [sys.executable, "-c", _TIMED_EXPLORE, *argv], capture_output=True, text=True, check=False
    )
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit(f"explore {' '.join(extra)} failed: {proc.stderr}") from None
    if doc["status"] != 0:
        raise SystemExit(f"explore {' '.join(extra)} failed: {doc['err']}")
    return doc["elapsed"], doc["out"]


def explore_here(seeds: int, *extra: str) -> tuple[float, str]:
    """The same command in this process: for ``--dask``, whose client (dask.distributed's
    import, the connection) a driver pays once, not per campaign; the warm-up paid it."""
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["explore", RACE, "--cpus", "8", "--seeds", str(seeds), "--json", *extra])
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"explore {' '.join(extra)} failed: {err.getvalue()}")
    return elapsed, out.getvalue()


def startup_s() -> float:
    """Wall time of starting Python and importing emu's CLI, which every command pays once."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import emu.tools.cli"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=400)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="ratios are medians over rounds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    try:
        from dask.distributed import LocalCluster
    except ImportError:
        LocalCluster = None
    rounds: list[tuple[float, float, float | None]] = []
    with contextlib.ExitStack() as stack:
        address = None
        if LocalCluster is not None:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=2,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                )
            )
            address = cluster.scheduler_address
            explore_here(20, "--dask", address)  # warm the workers' imports and this client
        for _ in range(args.rounds):
            # Each round measures all three back to back, so host noise hits them alike.
            one, out1 = explore(args.seeds)
            two, out2 = explore(args.seeds, "--jobs", "2")
            assert out1 == out2, "--jobs 2 changed the output"
            dask_s = None
            if address is not None:
                dask_s, out3 = explore_here(args.seeds, "--dask", address)
                assert out1 == out3, "--dask changed the output"
            rounds.append((one, two, dask_s))
    one = statistics.median(r[0] for r in rounds)
    two = statistics.median(r[1] for r in rounds)
    results: dict[str, float] = {
        "seeds": args.seeds,
        "jobs1_s": one,
        "jobs2_s": two,
        "jobs2_speedup": statistics.median(r[0] / r[1] for r in rounds),
    }
    start = results["startup_s"] = statistics.median(startup_s() for _ in range(3))
    results["jobs2_speedup_with_startup"] = (one + start) / (two + start)
    if address is not None:
        results["dask_s"] = statistics.median(r[2] for r in rounds if r[2] is not None)
        results["dask_speedup"] = statistics.median(r[0] / r[2] for r in rounds if r[2] is not None)

    for mode, restore in (("restore", True), ("rebuild", False)):
        chunks = [dataclasses.replace(c, restore=restore) for c in plan("rfc-2021", args.examples, seed=0)]
        start = time.perf_counter()
        examples = sum(fuzz_chunk(chunk).examples for chunk in chunks)
        results[f"fuzz_{mode}_examples_per_s"] = examples / (time.perf_counter() - start)
    results["fuzz_examples"] = examples
    results["fuzz_restore_speedup"] = (
        results["fuzz_restore_examples_per_s"] / results["fuzz_rebuild_examples_per_s"]
    )

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"explore {args.seeds} seeds, 8 vCPUs, median of {args.rounds} rounds: --jobs 1 {one:.2f} s, "
        f"--jobs 2 {two:.2f} s: {results['jobs2_speedup']:.2f}x (target >= 1.8x); with the "
        f"{results['startup_s']:.2f} s interpreter start-up each command also pays: "
        f"{results['jobs2_speedup_with_startup']:.2f}x"
    )
    if "dask_s" in results:
        print(
            f"explore on a 2-worker Dask LocalCluster: {results['dask_s']:.2f} s: "
            f"{results['dask_speedup']:.2f}x (target >= 1.6x)"
        )
    print(
        f"fuzz: {examples} examples: {results['fuzz_restore_examples_per_s']:.1f} examples/s on a restored "
        f"booted VM, {results['fuzz_rebuild_examples_per_s']:.1f} examples/s building a VM per case: "
        f"{results['fuzz_restore_speedup']:.2f}x"
    )


if __name__ == "__main__":
    main()
