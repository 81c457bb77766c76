"""The C test program (firmware/c), built with Debian's aarch64 cross gcc, runs unmodified on
emu with 1, 2, 4 and 8 vCPUs, as ELF and as flat binary; where QEMU is installed its console
output on ``qemu-system-aarch64 -M virt`` is the same, byte for byte."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from emu.vmm.boot import boot
from emu.vmm.machine import BootOptions
from tests.conftest import FIRMWARE, ROOT, run_cli

CROSS_GCC = shutil.which("aarch64-linux-gnu-gcc")
QEMU = shutil.which("qemu-system-aarch64")


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    if CROSS_GCC is None:
        pytest.skip("gcc-aarch64-linux-gnu not installed")
    out = tmp_path_factory.mktemp("boot_test")
    subprocess.run(["make", "-C", FIRMWARE / "c", f"OUT={out}"], check=True, capture_output=True)
    return out


def expected_console(cpus: int, dtb: int) -> str:
    lines = [
        f"boot_test: device tree at {dtb:#x}, uart 0x9000000, psci via hvc, {cpus} cpus",
        "cpu 0: mmu on",
        "svc: EC 0x15 ISS 0x42 returned past the svc",
        "undef: EC 0x0 at the instruction, skipped",
    ]
    lines += [f"cpu_on {i:#x}: ok" for i in range(1, cpus)]
    lines += [f"cpu {i}: online, mmu on, now off" for i in range(1, cpus)]
    lines.append("all cpus done, system off")
    return "\n".join(lines) + "\n"


# ELF: bare-metal, DTB at the start of RAM. Flat: Linux-style, DTB after the initrd area.
DTB_AT = {"elf": 0x4000_0000, "bin": 0x4400_0000}


@pytest.mark.parametrize("cpus", [1, 2, 4, 8])
@pytest.mark.parametrize("kind", ["elf", "bin"])
def test_boot_test_on_emu(build, kind: str, cpus: int) -> None:
    result = boot(build / f"boot_test.{kind}", cpus=cpus)
    result.assert_system_event("SHUTDOWN")
    assert result.console == expected_console(cpus, DTB_AT[kind])
    assert result.psci_results("PSCI_CPU_ON64") == ["SUCCESS"] * (cpus - 1)
    assert result.power() == ["off"] * cpus


def test_boot_test_from_the_cli_streams_the_console(build) -> None:
    result = run_cli("run", build / "boot_test.bin", "--cpus", "2")
    assert result.status == 0
    out = result.stdout
    assert "cpu_on 0x1: ok" in out and "[0] hvc #0x0  PSCI_CPU_ON64(target=0x1" in out
    # Console text and hypercall lines come out in the order they happened.
    assert out.index("undef: EC 0x0") < out.index("PSCI_CPU_ON64") < out.index("cpu_on 0x1: ok")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-aarch64 not installed")
@pytest.mark.parametrize("cpus", [1, 4])
@pytest.mark.parametrize("kind", ["elf", "bin"])
def test_same_console_as_qemu(build, kind: str, cpus: int) -> None:
    qemu = subprocess.run(
        [
            QEMU,
            "-M",
            "virt",
            "-cpu",
            "cortex-a72",
            "-smp",
            str(cpus),
            "-m",
            "128M",
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
            str(build / f"boot_test.{kind}"),
        ],
        stdin=subprocess.DEVNULL,  # -serial stdio must not wait on (or stop for) a terminal
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    emu = boot(build / f"boot_test.{kind}", cpus=cpus)
    assert qemu.stdout == emu.console == expected_console(cpus, DTB_AT[kind])


@pytest.mark.parametrize("gic", ["v2", "v3", "none"])
def test_boot_test_with_each_interrupt_controller(build, gic: str) -> None:
    result = boot(build / "boot_test.elf", cpus=4, boot_options=BootOptions(gic=gic))
    result.assert_system_event("SHUTDOWN")
    assert result.console == expected_console(4, DTB_AT["elf"])


def expected_gic_console(cpus: int, gic: str) -> str:
    return (
        f"gic_test: GIC{gic}, {cpus} cpus\n"
        "timer: PPI 27 taken after its deadline\n"
        "wfi: woken by a pending, masked interrupt, taken once unmasked\n"
        "level: PPI 27 taken 3 times while asserted\n"
        "edge: SPI 41 taken 1 time\n"
        "active: SPI 40 active in its handler, pending again, taken after EOI\n"
        "preemption: SPI 43 inside SPI 42's handler, SPI 44 after it\n"
        f"sgi: {3 if cpus > 1 else 0} laps through {cpus} cpus\n"
        "all done, system off\n"
    )


@pytest.mark.parametrize(("cpus", "gic"), [(1, "v3"), (2, "v3"), (4, "v3"), (8, "v3"), (1, "v2"), (4, "v2")])
def test_gic_test_on_emu(build, cpus: int, gic: str) -> None:
    result = boot(build / "gic_test.elf", cpus=cpus, boot_options=BootOptions(gic=gic))
    result.assert_system_event("SHUTDOWN")
    assert result.console == expected_gic_console(cpus, gic.upper().replace("V", "v"))


@pytest.mark.skipif(QEMU is None, reason="qemu-system-aarch64 not installed")
@pytest.mark.parametrize("cpus", [1, 4])
@pytest.mark.parametrize("gic", ["v2", "v3"])
def test_gic_test_same_console_as_qemu(build, cpus: int, gic: str) -> None:
    qemu = subprocess.run(
        [QEMU, "-M", f"virt,gic-version={gic[1:]}", "-cpu", "cortex-a72", "-smp", str(cpus), "-m", "128M",
         "-nographic", "-monitor", "none", "-serial", "stdio", "-no-reboot", "-kernel", str(build / "gic_test.elf")],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    emu = boot(build / "gic_test.elf", cpus=cpus, boot_options=BootOptions(gic=gic))
    assert qemu.stdout == emu.console == expected_gic_console(cpus, f"v{gic[1:]}")
