"""Boot the Debian 6.1 kernel + busybox initramfs to SYSTEM_OFF: emu per vCPU count, and QEMU TCG.

For each configuration (1, 2, 4, 8 vCPUs on GICv3; 1, 2, 4 on GICv2) emu boots the kernel
fetched by ``firmware/linux/fetch.py`` until /init powers the machine off, checks the boot
(every secondary up, /init's output on ttyAMA0, SYSTEM_OFF) and reports guest
instructions, wall time and guest MIPS. QEMU's TCG boots the same kernel and initramfs
(``qemu-system-aarch64 -M virt -cpu cortex-a72 -smp N -m 512``, ``-no-reboot``) in the same
run, and the ratio emu / QEMU is the figure of merit (target: 4 vCPUs within 3x).

    python bench/linux_boot.py [--configs 4:v3,2:v2] [--no-qemu] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emu.abi.exits import SystemEventExit  # noqa: E402
from emu.arm import syshook  # noqa: E402
from emu.tools.linux import BOOTARGS, END_MARKER, LinuxAssets, boot_linux, cache_dir, linux_assets  # noqa: E402

CACHE = ROOT / "firmware" / "linux" / ".cache"
CONFIGS = ((1, "v3"), (2, "v3"), (4, "v3"), (8, "v3"), (1, "v2"), (2, "v2"), (4, "v2"))


def emu_boot(assets: LinuxAssets, cpus: int, gic: str) -> dict:
    boot = boot_linux(assets, cpus, gic)
    console = boot.console
    ok = (
        isinstance(boot.result.stop, SystemEventExit)
        and END_MARKER in console
        and (cpus == 1 or f"smp: Brought up 1 node, {cpus} CPUs" in console)
        and sum(line.startswith("processor") for line in console.splitlines()) == cpus
    )
    return {
        "cpus": cpus,
        "gic": gic,
        "ok": ok,
        "stop": boot.result.stop.describe(),
        "instructions": boot.instructions,
        "wall_s": round(boot.wall_s, 2),
        "mips": round(boot.instructions / boot.wall_s / 1e6, 1),
        "virtual_s": round(boot.vm.clock.ns / 1e9, 3),
        "interrupts": sum(n for (what, _), n in boot.vm.irqchip.counts.items() if what == "acked"),
    }


def qemu_boot(assets: LinuxAssets, cpus: int, gic: str) -> dict | None:
    qemu = shutil.which("qemu-system-aarch64")
    if qemu is None:
        return None
    cmd = [
        qemu, "-M", f"virt,gic-version={gic[1:]}", "-cpu", "cortex-a72", "-smp", str(cpus), "-m", "512",
        "-nographic", "-no-reboot", "-kernel", str(assets.image), "-initrd", str(assets.initrd),
        "-append", BOOTARGS,
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(
        cmd, capture_output=True, text=True, errors="replace", timeout=600, stdin=subprocess.DEVNULL
    )
    wall = time.perf_counter() - start
    return {"wall_s": round(wall, 2), "ok": END_MARKER in done.stdout, "status": done.returncode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", help="comma-separated CPUS:GIC, e.g. 4:v3,2:v2 (default: all)")
    parser.add_argument("--no-qemu", action="store_true", help="skip the QEMU TCG reference")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    assets = linux_assets(CACHE)
    if assets is None:
        print(f"no kernel in {cache_dir(CACHE)}: run python3 firmware/linux/fetch.py", file=sys.stderr)
        return 1
    configs = CONFIGS
    if args.configs:
        configs = tuple((int(c), g) for c, g in (item.split(":") for item in args.configs.split(",")))
    rows = []
    for cpus, gic in configs:
        row = emu_boot(assets, cpus, gic)
        if not args.no_qemu:
            qemu = qemu_boot(assets, cpus, gic)
            row["qemu"] = qemu
            if qemu is not None and qemu["ok"]:
                row["ratio"] = round(row["wall_s"] / qemu["wall_s"], 2)
        rows.append(row)
        if not args.json:
            q = row.get("qemu")
            ref = f"  qemu {q['wall_s']:6.2f} s  ratio {row.get('ratio', '-')}" if q else ""
            print(
                f"{cpus} vCPU{'s' if cpus > 1 else ' '} {gic}: {'ok ' if row['ok'] else 'BAD'} "
                f"{row['instructions'] / 1e6:7.1f} M insns  {row['wall_s']:6.2f} s  {row['mips']:6.1f} MIPS"
                f"  guest {row['virtual_s']:.2f} s{ref}",
                flush=True,
            )
    if args.json:
        print(json.dumps({"hooks_in_c": syshook.native(), "boots": rows}, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
