"""Which vCPU runs next, and for how many instructions: deterministic by construction.

vCPUs never run concurrently (guest atomics are only atomic when Unicorn instances take
turns, engine notes 0.1); the scheduler interleaves them in quanta counted in guest
instructions, never host time, so the same program, flags and seed give the same
interleaving and the same trace.

* ``RoundRobin``: each runnable vCPU in id order, fixed quantum.
* ``RandomSchedule``: a seeded choice of vCPU and quantum length (1 .. 2x quantum) at
  every step, to explore interleavings on purpose (``emu explore``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

DEFAULT_QUANTUM = 1000


class Schedulable(Protocol):
    """What the scheduler knows of a vCPU: its id."""

    @property
    def id(self) -> int: ...


V = TypeVar("V", bound=Schedulable)


class Scheduler(Protocol):
    name: str
    quantum: int

    def pick(self, runnable: Sequence[V]) -> tuple[V, int]:
        """Choose the next vCPU among ``runnable`` (in id order) and its quantum."""

    def snapshot(self) -> dict[str, Any]:
        """Where the schedule is: enough to continue it exactly (``restore``)."""

    def restore(self, data: dict[str, Any]) -> None: ...


class RoundRobin:
    """Runnable vCPUs in turn, by id, each for ``quantum`` instructions."""

    name = "rr"

    def __init__(self, quantum: int = DEFAULT_QUANTUM) -> None:
        self.quantum = quantum
        self._last = -1

    def pick(self, runnable: Sequence[V]) -> tuple[V, int]:
        chosen = next((v for v in runnable if v.id > self._last), runnable[0])
        self._last = chosen.id
        return chosen, self.quantum

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.name, "quantum": self.quantum, "last": self._last}

    def restore(self, data: dict[str, Any]) -> None:
        self.quantum = data["quantum"]
        self._last = data["last"]


class RandomSchedule:
    """A seeded random vCPU and quantum length at every step."""

    name = "random"

    def __init__(self, seed: int, quantum: int = DEFAULT_QUANTUM) -> None:
        self.quantum = quantum
        self._rng = random.Random(f"emu-schedule-{seed}")

    def pick(self, runnable: Sequence[V]) -> tuple[V, int]:
        return self._rng.choice(runnable), self._rng.randint(1, 2 * self.quantum)

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.name, "quantum": self.quantum, "rng": rng_state(self._rng)}

    def restore(self, data: dict[str, Any]) -> None:
        self.quantum = data["quantum"]
        set_rng_state(self._rng, data["rng"])


def rng_state(rng: random.Random) -> list[Any]:
    """A ``random.Random``'s position as plain data (``set_rng_state`` puts it back)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, data: list[Any]) -> None:
    version, internal, gauss = data
    rng.setstate((version, tuple(internal), gauss))


SCHEDULES = ("rr", "random")


def make_scheduler(name: str, seed: int, quantum: int = DEFAULT_QUANTUM) -> Scheduler:
    if name == "rr":
        return RoundRobin(quantum)
    if name == "random":
        return RandomSchedule(seed, quantum)
    raise ValueError(f"unknown schedule {name!r} (known: {', '.join(SCHEDULES)})")
