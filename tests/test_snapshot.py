"""Snapshots: a run continued from ``vm.restore(snap)`` is the run continued without one, byte for byte.

Every firmware flow in firmware/ (and the C firmware where the cross compiler is installed)
runs to a midpoint (an instruction budget), is snapshotted, and continues to its end: trace
and JSON A. The same snapshot restored into a new VM, into the original VM again, and loaded
from a file by a fresh ``emu run --restore`` process each continue to B; A == B.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from unicorn import arm64_const as a64

from emu import Vm
from emu.abi.exits import HypercallExit, SystemEventExit
from emu.arm.asm import assemble
from emu.errors import KvmError
from emu.kvm import one_reg
from emu.kvm.caps import Cap, parse_cap
from emu.kvm.filter import SmcccFilterAction
from emu.kvm.profiles import DEFAULT_PROFILE, get_profile
from emu.kvm.snapshot import FORMAT_VERSION, SnapshotError
from emu.smccc.decode import describe_result
from emu.tools.report import run_json
from emu.vmm.boot import BootPool, boot
from emu.vmm.loader import Program, load_program
from emu.vmm.machine import Machine, load_vmm
from tests.conftest import FIRMWARE, ROOT, block_tables, run_cli
from tests.test_profiles import SUSPEND_GUEST
from tests.test_syshook import TIMER_IRQ

# (program, vCPUs, caps, VMM file) for every flow in firmware/.
FLOWS = {
    "cpu_on_race": ("cpu_on_race.S", 4, (), None),
    "cpu_suspend": ("cpu_suspend.S", 2, (), None),
    "exceptions": ("exceptions.S", 1, (), None),
    "hotadd": ("hotadd.S", 3, ("hvc-to-user", "psci-to-user"), "hotadd_vmm.py"),
    "hotplug": ("hotplug.S", 2, (), None),
    "psci_boot_check": ("psci_boot_check.S", 1, (), None),
    "smc_conduit": ("smc_conduit.S", 1, (), None),
    "smp_boot": ("smp_boot.S", 4, (), None),
    "system_reset": ("system_reset.S", 2, (), None),
    "trng": ("trng.S", 1, (), None),
    "vendor_call": ("vendor_call.S", 1, ("hvc-to-user",), "vendor_call_vmm.py"),
}
# (instruction budget to the midpoint, seed of a random schedule; None: round robin)
MIDPOINTS = [(7, None), (900, None), (40, 1), (900, 7)]
ENOUGH = 10**9


def test_every_firmware_flow_is_covered() -> None:
    assert {p.stem for p in FIRMWARE.glob("*.S")} == set(FLOWS)


def _machine(
    program: Path, cpus: int, caps, vmm, seed: int | None, budget: int, profile: str = DEFAULT_PROFILE
) -> Machine:
    vm = Vm(
        profile,
        cpus=cpus,
        seed=seed or 0,
        schedule="rr" if seed is None else "random",
        quantum=200,
        max_insns=budget,
        timeout=60,
    )
    for cap in caps:
        vm.enable_cap(parse_cap(cap))
    return Machine(vm, load_program(program), vmm=load_vmm(vmm) if vmm else None, reboots=2)


def _continue(machine: Machine) -> str:
    """Run to the end; everything observable, as text: the CLI's JSON and the whole trace."""
    machine.vm.limits.max_insns = ENOUGH
    machine.vm.limits.charged = 0
    document = run_json(machine, machine.run())
    document["ram"] = machine.vm.read_memory(0x4008_0000, 0x4_0000).hex()
    events = "\n".join(json.dumps(e.to_json()) for e in machine.vm.trace.events)
    return json.dumps(document, indent=1) + "\n" + events


def _midpoint(machine: Machine) -> None:
    machine.run()  # stops at the instruction budget (or earlier, at the end)


@pytest.mark.parametrize(("budget", "seed"), MIDPOINTS, ids=lambda v: "rr" if v is None else str(v))
@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_restored_continuation_is_byte_identical(flow: str, budget: int, seed: int | None) -> None:
    name, cpus, caps, vmm = FLOWS[flow]
    program, vmm_file = FIRMWARE / name, FIRMWARE / vmm if vmm else None
    original = _machine(program, cpus, caps, vmm_file, seed, budget)
    _midpoint(original)
    snap = original.vm.snapshot()
    a = _continue(original)

    fresh = _machine(program, cpus, caps, vmm_file, 99, 5)  # another seed and budget: restored over
    fresh.vm.restore(snap)
    assert _continue(fresh) == a

    original.vm.restore(snap)  # the fast path: the same VM, only pages written since dropped
    assert _continue(original) == a
    original.vm.restore(snap)
    assert _continue(original) == a


@pytest.mark.parametrize("profile", ["linux-5.15", "linux-6.13"])
@pytest.mark.parametrize("flow", ["smp_boot", "system_reset", "cpu_suspend", "trng", "psci_boot_check"])
def test_continuation_under_other_profiles(flow: str, profile: str) -> None:
    name, cpus, caps, _ = FLOWS[flow]
    original = _machine(FIRMWARE / name, cpus, caps, None, 5, 40, profile)
    _midpoint(original)
    snap = original.vm.snapshot()
    a = _continue(original)
    fresh = _machine(FIRMWARE / name, cpus, caps, None, 0, 5, profile)
    fresh.vm.restore(snap)
    assert _continue(fresh) == a


@pytest.mark.parametrize(("flow", "seed"), [("smp_boot", 3), ("system_reset", 5), ("hotadd", 2)])
def test_saved_snapshot_continues_in_a_fresh_process(tmp_path: Path, flow: str, seed: int) -> None:
    name, cpus, caps, vmm = FLOWS[flow]
    vmm_file = FIRMWARE / vmm if vmm else None
    original = _machine(FIRMWARE / name, cpus, caps, vmm_file, seed, 1200)
    _midpoint(original)
    path = tmp_path / "mid.emusnap"
    original.vm.save(path)
    original.vm.limits.max_insns, original.vm.limits.charged = ENOUGH, 0
    a = run_json(original, original.run())
    a["program"] = str(FIRMWARE / name)

    args = ["run", "--restore", path, "--max-insns", ENOUGH, "--json"]
    if vmm_file:
        args += ["--vmm", vmm_file]
    b = run_cli(*args)
    assert b.stderr == ""
    assert b.json() == json.loads(json.dumps(a))


def test_cli_save_then_restore_matches_the_python_api(tmp_path: Path) -> None:
    path = tmp_path / "stop.emusnap"
    flags = ["--cpus", "4", "--schedule", "random", "--seed", "11", "--quantum", "200"]
    saved = run_cli("run", FIRMWARE / "smp_boot.S", *flags, "--max-insns", "300", "--save", path, "--json")
    assert saved.status == 4 and saved.json()["stop"]["reason"] == "budget"
    restored = run_cli("run", "--restore", path, "--json")
    assert restored.status == 0, restored.stderr
    machine = Machine.load(path)
    machine.vm.limits.max_insns, machine.vm.limits.charged = None, 0  # as --restore: limits afresh
    continued = run_json(machine, machine.run())
    continued["program"] = str(FIRMWARE / "smp_boot.S")
    assert restored.json() == json.loads(json.dumps(continued))
    assert restored.json()["stop"]["reason"] == "system_event"
    text = run_cli("run", "--restore", path)
    assert f"restored from {path}" in text.stdout.splitlines()[0]


@pytest.fixture(scope="module")
def c_firmware(tmp_path_factory) -> Path:
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("gcc-aarch64-linux-gnu not installed")
    out = tmp_path_factory.mktemp("boot_test")
    subprocess.run(["make", "-C", FIRMWARE / "c", f"OUT={out}"], check=True, capture_output=True)
    return out / "boot_test.elf"


@pytest.mark.parametrize("seed", [None, 4])
def test_c_firmware_continuation_is_byte_identical(c_firmware: Path, seed: int | None) -> None:
    original = _machine(c_firmware, 4, (), None, seed, 20_000)
    _midpoint(original)
    snap = original.vm.snapshot()
    a = _continue(original)
    assert "all cpus done, system off" in a
    fresh = _machine(c_firmware, 4, (), None, 0, 5)
    fresh.vm.restore(snap)
    assert _continue(fresh) == a


# -- what a snapshot holds ----------------------------------------------------------------------

# (op0, op1, CRn, CRm, op2) of system registers emu and its guests rely on.
SYSREGS = {
    "SCTLR_EL1": ((3, 0, 1, 0, 0), 0x30D0_1805),
    "CPACR_EL1": ((3, 0, 1, 0, 2), 0x30_0000),
    "TTBR0_EL1": ((3, 0, 2, 0, 0), 0x4010_0000),
    "TTBR1_EL1": ((3, 0, 2, 0, 1), 0x0001_0000_4020_0000),
    "TCR_EL1": ((3, 0, 2, 0, 2), 0x0000_0005_B519_3519),
    "SPSR_EL1": ((3, 0, 4, 0, 0), 0x3C5),
    "ELR_EL1": ((3, 0, 4, 0, 1), 0x4008_1234),
    "ESR_EL1": ((3, 0, 5, 2, 0), 0x5600_0042),
    "FAR_EL1": ((3, 0, 6, 0, 0), 0xDEAD_B000),
    "PAR_EL1": ((3, 0, 7, 4, 0), 0x4000_0000),
    "MAIR_EL1": ((3, 0, 10, 2, 0), 0x00FF_4404),
    "VBAR_EL1": ((3, 0, 12, 0, 0), 0x4008_0800),
    "CONTEXTIDR_EL1": ((3, 0, 13, 0, 1), 0x77),
    "TPIDR_EL1": ((3, 0, 13, 0, 4), 0x1111),
    "TPIDR_EL0": ((3, 3, 13, 0, 2), 0x2222),
    "CNTKCTL_EL1": ((3, 0, 14, 1, 0), 0x3),
    "CNTV_CTL_EL0": ((3, 3, 14, 3, 1), 0x1),
    "CNTV_CVAL_EL0": ((3, 3, 14, 3, 2), 0x1234_5678),
    "HCR_EL2": ((3, 4, 1, 1, 0), (1 << 31) | (1 << 13) | (1 << 4) | (1 << 3)),
    "VMPIDR_EL2": ((3, 4, 0, 0, 5), 0x8000_0102),
    "CNTVOFF_EL2": ((3, 4, 14, 0, 3), 0x999),
}
REGS = {
    "x0": 1,
    "x17": 0x1717,
    "x30": 0x4008_0040,
    "sp": 0x4100_0000,
    "sp_el0": 0x4200_0000,
    "pc": 0x4008_0010,
    "nzcv": 0x6000_0000,
}
ENGINE_REGS = {
    a64.UC_ARM64_REG_FPCR: 0x0300_0000,
    a64.UC_ARM64_REG_FPSR: 0x8,
    a64.UC_ARM64_REG_Q5: 0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210,
}


def test_the_cpu_context_carries_system_registers() -> None:
    vm = Vm(cpus=1)
    vcpu = vm.vcpus[0]
    uc = vcpu.uc
    for encoding, value in SYSREGS.values():
        uc.cpr_write(*encoding, value)
    for name, value in REGS.items():
        vcpu.set_reg(name, value)
    for reg, value in ENGINE_REGS.items():
        uc.reg_write(reg, value)
    expected = {name: uc.cpr_read(*encoding) for name, (encoding, _) in SYSREGS.items()}
    snap = vm.snapshot()

    other = Vm(cpus=1)
    target = other.vcpus[0]
    untouched = {name: target.uc.cpr_read(*encoding) for name, (encoding, _) in SYSREGS.items()}
    other.restore(snap)
    for name, (encoding, _) in SYSREGS.items():
        assert target.uc.cpr_read(*encoding) == expected[name] != untouched[name], name
    for name, value in REGS.items():
        assert target.get_reg(name) == value, name
    for reg, value in ENGINE_REGS.items():
        assert target.uc.reg_read(reg) == value, reg


def test_model_state_beside_the_context_is_restored() -> None:
    vm = Vm(cpus=2, seed=5, schedule="random")
    vm.enable_cap(parse_cap("hvc-to-user"))
    vm.vcpus[1].timers.virt.ctl, vm.vcpus[1].timers.virt.cval = 1, 777
    vm.vcpus[1].mmu_enabled = True
    vm.clock.advance(12345)
    vm.entropy.getrandbits(64)
    snap = vm.snapshot()
    draws = (vm.entropy.getrandbits(64), vm.scheduler.pick(vm.vcpus)[1])
    other = Vm(cpus=2, seed=1)
    other.restore(snap)
    assert other.seed == 5 and other.scheduler.name == "random"
    assert (other.entropy.getrandbits(64), other.scheduler.pick(other.vcpus)[1]) == draws
    assert other.vcpus[1].timers.virt.cval == 777 and other.vcpus[1].mmu_enabled
    assert other.vcpus[1].power.value == "off" and other.clock.ns == 12345
    assert other.caps == vm.caps


def test_restore_creates_missing_vcpus_and_refuses_another_shape() -> None:
    vm = Vm(cpus=3)
    snap = vm.snapshot()
    assert [v.id for v in Vm.from_snapshot(snap).vcpus] == [0, 1, 2]
    with pytest.raises(SnapshotError, match="vCPUs"):
        Vm(cpus=4).restore(snap)
    with pytest.raises(SnapshotError, match="MiB"):
        Vm(cpus=3, mem_size=64 << 20).restore(snap)
    other_kernel = dataclasses.replace(get_profile(DEFAULT_PROFILE), name="other-kernel")
    with pytest.raises(SnapshotError, match="other-kernel"):
        Vm(other_kernel, cpus=3).restore(snap)


def test_restoring_restarts_the_wall_clock_limit() -> None:
    finished = boot(FIRMWARE / "smp_boot.S", cpus=4, timeout=5)
    vm = finished.vm
    assert vm.limits.started
    vm.restore(vm.snapshot())
    assert not vm.limits.started


def test_vm_save_and_load(tmp_path: Path) -> None:
    vm = Vm(cpus=2, seed=9)
    vm.write_memory(0x4100_0000, b"snapshot!")
    vm.save(tmp_path / "vm.emusnap")
    loaded = Vm.load(tmp_path / "vm.emusnap")
    assert loaded.read_memory(0x4100_0000, 9) == b"snapshot!" and loaded.seed == 9
    loaded.load(b"\x1f\x20\x03\xd5", 0x4008_0000)  # on an instance, load is still an image load
    assert loaded.read_memory(0x4008_0000, 4) == b"\x1f\x20\x03\xd5"


def test_the_same_state_saves_to_the_same_bytes(tmp_path: Path) -> None:
    finished = boot(FIRMWARE / "smp_boot.S", cpus=4)
    snap = finished.vm.snapshot()
    snap.save(tmp_path / "a.emusnap")
    snap.save(tmp_path / "b.emusnap")
    assert (tmp_path / "a.emusnap").read_bytes() == (tmp_path / "b.emusnap").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.emusnap") as archive:
        names = archive.namelist()
        assert names[0] == "snapshot.json" and names[-2:] == ["ram.json", "ram.bin"]
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in archive.infolist())


def _rewrite(path: Path, out: Path, change) -> None:
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "snapshot.json":
                document = json.loads(data)
                change(document)
                data = json.dumps(document).encode()
            dst.writestr(item, data)


def test_a_file_of_another_version_is_refused_in_one_line(tmp_path: Path) -> None:
    good = tmp_path / "good.emusnap"
    Vm(cpus=1).save(good)
    newer = tmp_path / "newer.emusnap"
    _rewrite(good, newer, lambda d: d.update(version=FORMAT_VERSION + 1))
    result = run_cli("run", "--restore", newer)
    assert result.status == 1
    assert result.stderr == (
        f"emu: error: {newer}: snapshot format version {FORMAT_VERSION + 1} (written by emu "
        f"{json.loads(zipfile.ZipFile(good).read('snapshot.json'))['meta']['emu']}); this emu "
        f"{json.loads(zipfile.ZipFile(good).read('snapshot.json'))['meta']['emu']} reads only "
        f"version {FORMAT_VERSION}\n"
    )
    other_engine = tmp_path / "engine.emusnap"
    _rewrite(good, other_engine, lambda d: d["meta"].update(unicorn="1.0.3"))
    with pytest.raises(SnapshotError, match=r"Unicorn 1\.0\.3"):
        Vm.load(other_engine)
    bare = run_cli("run", "--restore", good)
    assert bare.status == 1 and "bare VM" in bare.stderr
    junk = tmp_path / "junk"
    junk.write_text("not a snapshot")
    result = run_cli("run", "--restore", junk)
    assert result.status == 1 and result.stderr.startswith(f"emu: error: {junk}: not an emu snapshot")


@pytest.fixture(scope="module")
def machine_snapshot(tmp_path_factory) -> Path:
    """A snapshot ``emu run --restore`` accepts: a spinning guest saved at its budget."""
    tmp = tmp_path_factory.mktemp("machine")
    (tmp / "spin.S").write_text("spin: b spin\n")
    result = run_cli("run", tmp / "spin.S", "--max-insns", "1000", "--save", tmp / "spin.emusnap")
    assert result.status == 4, result.stderr
    return tmp / "spin.emusnap"


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.update(state={}), "KeyError: 'extensions'"),
        (lambda d: d.update(meta=None), "AttributeError"),
        (lambda d: d["meta"].update(mem_size="big"), "TypeError"),
        (lambda d: d["meta"].update(profile="linux-9.9"), "unknown profile 'linux-9.9'"),
    ],
    ids=["no-state", "no-meta", "size-not-a-number", "unknown-profile"],
)
def test_a_damaged_snapshot_is_refused_in_one_line(
    machine_snapshot: Path, tmp_path: Path, change, words
) -> None:
    damaged = tmp_path / "damaged.emusnap"
    _rewrite(machine_snapshot, damaged, change)
    result = run_cli("run", "--restore", damaged)
    assert result.status == 1 and result.stderr.count("\n") == 1, result.stderr
    assert (
        result.stderr.startswith(f"emu: error: {damaged}: damaged emu snapshot (") and words in result.stderr
    )
    with pytest.raises(SnapshotError, match="damaged emu snapshot"):
        Vm.load(damaged)


@pytest.mark.parametrize("member", ["snapshot.json", "ram.bin", "blobs/state.vcpus.0.context"])
def test_a_corrupted_member_is_refused_in_one_line(
    machine_snapshot: Path, tmp_path: Path, member: str
) -> None:
    data = bytearray(machine_snapshot.read_bytes())
    with zipfile.ZipFile(machine_snapshot) as archive:
        info = archive.getinfo(member)
    name_len, extra_len = (
        int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    data[info.header_offset + 30 + name_len + extra_len + info.compress_size // 2] ^= 0x55
    corrupted = tmp_path / "corrupted.emusnap"
    corrupted.write_bytes(bytes(data))
    result = run_cli("run", "--restore", corrupted)
    assert result.status == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"emu: error: {corrupted}: ") and "emu snapshot" in result.stderr


@pytest.mark.parametrize(
    "hooks, words",
    [
        (
            "def snapshot():\n    raise RuntimeError('no')\ndef restore(state):\n    pass\n",
            "vmm.py:4: snapshot raised RuntimeError: no",
        ),
        (
            "def snapshot():\n    return {1, 2}\ndef restore(state):\n    pass\n",
            "its state is not plain data",
        ),
    ],
    ids=["raises", "not-plain-data"],
)
def test_a_vmm_snapshot_that_fails_leaves_no_file(tmp_path: Path, hooks: str, words: str) -> None:
    vmm = tmp_path / "vmm.py"
    vmm.write_text("def handle_hypercall(vcpu, exit):\n    return 0\n" + hooks)
    saved = tmp_path / "x.emusnap"
    result = run_cli("run", FIRMWARE / "trng.S", "--vmm", vmm, "--max-insns", "100", "--save", saved)
    assert result.status == 1 and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr and not saved.exists()


def test_a_vmm_restore_that_raises_is_one_error_line(tmp_path: Path) -> None:
    vmm = tmp_path / "vmm.py"
    vmm.write_text(
        "def handle_hypercall(vcpu, exit):\n    return 0\n"
        "def snapshot():\n    return 1\ndef restore(state):\n    raise ValueError('bad state')\n"
    )
    spin = tmp_path / "spin.S"
    spin.write_text("spin: b spin\n")
    saved = tmp_path / "x.emusnap"
    assert run_cli("run", spin, "--vmm", vmm, "--max-insns", "1000", "--save", saved).status == 4
    result = run_cli("run", "--restore", saved, "--vmm", vmm)
    assert (result.status, result.stderr) == (
        1,
        "emu: error: vmm.py:6: restore raised ValueError: bad state\n",
    )


def test_a_file_size_limit_is_one_error_line(tmp_path: Path) -> None:
    # ulimit -f bounds the in-memory file a snapshot's RAM is copied into, too.
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    saved = tmp_path / "x.emusnap"
    proc = subprocess.run(
        [sys.executable, "-m", "emu", "run", FIRMWARE / "trng.S", "--max-insns", "100", "--save", saved],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        preexec_fn=limit,
    )
    assert (proc.returncode, proc.stderr) == (
        1,
        "emu: error: cannot hold a snapshot of 128 MiB of RAM in memory: File too large\n",
    )
    assert not saved.exists()


def test_run_needs_a_program_or_a_snapshot(tmp_path: Path) -> None:
    assert run_cli("run").status == 2
    assert run_cli("run", FIRMWARE / "trng.S", "--restore", tmp_path / "x").status == 2


# -- reuse: explore and the pytest kit ---------------------------------------------------------


def test_explore_from_the_booted_snapshot_matches_separate_runs() -> None:
    explored = run_cli("explore", FIRMWARE / "cpu_on_race.S", "--cpus", "4", "--seeds", "12", "--json")
    assert explored.status == 0, explored.stderr
    expected: dict[str, list[int]] = {}
    for seed in range(12):
        single = run_cli(
            "run", FIRMWARE / "cpu_on_race.S", "--cpus", "4", "--schedule", "random", "--seed", seed, "--json"
        ).json()
        cpu_on: dict[str, int] = {}
        for event in single["psci"]:
            if event["function"] == "PSCI_CPU_ON64" and event["result"] is not None:
                text = describe_result(event["fid"], event["result"])
                cpu_on[text] = cpu_on.get(text, 0) + 1
        key = json.dumps(
            {"cpu_on": dict(sorted(cpu_on.items())), "power": [v["power"] for v in single["vcpus"]]}
        )
        expected.setdefault(key, []).append(seed)
    got = {
        json.dumps({"cpu_on": o["cpu_on"], "power": o["power"]}): o["seeds"]
        for o in explored.json()["outcomes"]
    }
    assert got == expected


@pytest.mark.parametrize("flow", ["smp_boot", "hotadd", "system_reset", "trng", "cpu_suspend"])
def test_boot_pool_runs_are_fresh_runs(flow: str) -> None:
    name, cpus, caps, vmm = FLOWS[flow]
    pool = BootPool()
    kwargs = {"cpus": cpus, "caps": caps, "vmm": FIRMWARE / vmm if vmm else None, "reboots": 1}
    for schedule, seed in [("rr", 0), ("random", 3), ("random", 4), ("rr", 0), ("random", 3)]:
        fresh = boot(FIRMWARE / name, schedule=schedule, seed=seed, **kwargs)
        pooled = pool.boot(FIRMWARE / name, schedule=schedule, seed=seed, **kwargs)
        assert run_json(pooled.machine, pooled.result) == run_json(fresh.machine, fresh.result)
        assert pooled.vm.trace.events == fresh.vm.trace.events
        del pooled


def test_boot_pool_keeps_a_held_boot_intact() -> None:
    pool = BootPool()
    first = pool.boot(FIRMWARE / "smp_boot.S", cpus=4, schedule="random", seed=1)
    events = list(first.vm.trace.events)
    second = pool.boot(FIRMWARE / "smp_boot.S", cpus=4, schedule="random", seed=2)
    assert second.vm is not first.vm and first.vm.trace.events == events
    del first
    third = pool.boot(FIRMWARE / "smp_boot.S", cpus=4, schedule="random", seed=1)
    assert third.vm.trace.events == events


def test_readme_documents_snapshots() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "--restore FILE" in readme and "vm.snapshot()" in readme


SELF_MODIFYING = """
    ldr     x20, =0x40100000
    mov     x2, #0
loop:
site:
    mov     x1, #1                // patched to mov x1, #2 on the first pass
    str     x1, [x20], #8
    cbnz    x2, done
    ldr     w3, =0xd2800041       // mov x1, #2
    adr     x0, site
    str     w3, [x0]
    dc      cvau, x0
    dsb     ish
    ic      ivau, x0
    dsb     ish
    isb
    mov     x2, #1
    b       loop
done:
    ldr     x0, =0x84000008
    hvc     #0
"""


def test_restore_drops_code_translated_from_pages_written_since() -> None:
    # The snapshot has the original instruction; the continuation executes it, patches it
    # and executes the patch. Restored into the same VM (only written pages are reset),
    # the patched translation must not survive: the first pass sees the original again.
    result = boot(source=SELF_MODIFYING, max_insns=2)
    machine = result.machine
    snap = machine.vm.snapshot()
    for _ in range(3):
        machine.vm.restore(snap)
        machine.vm.limits.max_insns = ENOUGH
        machine.run()
        assert machine.vm.read_memory(0x4010_0000, 16) == (1).to_bytes(8, "little") + (2).to_bytes(
            8, "little"
        )


def test_a_restored_run_gets_a_fresh_timeout_from_the_same_watchdog() -> None:
    vm = Vm(cpus=2, timeout=0.3)
    vm.load_asm("spin: b spin\n")
    vm.vcpus[0].pc = 0x4008_0000
    snap = vm.snapshot()
    assert vm.run().reason.value == "timeout"
    # Other tests' watchdogs may end meanwhile; what must not happen is a new one starting.
    watchdogs = {t for t in threading.enumerate() if t.name == "emu-watchdog"}
    for _ in range(3):
        vm.restore(snap)
        start = time.monotonic()
        assert vm.run().reason.value == "timeout"
        assert 0.3 <= time.monotonic() - start < 3
        assert {t for t in threading.enumerate() if t.name == "emu-watchdog"} <= watchdogs
    vm.close()


# With the MMU on, the code runs through an alias: VA 0x7fe00000 maps the 2 MiB block at PA
# 0x40000000. The vendor HVC before the jump is the midpoint (an exit to userspace).
SELF_MODIFYING_ALIASED = (
    block_tables(0x4000_0000)
    + """    msr     ttbr0_el1, x1
    mov     x3, #0xff
    msr     mair_el1, x3
    ldr     x4, =0x803519
    msr     tcr_el1, x4
    isb
    mrs     x5, sctlr_el1
    orr     x5, x5, #1
    msr     sctlr_el1, x5
    isb
    ldr     x20, =0x40300000
    mov     x2, #0
    adr     x10, site
    ldr     x11, =0x3fe00000
    add     x10, x10, x11
    ldr     x0, =0xc6000040
    hvc     #0
    br      x10
site:
    mov     x1, #1
    str     x1, [x20], #8
    cbnz    x2, done
    ldr     w3, =0xd2800041
    adr     x0, site
    str     w3, [x0]
    dc      cvau, x0
    dsb     ish
    ic      ivau, x0
    dsb     ish
    isb
    mov     x2, #1
    b       site
done:
    ldr     x0, =0x84000008
    hvc     #0
"""
)


def test_restore_drops_changed_code_with_the_mmu_on_through_an_alias() -> None:
    vm = Vm(cpus=1, timeout=20)
    vm.enable_cap(Cap.ARM_HVC_TO_USER)
    vm.load_asm(SELF_MODIFYING_ALIASED)
    vcpu = vm.vcpus[0]
    vcpu.pc = 0x4008_0000
    assert isinstance(vcpu.run(), HypercallExit)
    assert vcpu.mmu_enabled
    snap = vm.snapshot()
    for _ in range(3):
        vm.restore(snap)
        assert isinstance(vcpu.run(), SystemEventExit)
        assert vm.read_memory(0x4030_0000, 16) == (1).to_bytes(8, "little") + (2).to_bytes(8, "little")


def test_filter_firmware_registers_and_has_run_travel_with_the_snapshot(tmp_path: Path) -> None:
    vm = Vm("linux-6.6", cpus=2)
    vm.set_smccc_filter(0xC600_0000, 0x100, SmcccFilterAction.FWD_TO_USER)
    vm.set_smccc_filter(0x8600_0000, 0x10, SmcccFilterAction.DENY)
    vm.vcpus[0].set_one_reg(one_reg.KVM_REG_ARM_STD_HYP_BMAP, 0)
    vm.vcpus[0].set_one_reg(one_reg.KVM_REG_ARM_PSCI_VERSION, 0x10000)
    before_run = vm.snapshot()
    vm.load_asm("ldr x0, =0x84000008\n hvc #0\n")
    vm.vcpus[0].pc = 0x4008_0000
    vm.run()
    assert vm.has_run
    after_run = vm.snapshot()

    for snap in (before_run, after_run):
        path = tmp_path / "f.emusnap"
        snap.save(path)
        for other in (Vm.from_snapshot(snap), Vm.load(path)):
            assert other.smccc_filter.to_json() == vm.smccc_filter.to_json()
            assert other.smccc_filter.lookup(0xC600_0040) == SmcccFilterAction.FWD_TO_USER
            assert other.smccc_filter.lookup(0x8600_0001) == SmcccFilterAction.DENY
            assert other.vcpus[1].get_one_reg(one_reg.KVM_REG_ARM_STD_HYP_BMAP) == 0
            assert other.vcpus[1].get_one_reg(one_reg.KVM_REG_ARM_PSCI_VERSION) == 0x10000
            assert other.has_run == (snap is after_run)
    ran = Vm.from_snapshot(after_run)
    with pytest.raises(KvmError, match="EBUSY"):
        ran.set_smccc_filter(0xC700_0000, 1, SmcccFilterAction.DENY)


@pytest.mark.parametrize("budget", [12, 30, 400])
def test_continuation_with_a_timer_interrupt_through_the_vgic(budget: int) -> None:
    def machine(max_insns: int) -> Machine:
        vm = Vm(cpus=1, max_insns=max_insns, timeout=60)
        return Machine(vm, Program.flat(assemble(TIMER_IRQ, 0x4008_0000), kind="asm"))

    original = machine(budget)
    _midpoint(original)
    snap = original.vm.snapshot()
    a = _continue(original)
    assert '"intid": 27' in a and '"completed": 1' in a
    fresh = machine(5)
    fresh.vm.restore(snap)
    assert _continue(fresh) == a
    original.vm.restore(snap)
    assert _continue(original) == a


@pytest.mark.parametrize("budget", [4, 12])
def test_continuation_through_system_suspend_and_its_wakeup(budget: int) -> None:
    def machine(max_insns: int) -> Machine:
        vm = Vm("linux-6.6", cpus=1, max_insns=max_insns, timeout=60)
        vm.enable_cap(parse_cap("system-suspend"))
        return Machine(vm, Program.flat(assemble(SUSPEND_GUEST, 0x4008_0000), kind="asm"))

    original = machine(budget)
    _midpoint(original)
    snap = original.vm.snapshot()
    a = _continue(original)
    assert '"type_name": "WAKEUP"' in a
    fresh = machine(5)
    fresh.vm.restore(snap)
    assert _continue(fresh) == a
