"""The ``emu`` command.

``emu run PROGRAM.S`` assembles a guest at 0x40080000, runs vCPU 0 from there under the
chosen profile and prints every hypercall, decoded, then the stop and the registers (or
one JSON document with ``--json``). ``emu profiles`` lists the modelled kernels.

Every user mistake ends in one ``emu: error: ...`` line and a non-zero status; the
status of a run says how it stopped (see ``report.EXIT_STATUS``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from emu import __version__
from emu.asm import assemble
from emu.caps import parse_cap
from emu.errors import EmuError, ImageError
from emu.profiles import DEFAULT_PROFILE, PROFILES
from emu.report import EXIT_STATUS, dumps, event_line, register_lines, run_json, stop_line, stop_reason
from emu.runner import load_vmm, not_supported, run_vcpu
from emu.vm import DEFAULT_RAM_SIZE, LOAD_ADDR, Vm

EXIT_ERROR = 1
DEFAULT_TIMEOUT_S = 10.0

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*$")


def parse_size(text: str) -> int:
    """``128M``, ``64MiB``, ``1G``, ``4096``: bytes."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (e.g. 128M)")
    shift = {"": 0, "k": 10, "m": 20, "g": 30}[match.group(2).lower()]
    return int(match.group(1)) << shift


def _positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _cap(text: str):
    try:
        return parse_cap(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line: ``emu: error: ...``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"emu: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="emu", description="Run AArch64 guest code against a modelled KVM/arm64.")
    parser.add_argument("--version", action="version", version=f"emu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a guest program and report its hypercalls")
    run.add_argument("program", help="A64 assembly (.S/.s) or a flat binary (.bin)")
    run.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES),
                     help=f"modelled kernel (default {DEFAULT_PROFILE})")
    run.add_argument("--cap", action="append", default=[], type=_cap, metavar="NAME",
                     help="enable a capability, e.g. hvc-to-user or KVM_CAP_ARM_HVC_TO_USER")
    run.add_argument("--max-insns", type=_positive_int, metavar="N",
                     help="instruction budget (slower: counted by Unicorn)")
    run.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT_S, metavar="S",
                     help=f"wall-clock limit in seconds (default {DEFAULT_TIMEOUT_S:g})")
    run.add_argument("--vmm", metavar="FILE.py",
                     help="Python file whose handle_hypercall(vcpu, exit) answers hypercall exits")
    run.add_argument("--seed", type=int, default=0, help="seed for TRNG entropy (default 0)")
    run.add_argument("--mem", type=parse_size, default=DEFAULT_RAM_SIZE, metavar="SIZE",
                     help="guest RAM at 0x40000000 (default 128M)")
    run.add_argument("--assembler", choices=("auto", "keystone", "gnu"), default="auto",
                     help="assembler for .S programs (default: keystone unless GNU as is needed)")
    run.add_argument("--json", action="store_true", help="print one JSON document instead of text")

    sub.add_parser("profiles", help="list the modelled kernels")
    return parser


def _load_program(path: Path, assembler: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory") from None
    except OSError as err:
        raise ImageError(f"{path}: {err.strerror}") from None
    suffix = path.suffix.lower()
    if suffix in (".s", ".asm"):
        try:
            source = data.decode()
        except UnicodeDecodeError:
            raise ImageError(f"{path}: not UTF-8 text") from None
        try:
            return assemble(source, LOAD_ADDR, assembler=assembler)
        except EmuError as err:
            raise EmuError(f"{path}: {err}") from None
    if suffix == ".bin":
        if not data:
            raise ImageError(f"{path}: empty image")
        return data
    raise ImageError(f"{path}: unknown program type {suffix or '(no suffix)'!r}; "
                     "expected .S assembly or a .bin flat image")


@contextlib.contextmanager
def _interruptible(vm: Vm):
    """Make Ctrl-C stop a guest that runs inside Unicorn without ever returning to Python.

    Python only runs its SIGINT handler between bytecodes, so a trap-free guest loop would
    ignore Ctrl-C. The C-level handler also writes to a wakeup fd; a thread waiting on it
    stops the running vCPU, and the KeyboardInterrupt is then raised as usual.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def wait_for_signal() -> None:
        while os.read(read_fd, 1):
            vm.limits.interrupt()
        os.close(read_fd)

    threading.Thread(target=wait_for_signal, name="emu-sigint", daemon=True).start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        os.close(write_fd)


def cmd_run(args: argparse.Namespace) -> int:
    handler = load_vmm(args.vmm) if args.vmm else not_supported
    image = _load_program(Path(args.program), args.assembler)
    try:
        vm = Vm(args.profile, mem_size=args.mem, seed=args.seed, max_insns=args.max_insns,
                timeout=args.timeout)
    except ValueError as err:
        raise EmuError(str(err)) from None
    with _interruptible(vm), contextlib.closing(vm):
        for cap in args.cap:
            vm.enable_cap(cap)
        vm.load(image, LOAD_ADDR)
        vcpu = vm.create_vcpu(0)
        vcpu.pc = LOAD_ADDR
        if args.json:
            result = run_vcpu(vcpu, handler)
            print(dumps(run_json(vm, result, program=args.program)))
        else:
            caps = ", ".join(c.flag_name for c in vm.enabled_caps) or "none"
            print(f"emu: {args.program} on {vm.profile.name} (caps: {caps})")
            result = run_vcpu(vcpu, handler, on_events=_print_events)
            print(stop_line(result.stop))
            print("\n".join(register_lines(vm)))
    return EXIT_STATUS[stop_reason(result.stop)]


def _print_events(events) -> None:
    for event in events:
        print(event_line(event))
    sys.stdout.flush()


def cmd_profiles(args: argparse.Namespace) -> int:
    for name, profile in PROFILES.items():
        default = " (default)" if name == DEFAULT_PROFILE else ""
        print(f"{name}{default}: {profile.summary}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        return cmd_profiles(args)
    except EmuError as err:
        print(f"emu: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("emu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. ``| head``): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as err:
        if os.environ.get("EMU_DEBUG"):
            raise
        print(f"emu: internal error: {type(err).__name__}: {err} (set EMU_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
