"""Boot many vCPUs through PSCI CPU_ON to SYSTEM_OFF: wall time and memory per vCPU.

Runs firmware/smp_boot.S (the boot CPU starts every secondary, each checks in and turns
itself off, the boot CPU waits with AFFINITY_INFO, then SYSTEM_OFF) with N vCPUs under
round robin, and prints the time to create the VM, the time to run it, and the resident
memory the vCPUs added, per vCPU (targets: 64 vCPUs in <= 2 s, <= 20 MiB per vCPU).

    python bench/smp_boot.py [--cpus 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from emu import Vm
from emu.abi.exits import SystemEventExit
from emu.vmm.loader import load_program
from emu.vmm.machine import Machine

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware" / "smp_boot.S"


def rss_mib() -> float:
    """Current resident set size (Linux /proc), in MiB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / (1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    image = load_program(FIRMWARE)
    rss_before = rss_mib()
    start = time.perf_counter()
    vm = Vm(cpus=args.cpus, timeout=120)
    machine = Machine(vm, image)
    created = time.perf_counter()
    result = machine.run()
    finished = time.perf_counter()
    rss_after = rss_mib()
    assert isinstance(result.stop, SystemEventExit), result.stop
    assert all(v.power.value == "off" for v in vm.vcpus)
    cpu_ons = [e for e in vm.psci_events if e.name == "PSCI_CPU_ON64" and e.result == 0]
    assert len(cpu_ons) == args.cpus - 1

    figures = {
        "cpus": args.cpus,
        "create_s": round(created - start, 3),
        "run_s": round(finished - created, 3),
        "total_s": round(finished - start, 3),
        "hypercalls": len(vm.hypercalls),
        "virtual_time_ms": round(vm.clock.ns / 1e6, 3),
        "rss_per_vcpu_mib": round((rss_after - rss_before) / args.cpus, 2),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"{args.cpus} vCPUs booted via CPU_ON to SYSTEM_OFF: {figures['total_s']:.2f} s "
        f"(create {figures['create_s']:.2f} s, run {figures['run_s']:.2f} s; target <= 2 s)"
    )
    print(f"{figures['hypercalls']} hypercalls, {figures['virtual_time_ms']} ms of guest time")
    print(f"resident memory per vCPU: {figures['rss_per_vcpu_mib']:.2f} MiB (target <= 20 MiB)")


if __name__ == "__main__":
    main()
