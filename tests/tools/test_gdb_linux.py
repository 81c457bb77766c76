"""gdb on the Debian kernel: stop a secondary at its physical entry with a hardware breakpoint.

Needs gdb-multiarch and ``python3 firmware/linux/fetch.py`` (CI has both).
"""

from __future__ import annotations

import re

import pytest

from emu.tools.linux import BOOTARGS, LINUX_QUANTUM, MEM, linux_assets
from tests.conftest import FIRMWARE
from tests.tools.test_gdb_vm import EmuUnderGdb, needs_gdb

ASSETS = linux_assets(FIRMWARE / "linux" / ".cache")


@needs_gdb
@pytest.mark.skipif(ASSETS is None, reason="no Debian kernel: run python3 firmware/linux/fetch.py")
def test_hardware_breakpoint_on_the_secondary_entry_of_a_linux_boot() -> None:
    assert ASSETS is not None
    emu = EmuUnderGdb(
        str(ASSETS.image), "--cpus", "2", "--mem", f"{MEM >> 20}M", "--initrd", str(ASSETS.initrd),
        "--append", BOOTARGS, "--quantum", str(LINUX_QUANTUM), "--timeout", "120",
    )  # fmt: skip
    out = emu.gdb(
        "monitor break-on psci CPU_ON",
        "continue",  # the boot CPU's CPU_ON(1, entry, ctx), stopped before KVM answers it
        "p/x $x2",
        "monitor break-on clear",
        "hbreak *$x2",  # the secondary's entry: a physical address, its MMU is off
        "continue",
        "p/x $pc",
        "info threads",
        "delete",
        "continue",
    )
    status, emu_out = emu.finish()
    assert status == 0, (out[-3000:], emu_out[-3000:])
    entry = int(re.search(r"\$1 = (0x[0-9a-f]+)", out).group(1), 16)
    assert 0x4000_0000 <= entry < 0x4000_0000 + MEM
    assert f"Hardware assisted breakpoint 1 at {entry:#x}" in out, out[-3000:]
    assert re.search(rf"Thread 2 hit Breakpoint 1, 0x0*{entry:x} ", out), out[-3000:]
    assert f"$2 = {entry:#x}" in out
    assert "smp: Brought up 1 node, 2 CPUs" in emu_out and "stop: system event SHUTDOWN" in emu_out
