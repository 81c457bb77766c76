"""The ``emu`` command.

``emu run PROGRAM.S`` assembles a guest at 0x40080000, boots vCPU 0 there (the other
``--cpus`` wait for PSCI CPU_ON) under the chosen profile and prints every hypercall,
decoded, then the stop and the registers (or one JSON document with ``--json``).
``emu explore`` runs a program under many seeded random schedules and lists the distinct
outcomes with a seed that reproduces each. ``emu profiles`` lists the modelled kernels and
what differs between them; ``emu diff`` runs one program under several of them.

Every user mistake ends in one ``emu: error: ...`` line and a non-zero status; the
status of a run says how it stopped (see ``report.EXIT_STATUS``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from emu import __version__
from emu.abi.trace import read_jsonl
from emu.errors import EmuError
from emu.kvm.caps import parse_cap
from emu.kvm.filter import parse_filter_spec
from emu.kvm.one_reg import parse_reg_name
from emu.kvm.profiles import ALIASES, DEFAULT_PROFILE, PROFILES
from emu.kvm.scheduler import DEFAULT_QUANTUM, SCHEDULES
from emu.kvm.vm import DEFAULT_RAM_SIZE, KVM_MAX_VCPUS, Vm
from emu.tools.campaign import Booted, Progress, campaign_key, run_campaign, warm
from emu.tools.coverage import Coverage, report_lines
from emu.tools.diff import EXIT_PROFILES_DIFFER, configure_for, diff_runs, profile_lines
from emu.tools.explore import explore_json, explore_lines, outcome_key
from emu.tools.gdb.vm_target import serve_gdb
from emu.tools.report import EXIT_STATUS, dumps, event_line, register_lines, run_json, stop_line, stop_reason
from emu.vmm.fdt import machine_dtb
from emu.vmm.loader import FORMATS, Program, load_program, read_input
from emu.vmm.machine import GIC_CHOICES, BootOptions, Machine, Vmm, create_gic, load_vmm

EXIT_ERROR = 1
# ``emu explore --expect-unique``: the schedules led to different outcomes.
EXIT_DIVERGED = 7
# ``emu fuzz``: a hypercall broke an invariant (the minimal case is written as a .S file).
EXIT_FUZZ_FAILURE = 9
# Seeds per explore work item: small enough to balance, large enough to amortise a process hop.
EXPLORE_CHUNK = 20
DEFAULT_TIMEOUT_S = 10.0

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*$")


def parse_size(text: str) -> int:
    """``128M``, ``64MiB``, ``1G``, ``4096``: bytes."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (e.g. 128M)")
    shift = {"": 0, "k": 10, "m": 20, "g": 30}[match.group(2).lower()]
    return int(match.group(1)) << shift


def _int_at_least(minimum: int):
    """An argparse type: an integer (any base prefix) no smaller than ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _int_in_range(minimum: int, maximum: int):
    at_least = _int_at_least(minimum)

    def parse(text: str) -> int:
        value = at_least(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}: {text!r}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number: {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _filter_spec(text: str):
    try:
        return parse_filter_spec(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _reg_assignment(text: str) -> tuple[int, int]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"not NAME=VALUE: {text!r}")
    try:
        return parse_reg_name(name), int(value, 0)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_profile_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        choices=[*PROFILES, *ALIASES],
        help=f"modelled kernel (default {DEFAULT_PROFILE}; latest = {ALIASES['latest']})",
    )


def _cap(text: str):
    try:
        return parse_cap(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line: ``emu: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"emu: error: {message}\n")


def _add_board_options(parser: argparse.ArgumentParser) -> None:
    """What shapes the machine and its device tree (QEMU-like flags)."""
    parser.add_argument(
        "--cpus",
        type=_int_in_range(1, KVM_MAX_VCPUS),
        default=1,
        metavar="N",
        help=f"vCPUs, at most {KVM_MAX_VCPUS} (KVM_MAX_VCPUS); vCPU 0 boots, the others wait for "
        "PSCI CPU_ON (default 1)",
    )
    parser.add_argument(
        "--mem",
        type=parse_size,
        default=DEFAULT_RAM_SIZE,
        metavar="SIZE",
        help="guest RAM at 0x40000000 (default 128M)",
    )
    parser.add_argument("--append", default="", metavar="ARGS", help="kernel command line (/chosen/bootargs)")
    parser.add_argument("--initrd", metavar="FILE", help="initial ramdisk, placed as QEMU places it")
    parser.add_argument(
        "--conduit",
        choices=("hvc", "smc"),
        default="hvc",
        help="PSCI method the device tree advertises (default hvc)",
    )
    parser.add_argument(
        "--gic",
        choices=GIC_CHOICES,
        default="v3",
        help="in-kernel interrupt controller: GICv3, GICv2 (at most 8 vCPUs) or none (default v3)",
    )


def _add_machine_options(
    parser: argparse.ArgumentParser, schedule: bool = True, optional: bool = False
) -> None:
    parser.add_argument(
        "program",
        nargs="?" if optional else None,
        help="A64 assembly (.S), an ELF, a Linux arm64 Image or a flat binary",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="how to read PROGRAM (default: by content: ELF or Image magic, text is assembly, else flat)",
    )
    _add_board_options(parser)
    parser.add_argument("--dtb", metavar="FILE", help="device tree blob to pass instead of emu's own")
    _add_run_options(parser, schedule)


def _add_run_options(parser: argparse.ArgumentParser, schedule: bool = True) -> None:
    _add_profile_option(parser)
    parser.add_argument(
        "--cap",
        action="append",
        default=[],
        type=_cap,
        metavar="NAME",
        help="enable a capability, e.g. hvc-to-user, system-suspend or KVM_CAP_ARM_HVC_TO_USER",
    )
    parser.add_argument(
        "--smccc-filter",
        action="append",
        default=[],
        type=_filter_spec,
        metavar="BASE:NR:ACTION",
        help="SMCCC filter range (linux-6.6+), ACTION handle|deny|fwd-to-user; repeatable",
    )
    parser.add_argument(
        "--set-reg",
        action="append",
        default=[],
        type=_reg_assignment,
        metavar="NAME=VALUE",
        help="KVM_SET_ONE_REG on every vCPU before the run, e.g. STD_BMAP=0 or PSCI_VERSION=0x10000",
    )
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="rr",
        help="how vCPUs interleave: rr (round robin) or random (seeded)" if schedule else argparse.SUPPRESS,
    )
    parser.add_argument(
        "--quantum",
        type=_positive_int,
        default=DEFAULT_QUANTUM,
        metavar="N",
        help=f"instructions per scheduling quantum (default {DEFAULT_QUANTUM})",
    )
    parser.add_argument(
        "--max-insns", type=_positive_int, metavar="N", help="instruction budget (slower: counted by Unicorn)"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"wall-clock limit in seconds per run (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--vmm",
        metavar="FILE.py",
        help="Python file with handle_hypercall(vcpu, exit) and/or cpu_on_policy(caller, target)",
    )
    parser.add_argument(
        "--reboots",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="SYSTEM_RESETs to honour by rebooting the guest (default 0: a reset ends the run)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="after an error, also print the traceback of its cause (e.g. the --vmm code's)",
    )
    parser.add_argument(
        "--assembler",
        choices=("auto", "keystone", "gnu"),
        default="auto",
        help="assembler for .S programs (default: keystone unless GNU as is needed)",
    )


def _add_campaign_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        metavar="J",
        help="worker processes (default 1); the output is the same for any J",
    )
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the cases on a Dask distributed scheduler (e.g. tcp://host:8786; needs hvc-emu[cluster])",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="emu", description="Run AArch64 guest code against a modelled KVM/arm64.")
    parser.add_argument("--version", action="version", version=f"emu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a guest program and report its hypercalls")
    _add_machine_options(run, optional=True)
    run.add_argument("--save", metavar="FILE", help="snapshot the VM where the run stopped into FILE")
    run.add_argument(
        "--restore",
        metavar="FILE",
        help="continue the run saved in FILE instead of booting PROGRAM (the machine, its "
        "schedule and seed come from FILE; --max-insns and --timeout count afresh)",
    )
    run.add_argument(
        "--seed", type=int, default=0, help="seed for TRNG entropy and the random schedule (default 0)"
    )
    run.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    run.add_argument("--trace", metavar="FILE", help="write every event as JSON Lines (emu.trace.read_jsonl)")
    run.add_argument(
        "--trace-insns", action="store_true", help="also record every executed instruction (slow)"
    )
    run.add_argument("--plot", metavar="FILE.png", help="draw the vCPU timeline (needs matplotlib)")
    run.add_argument(
        "--gdb",
        type=_gdb_address,
        metavar="[HOST:]PORT",
        help="serve the GDB remote protocol on HOST:PORT (default host 127.0.0.1), every vCPU a thread",
    )
    run.add_argument(
        "--gdb-wait",
        action="store_true",
        help="with --gdb: wait for the debugger before the first instruction",
    )

    coverage = sub.add_parser(
        "coverage",
        help="which SMCCC functions and return codes programs or "
        "traces exercised, against the profile's table",
    )
    coverage.add_argument("inputs", nargs="+", metavar="PROGRAM|TRACE.jsonl")
    coverage.add_argument("--format", choices=FORMATS, default="auto", help=argparse.SUPPRESS)
    _add_board_options(coverage)
    coverage.add_argument("--dtb", metavar="FILE", help=argparse.SUPPRESS)
    _add_run_options(coverage)
    coverage.add_argument("--seed", type=int, default=0, help="seed for TRNG and the schedule")
    coverage.add_argument("--json", action="store_true", help="print one JSON document instead of text")

    explore = sub.add_parser(
        "explore", help="run a program under many random schedules and list the distinct outcomes"
    )
    _add_machine_options(explore, schedule=False)
    explore.add_argument(
        "--seeds", type=_positive_int, default=100, metavar="K", help="number of seeds to try (default 100)"
    )
    explore.add_argument("--first-seed", type=int, default=0, metavar="S", help="first seed (default 0)")
    explore.add_argument(
        "--expect-unique",
        action="store_true",
        help=f"exit with status {EXIT_DIVERGED} if the outcomes differ",
    )
    explore.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    _add_campaign_options(explore)

    fuzz = sub.add_parser(
        "fuzz", help="property-based fuzzing of the modelled KVM's hypercall answers (needs hypothesis)"
    )
    fuzz.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        choices=[*sorted(PROFILES), "all"],
        help=f"modelled kernel, or all of them (default {DEFAULT_PROFILE})",
    )
    fuzz.add_argument(
        "--examples", type=_positive_int, default=200, metavar="N", help="examples per profile (default 200)"
    )
    fuzz.add_argument("--seed", type=int, default=0, metavar="S", help="campaign seed (default 0)")
    fuzz.add_argument(
        "--output",
        default=".",
        metavar="DIR",
        help="where a failing case's reproducer .S is written (default: the current directory)",
    )
    _add_campaign_options(fuzz)

    dtb = sub.add_parser("dtb", help="write the device tree emu would give a guest")
    _add_board_options(dtb)
    _add_profile_option(dtb)
    dtb.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the DTB")

    sub.add_parser("profiles", help="list the modelled kernels and what differs between them")

    diff = sub.add_parser(
        "diff", help="run a program under several profiles and show where their answers differ"
    )
    _add_machine_options(diff)
    diff.set_defaults(profile=None)
    diff.add_argument(
        "--profiles",
        required=True,
        metavar="A,B[,C...]",
        help="profiles to compare, comma-separated (e.g. rfc-2021,linux-6.13)",
    )
    diff.add_argument("--seed", type=int, default=0, help="seed for TRNG and the schedule (default 0)")
    diff.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    return parser


@contextlib.contextmanager
def _interruptible(vm: Vm):
    """Make Ctrl-C stop a guest that runs inside Unicorn without ever returning to Python.

    Python only runs its SIGINT handler between bytecodes, so a trap-free guest loop would
    ignore Ctrl-C. The C-level handler also writes to a wakeup fd; a thread waiting on it
    latches the interrupt in the VM's limits and stops the running vCPU, and the run loop
    raises KeyboardInterrupt before the next slice. While a slice runs, the Python-level
    handler only latches too: it would otherwise raise inside whatever hook is executing,
    where a ctypes callback reports the exception and drops it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    limits = vm.limits
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def on_sigint(signum, frame) -> None:
        if limits.watched is not None:
            limits.interrupted = True
            return
        raise KeyboardInterrupt

    previous_handler = signal.signal(signal.SIGINT, on_sigint)
    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def wait_for_signal() -> None:
        # The wakeup fd receives every signal's number, not only SIGINT's (SIGALRM bounds VMM code).
        while signum := os.read(read_fd, 1):
            if signum[0] == signal.SIGINT:
                limits.interrupt()
        os.close(read_fd)

    threading.Thread(target=wait_for_signal, name="emu-sigint", daemon=True).start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        signal.signal(signal.SIGINT, previous_handler)
        os.close(write_fd)


def _read_file(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    return read_input(path, f"--{what}")


def _vm(args: argparse.Namespace, schedule: str = "rr", seed: int = 0) -> Vm:
    try:
        return Vm(
            getattr(args, "profile", DEFAULT_PROFILE),
            cpus=args.cpus,
            mem_size=args.mem,
            seed=seed,
            schedule=schedule,
            quantum=getattr(args, "quantum", DEFAULT_QUANTUM),
            max_insns=getattr(args, "max_insns", None),
            timeout=getattr(args, "timeout", None),
            trace_insns=getattr(args, "trace_insns", False),
        )
    except ValueError as err:
        raise EmuError(str(err)) from None


def _machine(args: argparse.Namespace, program: Program, vmm: Vmm, schedule: str, seed: int) -> Machine:
    vm = _vm(args, schedule, seed)
    configure_vm(vm, args.cap, args.smccc_filter, args.set_reg)
    boot = BootOptions(
        bootargs=args.append,
        initrd=_read_file(args.initrd, "initrd"),
        dtb=_read_file(args.dtb, "dtb"),
        conduit=args.conduit,
        gic=args.gic,
    )
    return Machine(vm, program, vmm=vmm, reboots=args.reboots, boot=boot)


def _restored(args: argparse.Namespace, vmm: Vmm) -> Machine:
    """``--restore FILE``: the saved machine, with this command's run limits."""
    machine = Machine.load(args.restore, vmm=vmm, timeout=args.timeout)
    limits = machine.vm.limits
    limits.max_insns = args.max_insns
    limits.charged = 0
    if args.trace_insns and not machine.vm.trace_insns:
        raise EmuError("--trace-insns: the saved run was not recording instructions")
    return machine


def configure_vm(vm: Vm, caps=(), filters=(), regs=()) -> None:
    """What a VMM does before the first KVM_RUN: capabilities, SMCCC filter, ONE_REG writes."""
    for cap in caps:
        vm.enable_cap(cap)
    for base, nr, action in filters:
        vm.set_smccc_filter(base, nr, action)
    if not vm.vcpus:
        vm.create_vcpu(0)
    for reg, value in regs:
        for vcpu in vm.vcpus:
            vcpu.set_one_reg(reg, value)


def _gdb_address(text: str) -> tuple[str, int]:
    host, _, port_text = text.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected [HOST:]PORT, not {text!r}")
    return host or "127.0.0.1", port


def cmd_run(args: argparse.Namespace) -> int:
    if args.gdb_wait and args.gdb is None:
        raise EmuError("--gdb-wait needs --gdb [HOST:]PORT")
    vmm = load_vmm(args.vmm) if args.vmm else Vmm()
    if args.restore is not None:
        machine = _restored(args, vmm)
        program = machine.program
        args.program = program.name or args.restore
    else:
        program = load_program(args.program, args.assembler, args.format)
        machine = _machine(args, program, vmm, args.schedule, args.seed)
    if args.gdb is None:
        return _run(args, program, machine)
    host, port = args.gdb
    try:
        gdb = serve_gdb(machine.vm, port, host, wait=args.gdb_wait)
    except OSError as err:
        raise EmuError(f"--gdb {host}:{port}: {err.strerror or err}") from None
    print(f"emu: gdb stub listening on {gdb.host}:{gdb.port}", file=sys.stderr, flush=True)
    status = EXIT_ERROR
    try:
        status = _run(args, program, machine)
    finally:
        gdb.finish(status)
        gdb.close()
    return status


def _run(args: argparse.Namespace, program: Program, machine: Machine) -> int:
    vm = machine.vm
    with _interruptible(vm), contextlib.closing(vm):
        if args.json:
            result = machine.run()
            print(dumps(run_json(machine, result, program=args.program)))
        else:
            caps = ", ".join(c.flag_name for c in vm.enabled_caps) or "none"
            ranges = vm.smccc_filter.to_json()
            filt = "".join(f", filter {r['base']:#x}:{r['nr_functions']:#x}:{r['action']}" for r in ranges)
            restored = f" restored from {args.restore}" if args.restore else ""
            print(
                f"emu: {args.program} ({program.kind}, entry {program.entry:#x}){restored} on {vm.profile.name} "
                f"({len(vm.vcpus)} vCPU{'s' if len(vm.vcpus) > 1 else ''}, caps: {caps}{filt})"
            )
            sys.stdout.flush()
            printer = _LivePrinter(machine)
            try:
                result = machine.run(on_events=printer.exits)
            finally:
                printer.end()
            print(stop_line(result.stop))
            print("\n".join(register_lines(vm)))
        _write_outputs(args, vm)
    return EXIT_STATUS[stop_reason(result.stop)]


def _write_outputs(args: argparse.Namespace, vm: Vm) -> None:
    """--save, --trace and --plot, after the run (whatever its outcome)."""
    if getattr(args, "save", None):
        vm.save(args.save)
    if args.trace:
        try:
            vm.trace.write_jsonl(args.trace)
        except OSError as err:
            raise EmuError(f"--trace {args.trace}: {err.strerror}") from None
    if args.plot:
        try:
            vm.trace.plot(args.plot)
        except OSError as err:
            raise EmuError(f"--plot {args.plot}: {err.strerror}") from None
        except ValueError as err:  # matplotlib: a file name whose extension is no image format
            raise EmuError(f"--plot {args.plot}: {err}") from None


class _LivePrinter:
    """Human output as it happens: guest console bytes and hypercall lines, in order."""

    def __init__(self, machine: Machine) -> None:
        self.several = len(machine.vm.vcpus) > 1
        self.at_line_start = True
        machine.uart.sink = self.console
        machine.vm.on_event = self.event

    def console(self, data: bytes) -> None:
        sys.stdout.buffer.write(data)
        self.at_line_start = data.endswith(b"\n")
        if self.at_line_start:
            sys.stdout.buffer.flush()

    def _line(self, text: str) -> None:
        if not self.at_line_start:
            sys.stdout.buffer.write(b"\n")
            self.at_line_start = True
        sys.stdout.buffer.write(text.encode() + b"\n")
        sys.stdout.buffer.flush()

    def event(self, event) -> None:
        self._line(event_line(event, with_vcpu=self.several))

    def exits(self, events) -> None:
        for event in events:
            if event.exit is not None:
                self.event(event)

    def end(self) -> None:
        """Whatever the guest printed last reaches the terminal, however the run ended."""
        if not self.at_line_start:
            sys.stdout.buffer.write(b"\n")
            self.at_line_start = True
        sys.stdout.buffer.flush()


def _explore_chunk(job: tuple[str, argparse.Namespace, Program, list[int]]) -> list[tuple[int, str]]:
    """One explore work item (any process): the outcome key of each seed."""
    key, args, image, seeds = job
    keys = []
    # The boot's seed is the campaign's first: what is booted never depends on which
    # worker ran which seeds (every seed is restored and reseeded from it anyway).
    booted = warm(key, lambda: Booted.of(_machine(args, image, Vmm(), "random", args.first_seed)))
    machine = booted.machine
    assert machine is not None
    with _interruptible(booted.vm):
        for seed in seeds:
            vm = booted.fresh(seed, "random")
            # A fresh VMM per seed: state a --vmm file keeps cannot leak from one seed to the next.
            machine.use_vmm(load_vmm(args.vmm) if args.vmm else Vmm())
            keys.append((seed, outcome_key(vm, machine.run())))
    return keys


def cmd_explore(args: argparse.Namespace) -> int:
    if args.vmm:
        load_vmm(args.vmm)  # a broken --vmm file is reported before any work is spread
    image = load_program(args.program, args.assembler, args.format)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    key = campaign_key()
    jobs = [(key, args, image, seeds[i : i + EXPLORE_CHUNK]) for i in range(0, len(seeds), EXPLORE_CHUNK)]
    with Progress(len(seeds), sys.stderr) as progress:
        results = run_campaign(
            _explore_chunk,
            jobs,
            jobs=args.jobs,
            dask=args.dask,
            on_result=lambda _i, r: progress.step(len(r)),
        )
    outcomes: dict[str, list[int]] = {}
    for chunk in results:
        for seed, outcome in chunk:
            outcomes.setdefault(outcome, []).append(seed)
    if args.json:
        print(dumps(explore_json(outcomes, args.program, len(seeds))))
    else:
        print("\n".join(explore_lines(outcomes, len(seeds))))
    if args.expect_unique and len(outcomes) > 1:
        return EXIT_DIVERGED
    return 0


def _step_by_examples(progress: Progress, _index: int, result) -> None:
    progress.step(result.examples)


def _check_output_dir(output: str) -> None:
    """``--output DIR`` must be a directory emu can create or write, checked before the
    campaign runs rather than when a reproducer is due (nothing is created here)."""
    path = Path(output).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise EmuError(f"--output {output}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EmuError(f"--output {output}: {existing} is not writable")


def cmd_fuzz(args: argparse.Namespace) -> int:
    try:
        from emu.tools import fuzz
        from emu.tools.psci_states import run_psci_state_machine
    except ImportError as err:
        raise EmuError(
            f"emu fuzz needs hypothesis ({err.name} is missing): pip install 'hvc-emu[fuzz]'"
        ) from None
    _check_output_dir(args.output)
    names = sorted(PROFILES) if args.profile == "all" else [args.profile]
    status = 0
    for name in names:
        chunks = fuzz.plan(name, args.examples, args.seed)
        with Progress(args.examples, sys.stderr, label=f"fuzzing {name}") as progress:
            results = run_campaign(
                fuzz.fuzz_chunk,
                chunks,
                jobs=args.jobs,
                dask=args.dask,
                on_result=functools.partial(_step_by_examples, progress),
            )
        report = fuzz.summarize(name, args.seed, results, args.output)
        print("\n".join(report.lines))
        sys.stdout.flush()
        if report.failed:
            status = EXIT_FUZZ_FAILURE
        programs = max(5, args.examples // 10)
        failure = run_psci_state_machine(name, programs, args.seed)
        if failure is None:
            print(
                f"{name}: PSCI state machine, {programs} programs of calls from random vCPUs, invariants held"
            )
        else:
            print(f"{name}: PSCI state machine FAILED (seed {args.seed}):")
            print("\n".join(f"  {line}" for line in failure.splitlines()))
            status = EXIT_FUZZ_FAILURE
        sys.stdout.flush()
    return status


def cmd_coverage(args: argparse.Namespace) -> int:
    cov = Coverage()
    for item in args.inputs:
        if str(item).endswith(".jsonl"):
            cov.add(read_jsonl(item))
            continue
        machine = _machine(
            args, load_program(item, args.assembler, args.format), Vmm(), args.schedule, args.seed
        )
        with _interruptible(machine.vm), contextlib.closing(machine.vm):
            machine.run()
        cov.add(machine.vm.trace)
    report = cov.report()
    print(dumps(report) if args.json else "\n".join(report_lines(report)))
    return 0


def cmd_dtb(args: argparse.Namespace) -> int:
    initrd = _read_file(args.initrd, "initrd") or b""
    vm = _vm(args)
    create_gic(vm, args.gic)
    dtb = machine_dtb(vm, bootargs=args.append, initrd_size=len(initrd), conduit=args.conduit)
    try:
        Path(args.output).write_bytes(dtb)
    except OSError as err:
        raise EmuError(f"-o {args.output}: {err.strerror}") from None
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    print("\n".join(profile_lines()))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    if len(names) < 2:
        raise EmuError("--profiles needs at least two profiles, comma-separated")
    vmm = load_vmm(args.vmm) if args.vmm else Vmm()
    program = load_program(args.program, args.assembler, args.format)
    runs, notes = [], []
    for name in names:
        args.profile = name
        vm = _vm(args, args.schedule, args.seed)
        notes.append(configure_for(vm, args.cap, args.smccc_filter, args.set_reg))
        boot = BootOptions(
            bootargs=args.append,
            initrd=_read_file(args.initrd, "initrd"),
            dtb=_read_file(args.dtb, "dtb"),
            conduit=args.conduit,
        )
        machine = Machine(vm, program, vmm=vmm, reboots=args.reboots, boot=boot)
        with _interruptible(vm), contextlib.closing(vm):
            runs.append((vm.profile.name, vm, machine.run()))
    result = diff_runs(runs, notes)
    print(dumps(result.to_json()) if args.json else "\n".join(result.lines()))
    return 0 if result.same else EXIT_PROFILES_DIFFER


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and (args.program is None) == (args.restore is None):
        parser.error("give PROGRAM or --restore FILE" + (", not both" if args.restore else ""))
    commands = {
        "run": cmd_run,
        "explore": cmd_explore,
        "fuzz": cmd_fuzz,
        "coverage": cmd_coverage,
        "dtb": cmd_dtb,
        "profiles": cmd_profiles,
        "diff": cmd_diff,
    }
    debug = bool(getattr(args, "debug", False) or os.environ.get("EMU_DEBUG"))
    try:
        return commands[args.command](args)
    except EmuError as err:
        print(f"emu: error: {err}", file=sys.stderr)
        if debug and err.__cause__ is not None:
            traceback.print_exception(err.__cause__, file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("emu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. ``| head``): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as err:
        if debug:
            raise
        print(
            f"emu: internal error: {type(err).__name__}: {err} (run with --debug for a traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
