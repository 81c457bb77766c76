"""Property-based hypercall fuzzing: random SMCCC calls through real guest code, checked
against what KVM is documented to answer (``emu fuzz``).

``emu.tools.fuzz_oracle`` holds one case (``Case``, ``run_case``), KVM's rules for it
(``expect``, ``check_case``) and its reproducer; ``emu.tools.strategies`` draws cases. This
module drives Hypothesis: ``fuzz_chunk`` runs one chunk of examples and shrinks a failure
to its minimal case; ``plan`` cuts a campaign into chunks with seeds derived from the
user's seed and a focus of in-kernel function ids each, so ``--jobs`` and ``--dask``
never change the result; ``summarize`` reports it and writes the reproducer.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from emu.errors import EmuError
from emu.tools.fuzz_oracle import (
    ANY,
    FUZZ_CPUS,
    FUZZ_MEM,
    NREGS,
    PARK,
    RETURNED_PC,
    Case,
    Expect,
    OracleError,
    Outcome,
    Reg,
    Violation,
    check_case,
    expect,
    program_bytes,
    program_lines,
    reproduce_command,
    reproducer,
    run_case,
    violations,
)
from emu.tools.strategies import in_kernel_ids, smccc_calls

__all__ = [
    "ANY",
    "FUZZ_CPUS",
    "FUZZ_MEM",
    "NREGS",
    "PARK",
    "RETURNED_PC",
    "Case",
    "Chunk",
    "ChunkResult",
    "Expect",
    "OracleError",
    "Outcome",
    "Reg",
    "Report",
    "Violation",
    "check_case",
    "expect",
    "fuzz_chunk",
    "plan",
    "program_bytes",
    "program_lines",
    "reproduce_command",
    "reproducer",
    "run_case",
    "summarize",
    "violations",
]


# -- Hypothesis: one chunk of a campaign ---------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """A picklable unit of fuzzing work: ``examples`` Hypothesis examples from ``seed``."""

    profile: str
    examples: int
    seed: int
    index: int = 0
    focus: tuple[int, ...] = ()  # function ids this chunk draws most often
    # Run every case on a restored booted VM (False: build a VM per case, for comparison).
    restore: bool = True


@dataclass
class ChunkResult:
    index: int
    examples: int
    failure: Case | None = None
    violations: list[str] = field(default_factory=list)


def fuzz_chunk(chunk: Chunk, on_example: Callable[[], None] | None = None) -> ChunkResult:
    """Run Hypothesis over ``chunk``; a failure comes back shrunk to its minimal case."""
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis.errors import HypothesisDeprecationWarning

    result = ChunkResult(chunk.index, 0)
    failing: list[tuple[Case, list[Violation]]] = []

    @seed(chunk.seed)
    @settings(
        max_examples=chunk.examples,
        database=None,
        deadline=None,
        derandomize=False,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(smccc_calls(chunk.profile, focus=chunk.focus))
    def prop(case: Case) -> None:
        result.examples += 1
        if on_example is not None:
            on_example()
        found = check_case(case, restore=chunk.restore)
        if found:
            failing.append((case, found))
            raise AssertionError(found[0].rule)

    with warnings.catch_warnings():
        # Inside a Dask worker other threads touch the global random module; Hypothesis
        # notices and warns, although this test's draws never use it.
        warnings.simplefilter("ignore", HypothesisDeprecationWarning)
        with contextlib.suppress(AssertionError):
            prop()
    if failing:
        case, found = failing[-1]  # Hypothesis replays the minimal example last
        result.failure = case
        result.violations = [str(v) for v in found]
    return result


def chunk_seeds(seed: int, count: int) -> list[int]:
    """Independent per-chunk seeds derived from the campaign seed (stable across --jobs)."""
    return [(seed * 1_000_003 + i * 7919) & 0xFFFF_FFFF for i in range(count)]


def plan(profile: str, examples: int, seed: int, chunk_size: int = 25) -> list[Chunk]:
    """Chunks of ``chunk_size`` examples. Every third draws from all function ids; the others
    share out the in-kernel ids as their focus, so even a short campaign calls each one
    with arguments aimed at its rules (Hypothesis alone would not spread that far)."""

    sizes = [chunk_size] * (examples // chunk_size)
    if examples % chunk_size:
        sizes.append(examples % chunk_size)
    ids = in_kernel_ids(profile)
    count = len(sizes)
    focused = [i for i in range(count) if i % 3 != 2]
    focus: list[tuple[int, ...]] = [()] * count
    for n, i in enumerate(focused):
        focus[i] = tuple(ids[n :: len(focused)]) if len(focused) < len(ids) else (ids[n % len(ids)],)
    seeds = chunk_seeds(seed, count)
    return [Chunk(profile, n, s, i, f) for i, (n, s, f) in enumerate(zip(sizes, seeds, focus, strict=True))]


@dataclass
class Report:
    lines: list[str]
    failed: bool
    path: str | None = None


def summarize(profile: str, seed: int, results: list[ChunkResult], output: str = ".") -> Report:
    """The campaign's verdict, from chunk results in chunk order (the first failure wins)."""
    from pathlib import Path

    examples = 0
    for result in results:
        examples += result.examples
        if result.failure is None:
            continue
        case = result.failure
        found = check_case(case)
        if not found:  # the shrunk case must still fail on its own
            found = [Violation(v) for v in result.violations]
        path = Path(output) / f"fuzz-{profile}-seed{seed}.S"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(reproducer(case, found))
        except OSError as err:
            raise EmuError(f"--output {output}: {err.strerror}") from None
        lines = [
            f"{profile}: FAILED after {examples} examples (seed {seed}, chunk {result.index})",
            f"  minimal case: {case.describe()}",
            *(f"  violated: {v}" for v in found),
            f"  reproducer: {path}",
            f"  run: {' '.join(reproduce_command(case, str(path)))}",
        ]
        return Report(lines, True, str(path))
    return Report([f"{profile}: {examples} examples, no invariant broken (seed {seed})"], False)
