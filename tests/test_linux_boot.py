"""An unmodified Debian 6.1 arm64 kernel boots under the modelled KVM, with its in-kernel vGIC.

Needs ``python3 firmware/linux/fetch.py`` (CI runs it; ``$EMU_LINUX_CACHE`` points
elsewhere). Each boot brings every secondary up through PSCI CPU_ON, runs /init (the
processor lines of /proc/cpuinfo and the uptime on ttyAMA0) and ends with SYSTEM_OFF.
``bench/linux_boot.py`` covers every vCPU count; here 2 and 4 vCPUs on GICv3 and 2 on
GICv2, plus the same boot twice for byte-identical JSON.
"""

from __future__ import annotations

import json

import pytest

from emu.abi.exits import SystemEventExit
from emu.tools.linux import END_MARKER, boot_linux, cache_dir, linux_assets
from emu.tools.report import run_json
from tests.conftest import FIRMWARE

CACHE = FIRMWARE / "linux" / ".cache"
ASSETS = linux_assets(CACHE)
pytestmark = pytest.mark.skipif(
    ASSETS is None,
    reason=f"no Debian kernel and initramfs in {cache_dir(CACHE)}: run python3 firmware/linux/fetch.py",
)


def check_boot(cpus: int, gic: str):
    boot = boot_linux(ASSETS, cpus, gic, timeout=300)
    console = boot.console
    stop = boot.result.stop
    assert isinstance(stop, SystemEventExit) and stop.type.name == "SHUTDOWN", (stop, console[-2000:])
    if cpus > 1:
        assert f"smp: Brought up 1 node, {cpus} CPUs" in console
    cpu_ons = [e for e in boot.vm.psci_events if e.name == "PSCI_CPU_ON64"]
    assert [e.result for e in cpu_ons] == [0] * (cpus - 1)
    assert [f"processor\t: {i}" for i in range(cpus)] == [
        line for line in console.splitlines() if line.startswith("processor")
    ]
    assert "emu-linux-init: uptime " in console and END_MARKER in console
    assert "Input/output error" not in console and "Kernel panic" not in console
    # The timer ticks: jiffies advance, so the uptime /init prints is past zero.
    uptime = float(console.split("emu-linux-init: uptime ")[1].split()[0])
    assert uptime > 0
    return boot


@pytest.mark.parametrize(("cpus", "gic"), [(2, "v3"), (4, "v3"), (2, "v2")])
def test_debian_kernel_boots(cpus: int, gic: str) -> None:
    boot = check_boot(cpus, gic)
    counts = {c["intid"]: c for c in run_json(boot.machine, boot.result)["interrupts"]["counts"]}
    assert counts[27]["acked"] > 0  # virtual timer ticks were taken
    assert "ttyAMA0 at MMIO 0x9000000 (irq = " in boot.console  # the PL011 got its SPI
    if cpus > 1:
        assert any(i < 16 and c["acked"] for i, c in counts.items())  # IPIs between vCPUs


def test_same_seed_same_json() -> None:
    # Console timestamps included: virtual time follows executed instructions only.
    first, second = (
        json.dumps(run_json(b.machine, b.result)) for b in (check_boot(1, "v3"), check_boot(1, "v3"))
    )
    assert first == second
