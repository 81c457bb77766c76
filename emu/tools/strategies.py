"""Hypothesis strategies for SMCCC hypercalls, derived from a profile's own tables.

``function_ids(profile)`` draws function ids from every owner (Arm architecture, CPU, SiP,
OEM, Standard Secure, Standard Hypervisor, Vendor Hypervisor, Trusted Apps and OSes,
reserved), both conventions (SMC32/SMC64), fast and yielding, and favours what the
profile answers in the kernel (its function switch, its EL2 fast path, PSCI, KVM's 0.1
ids) and their neighbours (id +- 1, the other convention, the yielding twin).
``register_values()`` favours values that select behaviour (MPIDRs, affinity levels,
TRNG bit counts, function ids as arguments, sign and width edges). ``smccc_calls(profile)``
builds whole ``emu.tools.fuzz_oracle.Case`` values: conduit, immediate, x0..x17 and a set of
capabilities the profile can enable. ``emu.testing.strategies`` re-exports them for tests.
"""

from __future__ import annotations

import random
from functools import cache

from hypothesis import strategies as st

from emu.abi import smccc
from emu.errors import EmuError
from emu.kvm.profiles import PROFILES, Profile, get_profile
from emu.kvm.vcpu import reset_mpidr
from emu.kvm.vm import Vm
from emu.smccc import psci
from emu.smccc.decode import _ARG_NAMES
from emu.tools.coverage import in_kernel_functions
from emu.tools.fuzz_oracle import BITMAP_DEFAULTS, FILTER_RESERVED, FUZZ_CPUS, M32, M64, NREGS, PARK, Case

# Owning entity numbers, DEN0028 table 6-2: the defined ones, two reserved, TA and TOS ranges.
OWNERS = (0, 1, 2, 3, 4, 5, 6, 7, 47, 48, 49, 50, 63)
_FNS = (
    0x0,
    0x1,
    0x2,
    0x3,
    0x8,
    0xA,
    0x1F,
    0x20,
    0x3F,
    0x40,
    0x50,
    0x53,
    0x60,
    0xFF00,
    0xFF01,
    0xFF03,
    0xFFFF,
)


def _profile(profile: str | Profile) -> Profile:
    return get_profile(profile) if isinstance(profile, str) else profile


def known_ids(profile: str | Profile) -> list[int]:
    """What the profile answers itself, plus every named PSCI and SMCCC function."""
    p = _profile(profile)
    ids = set(in_kernel_functions(p)) | set(p.handlers) | set(p.hvc_fast_path) | set(psci.NAMES)
    ids |= {smccc.SMCCC_ARCH_SOC_ID, smccc.SDEI_VERSION, 0x8400_FF01, 0x8400_FF03}
    return sorted(ids)


def neighbours(fid: int) -> list[int]:
    """id +- 1, the other calling convention, the yielding twin, a set SVE hint bit."""
    return sorted({(fid + 1) & M32, (fid - 1) & M32, fid ^ (1 << 30), fid ^ (1 << 31), fid | 1 << 16})


@st.composite
def _composed_id(draw) -> int:
    fast = draw(st.booleans())
    is64 = draw(st.booleans())
    owner = draw(st.sampled_from(OWNERS) | st.integers(0, 63))
    fn = draw(st.sampled_from(_FNS) | st.integers(0, 0xFFFF))
    mbz = draw(st.just(0) | st.integers(0, 0xFF))
    return fast << 31 | is64 << 30 | owner << 24 | mbz << 16 | fn


def in_kernel_ids(profile: str | Profile) -> list[int]:
    """What the profile's KVM answers itself: its switch, its EL2 fast path, its PSCI."""
    p = _profile(profile)
    return sorted(set(in_kernel_functions(p)) | set(p.handlers) | set(p.hvc_fast_path))


def function_ids(profile: str | Profile, focus: tuple[int, ...] = ()) -> st.SearchStrategy[int]:
    """32-bit function ids: the profile's known ones, their neighbours, any owner and shape.

    With ``focus`` only those ids and their neighbours are drawn: Hypothesis spends a run's
    examples on few distinct ids, so a campaign gives most chunks a focus of their own.
    """
    p = _profile(profile)
    in_kernel = in_kernel_ids(p)
    known = known_ids(p)
    near = sorted({n for fid in known for n in neighbours(fid)} - set(known))
    # What the kernel answers itself is drawn most often: that is where the rules are.
    # Hypothesis' one_of does not weigh its branches; a sampled branch number does.
    branches = [st.sampled_from(in_kernel)] * 5 + [
        st.sampled_from(known),
        st.sampled_from(near),
        _composed_id(),
    ]
    if focus:
        close = sorted({n for fid in focus for n in neighbours(fid)})
        return st.sampled_from(focus) | st.sampled_from(close)
    return st.sampled_from(range(len(branches))).flatmap(branches.__getitem__)


def x0_values(profile: str | Profile, focus: tuple[int, ...] = ()) -> st.SearchStrategy[int]:
    """x0 = a function id, sometimes with garbage in the upper half KVM must ignore."""
    upper = st.just(0) | st.sampled_from((1, 0xFFFF_FFFF)) | st.integers(0, M32)
    return st.builds(lambda fid, hi: hi << 32 | fid, function_ids(profile, focus), upper)


def register_values(cpus: int = FUZZ_CPUS) -> st.SearchStrategy[int]:
    """Argument values: small numbers, MPIDRs of the vCPUs (with reserved bits), width edges."""
    mpidrs = [reset_mpidr(i) & psci.MPIDR_HWID_BITMASK for i in range(cpus + 1)]
    special = sorted(
        {0, 1, 2, 3, 4, 32, 64, 96, 97, 128, 192, 193, M32, M64, 1 << 31, 1 << 32, 0x8000_0000_0000_0000}
        | set(mpidrs)
        | {m | 1 << 31 for m in mpidrs}
        | {m | 1 << 40 for m in mpidrs}
        | {m | 1 << 32 for m in mpidrs}
        | {
            smccc.SMCCC_VERSION,
            smccc.SMCCC_ARCH_WORKAROUND_1,
            smccc.SMCCC_ARCH_WORKAROUND_2,
            smccc.SMCCC_ARCH_WORKAROUND_3,
            smccc.PV_TIME_FEATURES,
            smccc.TRNG_RND64,
            psci.CPU_ON,
            psci.SYSTEM_RESET2,
            psci.CPU_SUSPEND,
            M32 << 32 | smccc.SMCCC_VERSION,
        }
    )
    return st.sampled_from(special) | st.integers(0, 0xFF) | st.integers(0, M64)


@cache
def cap_sets(profile: str) -> tuple[tuple[str, ...], ...]:
    """Every ordered set of enableable capabilities a VM of this profile accepts."""
    p = get_profile(profile)
    caps = sorted(p.enableable_caps)
    out: list[tuple[str, ...]] = [()]
    for mask in range(1, 1 << len(caps)):
        chosen = [c for i, c in enumerate(caps) if mask >> i & 1]
        vm = Vm(p, mem_size=1 << 20)
        try:
            for cap in chosen:
                vm.enable_cap(cap)
        except EmuError:
            continue
        finally:
            vm.close()
        out.append(tuple(c.name for c in chosen))
    return tuple(out)


def _arg(name: str, profile: str, cpus: int) -> st.SearchStrategy[int]:
    """A value for the argument the function calls ``name`` (``emu.smccc.decode``'s names)."""
    mpidrs = [reset_mpidr(i) & psci.MPIDR_HWID_BITMASK for i in range(cpus + 1)]
    if name == "target":
        # Picked by a wide integer: Hypothesis draws those more evenly than a short sample.
        reserved = (0, 0, 0, 1 << 31, 1 << 24, 1 << 32, 1 << 40, 1 << 63)
        return st.integers(0, 2**20).map(lambda k: mpidrs[k % len(mpidrs)] | reserved[k // 7 % len(reserved)])
    if name == "level":
        return st.integers(0, 2**20).map(lambda k: k % 5 if k % 8 else k << 12)
    if name == "fid":
        return st.sampled_from(known_ids(profile)) | x0_values(profile)
    if name == "bits":
        edges = (0, 1, 31, 32, 33, 63, 64, 65, 95, 96, 97, 127, 128, 129, 191, 192, 193)
        return (
            st.sampled_from(edges)
            | st.integers(0, M32)
            | st.builds(lambda n, hi: hi << 32 | n, st.sampled_from(edges), st.integers(1, M32))
        )
    if name == "entry":
        return st.just(PARK)  # where the harness parks vCPUs that CPU_ON starts
    if name in ("counter", "type"):
        return st.sampled_from((0, 1, 2, 0x8000_0000, M32)) | st.integers(0, M64)
    return register_values(cpus)


def _filler(seed: int, count: int) -> tuple[int, ...]:
    """Registers no rule reads but every rule must leave alone: 0s, or values from ``seed``."""
    if seed == 0:
        return (0,) * count
    rng = random.Random(seed)
    return tuple(rng.choice((rng.getrandbits(64), rng.getrandbits(8), M64)) for _ in range(count))


def arguments(fid: int, profile: str, cpus: int = FUZZ_CPUS) -> st.SearchStrategy[tuple[int, ...]]:
    """x1..x17 for ``fid``: its named arguments drawn to hit its rules, x1..x3 otherwise
    anything, and x4..x17 from one seed, so Hypothesis spends its examples on what matters."""
    names = _ARG_NAMES.get(fid & M32, ())
    named = [_arg(n, profile, cpus) for n in names][:3]
    low = [register_values(cpus)] * (3 - len(named))
    filler = st.integers(0, 2**32).map(lambda s: _filler(s, NREGS - 4))
    return st.builds(lambda head, rest: (*head, *rest), st.tuples(*named, *low), filler)


def filter_ranges(profile: str | Profile, fid: int) -> st.SearchStrategy[tuple[tuple[int, int, int], ...]]:
    """No filter, or one range (around ``fid`` most of the time) with any action, for profiles
    with the SMCCC filter (``Profile.smccc_filter``); ranges over the Arm Architecture calls,
    which KVM refuses (EEXIST), are not drawn."""
    if not getattr(_profile(profile), "smccc_filter", False):
        return st.just(())
    fid &= M32

    def valid(r: tuple[int, int, int]) -> bool:
        base, nr, _ = r
        end = base + nr - 1
        return nr > 0 and end <= M32 and not any(base <= hi and lo <= end for lo, hi in FILTER_RESERVED)

    around = st.builds(
        lambda below, above, action: (max(0, fid - below), min(fid, below) + above + 1, action),
        st.integers(0, 0x40),
        st.integers(0, 0x40),
        st.integers(0, 2),
    )
    anywhere = st.tuples(st.integers(0, M32), st.integers(1, 0x1000), st.integers(0, 2))
    one = (around | anywhere).filter(valid)
    return st.just(()) | one.map(lambda r: (r,))


def firmware_bitmaps(profile: str | Profile) -> st.SearchStrategy[tuple[tuple[str, int], ...]]:
    """Nothing, or values for the firmware bitmap registers (any subset of each one's
    default bits), for profiles with the bitmap gate (``Profile.bitmap_gate``)."""
    if not getattr(_profile(profile), "bitmap_gate", False):
        return st.just(())
    one = st.sampled_from(sorted(BITMAP_DEFAULTS)).flatmap(
        lambda name: st.integers(0, BITMAP_DEFAULTS[name]).map(lambda v: (name, v & BITMAP_DEFAULTS[name]))
    )
    return st.just(()) | st.lists(one, max_size=3, unique_by=lambda r: r[0]).map(tuple)


def smccc_calls(
    profile: str | Profile,
    conduits: tuple[str, ...] = ("hvc", "smc"),
    cpus: int = FUZZ_CPUS,
    caps: tuple[str, ...] | None = None,
    focus: tuple[int, ...] = (),
) -> st.SearchStrategy[Case]:
    """Whole hypercalls for ``emu.tools.fuzz.run_case``: HVC or SMC, any immediate, x0..x17, and
    a set of capabilities the profile accepts (``caps`` fixes them, e.g. ``("ARM_HVC_TO_USER",)``)."""
    name = _profile(profile).name
    cap_choice = st.just(tuple(caps)) if caps is not None else st.sampled_from(cap_sets(name))
    imms = st.just(0) | st.sampled_from((1, 0x1234, 0xFFFF)) | st.integers(0, 0xFFFF)
    regs = x0_values(name, focus).flatmap(lambda x0: arguments(x0, name, cpus).map(lambda rest: (x0, *rest)))
    with_filters = regs.flatmap(lambda r: filter_ranges(name, r[0]).map(lambda f: (r, f)))
    return st.builds(
        lambda conduit, imm, regs_filters, caps, bitmaps: Case(
            name, conduit, imm, regs_filters[0], caps, cpus, regs_filters[1], bitmaps
        ),
        st.sampled_from(conduits) | st.just(conduits[0]),
        imms,
        with_filters,
        cap_choice,
        firmware_bitmaps(name),
    )


def profiles() -> st.SearchStrategy[str]:
    """Any modelled kernel."""
    return st.sampled_from(sorted(PROFILES))


__all__ = [
    "arguments",
    "cap_sets",
    "filter_ranges",
    "firmware_bitmaps",
    "function_ids",
    "in_kernel_ids",
    "known_ids",
    "neighbours",
    "profiles",
    "register_values",
    "smccc_calls",
    "x0_values",
]
