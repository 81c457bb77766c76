"""PSCI boot-flow scenarios per second: emu in-process (snapshot restore, or a new VM each time)
against one ``qemu-system-aarch64 -M virt`` process per scenario; and ``emu explore`` with and
without snapshots.

Scenarios:

* ``smp_boot``: firmware/smp_boot.S on 4 vCPUs (CPU_ON each secondary, check-in, CPU_OFF,
  AFFINITY_INFO, SYSTEM_OFF), assembled once to a flat binary for QEMU;
* ``c_firmware``: firmware/c's boot_test.elf on 4 vCPUs (MMU on, SVC, UNDEF, CPU_ON, console
  output), built with ``make -C firmware/c`` (skipped without gcc-aarch64-linux-gnu).

Each emu scenario is a run under a different random-schedule seed; every run is checked to
end in SYSTEM_OFF. ``restore``: boot once, snapshot, and per scenario restore that snapshot,
reseed and run. ``rebuild``: a new VM and machine per scenario (the program itself is loaded
once, as QEMU gets a ready binary). Rates are medians over rounds; each round measures every
variant, so host noise hits them alike.

    python bench/scenarios.py [--rounds 5] [--runs 20] [--qemu-runs 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emu.abi.exits import SystemEventExit  # noqa: E402
from emu.arm.asm import assemble  # noqa: E402
from emu.kvm.vm import LOAD_ADDR, Vm  # noqa: E402
from emu.tools.explore import outcome_key  # noqa: E402
from emu.vmm.loader import Program, load_program  # noqa: E402
from emu.vmm.machine import Machine  # noqa: E402

FIRMWARE = ROOT / "firmware"
QEMU = shutil.which("qemu-system-aarch64")
CPUS = 4


def qemu_run(binary: Path, cpus: int) -> None:
    subprocess.run(
        [QEMU, "-M", "virt", "-cpu", "cortex-a72", "-smp", str(cpus), "-m", "128M", "-nographic",
         "-monitor", "none", "-serial", "stdio", "-no-reboot", "-kernel", str(binary)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def _check(result_stop) -> None:
    assert isinstance(result_stop, SystemEventExit), result_stop


def emu_rebuild(program: Program, cpus: int) -> Callable[[int], None]:
    def run(seed: int) -> None:
        vm = Vm(cpus=cpus, seed=seed, schedule="random", timeout=60)
        machine = Machine(vm, program)
        _check(machine.run().stop)
        vm.close()

    return run


def emu_restore(program: Program, cpus: int) -> Callable[[int], None]:
    vm = Vm(cpus=cpus, schedule="random", timeout=60)
    machine = Machine(vm, program)
    booted = vm.snapshot()

    def run(seed: int) -> None:
        vm.restore(booted)
        vm.reseed(seed, "random")
        _check(machine.run().stop)

    return run


def rate(run: Callable[[int], None], runs: int, first_seed: int = 0) -> float:
    start = time.perf_counter()
    for seed in range(first_seed, first_seed + runs):
        run(seed)
    return runs / (time.perf_counter() - start)


def scenario(name: str, program: Program, binary: Path | None, args: argparse.Namespace) -> dict:
    variants = {"restore": emu_restore(program, CPUS), "rebuild": emu_rebuild(program, CPUS)}
    for run in variants.values():  # warm up: translation caches, imports, first-touch pages
        run(0)
    rounds: dict[str, list[float]] = {k: [] for k in (*variants, "qemu")}
    for r in range(args.rounds):
        for key, run in variants.items():
            rounds[key].append(rate(run, args.runs, first_seed=1 + r * args.runs))
        if binary is not None and QEMU is not None:
            rounds["qemu"].append(rate(lambda _seed: qemu_run(binary, CPUS), args.qemu_runs))
    figures: dict = {"scenario": name, "cpus": CPUS}
    for key, values in rounds.items():
        if values:
            figures[f"{key}_per_s"] = round(statistics.median(values), 1)
    if rounds["qemu"]:
        for key in variants:
            ratios = [a / q for a, q in zip(rounds[key], rounds["qemu"], strict=True)]
            figures[f"{key}_vs_qemu"] = round(statistics.median(ratios), 1)
    ratios = [a / b for a, b in zip(rounds["restore"], rounds["rebuild"], strict=True)]
    figures["restore_vs_rebuild"] = round(statistics.median(ratios), 1)
    return figures


def explore(args: argparse.Namespace) -> dict:
    """``emu explore firmware/cpu_on_race.S --cpus 8 --seeds K``'s loop, both ways."""
    program = load_program(FIRMWARE / "cpu_on_race.S")
    seeds = range(args.explore_seeds)

    def rebuild() -> set[str]:
        keys = set()
        for seed in seeds:
            vm = Vm(cpus=8, seed=seed, schedule="random", timeout=60)
            machine = Machine(vm, program)
            keys.add(outcome_key(vm, machine.run()))
            vm.close()
        return keys

    def restore() -> set[str]:
        vm = Vm(cpus=8, schedule="random", timeout=60)
        machine = Machine(vm, program)
        booted = vm.snapshot()
        keys = set()
        for seed in seeds:
            vm.restore(booted)
            vm.reseed(seed, "random")
            keys.add(outcome_key(vm, machine.run()))
        return keys

    times: dict[str, list[float]] = {"rebuild": [], "restore": []}
    outcomes = {}
    for _ in range(max(1, args.rounds // 2)):
        for key, fn in (("rebuild", rebuild), ("restore", restore)):
            start = time.perf_counter()
            outcomes[key] = fn()
            times[key].append(time.perf_counter() - start)
    assert outcomes["rebuild"] == outcomes["restore"]
    rebuild_s, restore_s = statistics.median(times["rebuild"]), statistics.median(times["restore"])
    return {
        "program": "firmware/cpu_on_race.S",
        "cpus": 8,
        "seeds": args.explore_seeds,
        "rebuild_s": round(rebuild_s, 3),
        "restore_s": round(restore_s, 3),
        "speedup": round(rebuild_s / restore_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20, help="emu scenarios per round and variant")
    parser.add_argument("--qemu-runs", type=int, default=4, help="QEMU processes per round")
    parser.add_argument("--explore-seeds", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        smp = Program.flat(assemble((FIRMWARE / "smp_boot.S").read_text(), LOAD_ADDR), kind="asm")
        smp_bin = Path(tmp) / "smp_boot.bin"
        smp_bin.write_bytes(smp.segments[0].data)
        results.append(scenario("smp_boot", smp, smp_bin, args))
        if shutil.which("aarch64-linux-gnu-gcc"):
            out = Path(tmp) / "c"
            subprocess.run(["make", "-C", FIRMWARE / "c", f"OUT={out}"], check=True, capture_output=True)
            elf = out / "boot_test.elf"
            results.append(scenario("c_firmware", load_program(elf), elf, args))
    document = {"scenarios": results, "explore": explore(args), "qemu": QEMU is not None}
    if args.json:
        print(json.dumps(document, indent=2))
        return
    for s in results:
        line = f"{s['scenario']} ({s['cpus']} vCPUs): restore {s['restore_per_s']}/s, rebuild {s['rebuild_per_s']}/s"
        if "qemu_per_s" in s:
            line += (
                f", QEMU {s['qemu_per_s']}/s -> restore {s['restore_vs_qemu']}x QEMU"
                f" (rebuild {s['rebuild_vs_qemu']}x; target >= 10x)"
            )
        print(line + f"; restore/rebuild {s['restore_vs_rebuild']}x")
    e = document["explore"]
    print(
        f"explore {e['program']} --cpus {e['cpus']} --seeds {e['seeds']}: {e['rebuild_s']} s rebuilding, "
        f"{e['restore_s']} s restoring ({e['speedup']}x faster)"
    )


if __name__ == "__main__":
    main()
