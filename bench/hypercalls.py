"""Hypercall and compute throughput of emu against bare Unicorn, measured in one run.

Four figures, all on the same machine in the same process. Each round measures all four
back to back; a ratio is taken within a round (both sides under the same host load) and
the median over ``--repeat`` rounds is reported, which keeps the figures steady on a noisy
host:

* ceiling:  bare Unicorn, a minimal UC_HOOK_INTR handler that writes x0 (the most any
            Python-side hypercall model can reach);
* handled:  emu answering SMCCC_VERSION in-kernel (trap, ESR, model, event record);
* exit:     emu forwarding a vendor call to userspace and the VMM loop answering it
            (vcpu.run() returns, handler writes x0, vcpu.run() again);
* compute:  a trap-free guest loop under emu vs. the same loop under bare Unicorn.

emu is measured in the mode a plain ``emu run`` uses: no instruction budget (count-less
Unicorn runs) and the default wall-clock timeout, i.e. with the watchdog armed.

    python bench/hypercalls.py [--calls N] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import time
from statistics import median

from unicorn import UC_ARCH_ARM64, UC_HOOK_INTR, UC_MODE_ARM, UC_PROT_ALL, Uc
from unicorn import arm64_const as a64

from emu import Cap, SmcccFilterAction, Vm
from emu.abi.exits import SystemEventExit
from emu.arm.asm import assemble
from emu.kvm.profiles import DEFAULT_PROFILE, get_profile
from emu.kvm.vcpu import HCR_EL2, HCR_RW, NEVER, SCR_EL3, SCR_NS_HCE_RW
from emu.kvm.vm import LOAD_ADDR, RAM_BASE
from emu.tools.cli import DEFAULT_TIMEOUT_S
from emu.vmm.machine import Machine, Vmm

HVC_LOOP = """
    ldr x20, ={n}
    mov x19, #0
again:
    ldr x0, ={fid}
    hvc #0
    add x19, x19, #1
    cmp x19, x20
    b.ne again
{end}
"""

COMPUTE_LOOP = """
    ldr x20, ={n}
    mov x19, #0
    mov x1, #1
again:
    add x2, x2, x1
    eor x3, x3, x2
    add x19, x19, #1
    cmp x19, x20
    b.ne again
{end}
"""

# How a loop ends: SYSTEM_OFF under emu; WFI (emu_start returns) under bare Unicorn, so
# the bare hook does nothing but write x0.
EMU_END = "    ldr x0, =0x84000008\n    hvc #0"
BARE_END = "    wfi"

SMCCC_VERSION = 0x8000_0000
VENDOR_CALL = 0xC600_0040
RAM = 16 << 20


def bare_unicorn(code: bytes, on_hvc) -> Uc:
    """The engine-notes vCPU recipe with nothing of emu: one Uc, one INTR hook."""
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.cpr_write(*SCR_EL3, uc.cpr_read(*SCR_EL3) | SCR_NS_HCE_RW)
    uc.cpr_write(*HCR_EL2, HCR_RW)
    buf = mmap.mmap(-1, RAM)
    uc.mem_map_ptr(RAM_BASE, RAM, UC_PROT_ALL, ctypes.addressof(ctypes.c_char.from_buffer(buf)))
    uc.mem_write(LOAD_ADDR, code)
    uc.hook_add(UC_HOOK_INTR, on_hvc)
    uc._emu_buf = buf  # keep the mapping alive with the engine
    return uc


def time_bare(code: bytes, iterations: int) -> float:
    def on_hvc(uc, intno, _):
        uc.reg_write(a64.UC_ARM64_REG_X0, 0x10001)

    uc = bare_unicorn(code, on_hvc)
    start = time.perf_counter()
    uc.emu_start(LOAD_ADDR, NEVER)
    elapsed = time.perf_counter() - start
    assert uc.reg_read(a64.UC_ARM64_REG_X19) == iterations
    return elapsed


PROFILE = DEFAULT_PROFILE


def emu_vm(source: str, caps=()) -> tuple[Vm, object]:
    vm = Vm(PROFILE, mem_size=RAM, timeout=DEFAULT_TIMEOUT_S * 30)
    for cap in caps:
        vm.enable_cap(cap)
    vm.load_asm(source)
    vcpu = vm.create_vcpu(0)
    vcpu.pc = LOAD_ADDR
    return vm, vcpu


def time_emu_handled(n: int) -> float:
    vm, vcpu = emu_vm(HVC_LOOP.format(n=n, fid=SMCCC_VERSION, end=EMU_END))
    start = time.perf_counter()
    exit_ = vcpu.run()
    elapsed = time.perf_counter() - start
    assert isinstance(exit_, SystemEventExit) and len(vm.hypercalls) == n + 1
    vm.close()
    return elapsed


def time_emu_exit(n: int) -> float:
    vm = Vm(PROFILE, mem_size=RAM, timeout=DEFAULT_TIMEOUT_S * 30)
    if vm.profile.smccc_filter:
        # Upstream: forward the vendor call with a FWD_TO_USER filter range.
        vm.set_smccc_filter(VENDOR_CALL, 1, SmcccFilterAction.FWD_TO_USER)
    else:
        vm.enable_cap(Cap.ARM_HVC_TO_USER)
    image = assemble(HVC_LOOP.format(n=n, fid=VENDOR_CALL, end=EMU_END), LOAD_ADDR)
    machine = Machine(vm, image, vmm=Vmm(lambda v, e: 0))
    start = time.perf_counter()
    result = machine.run()
    elapsed = time.perf_counter() - start
    assert isinstance(result.stop, SystemEventExit) and len(result.exits) == n + 1
    vm.close()
    return elapsed


def time_compute(n: int) -> tuple[float, float]:
    bare = time_bare(assemble(COMPUTE_LOOP.format(n=n, end=BARE_END), LOAD_ADDR), n)
    vm, vcpu = emu_vm(COMPUTE_LOOP.format(n=n, end=EMU_END))
    start = time.perf_counter()
    exit_ = vcpu.run()
    emu_s = time.perf_counter() - start
    assert isinstance(exit_, SystemEventExit)
    vm.close()
    return bare, emu_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help="hypercalls per measurement")
    parser.add_argument(
        "--compute-iters",
        type=int,
        default=50_000_000,
        help="iterations of the trap-free loop (5 instructions each)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="rounds; figures are medians over rounds")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help="modelled kernel (rfc-2021, or linux-6.6+ whose filter can forward calls)",
    )
    args = parser.parse_args()
    n = args.calls
    global PROFILE
    PROFILE = get_profile(args.profile).name

    ceiling_code = assemble(HVC_LOOP.format(n=n, fid=SMCCC_VERSION, end=BARE_END), LOAD_ADDR)
    rounds = []
    for _ in range(args.repeat):
        rounds.append(
            (
                time_bare(ceiling_code, n),
                time_emu_handled(n),
                time_emu_exit(n),
                *time_compute(args.compute_iters),
            )
        )
    ceiling_s, handled_s, exit_s, bare_compute_s, emu_compute_s = (
        median(col) for col in zip(*rounds, strict=True)
    )

    figures = {
        "mode": "count-less runs, watchdog armed (plain `emu run`)",
        "profile": PROFILE,
        "repeat": args.repeat,
        "calls": n,
        "ceiling_per_s": round(n / ceiling_s),
        "handled_per_s": round(n / handled_s),
        "exit_per_s": round(n / exit_s),
        "handled_ratio": round(median(c / h for c, h, *_ in rounds), 3),
        "exit_ratio": round(median(c / e for c, _, e, *_ in rounds), 3),
        "compute_mips_bare": round(5 * args.compute_iters / bare_compute_s / 1e6),
        "compute_mips_emu": round(5 * args.compute_iters / emu_compute_s / 1e6),
        "compute_ratio": round(median(b / e for *_, b, e in rounds), 3),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"mode: {figures['mode']}, profile {PROFILE}")
    print(f"ceiling  (bare Unicorn hook)     {figures['ceiling_per_s']:>10,} calls/s")
    print(
        f"handled  (in-kernel SMCCC)       {figures['handled_per_s']:>10,} calls/s  "
        f"{figures['handled_ratio']:.2f}x ceiling (target >= 0.5)"
    )
    print(
        f"exit     (userspace round trip)  {figures['exit_per_s']:>10,} calls/s  "
        f"{figures['exit_ratio']:.2f}x ceiling (target >= 0.25)"
    )
    print(
        f"compute  bare {figures['compute_mips_bare']} MIPS, emu {figures['compute_mips_emu']} MIPS  "
        f"{figures['compute_ratio']:.2f}x (target >= 0.95)"
    )


if __name__ == "__main__":
    main()
