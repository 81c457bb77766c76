"""Campaigns: many independent runs (explore seeds, fuzz chunks) on one core, many, or a cluster.

A campaign is a list of picklable work items and a top-level function that runs one;
``run_campaign`` maps it in-process (``jobs=1``), over a ``ProcessPoolExecutor`` of
``jobs`` spawned processes, or on a Dask distributed scheduler (``dask=ADDRESS``, the
``hvc-emu[cluster]`` extra, imported only then). Results always come back in item order,
so what a command prints does not depend on how the work was spread. ``warm`` keeps one
expensive object (a booted VM) per process across the items it runs, so a campaign pays
for a boot once per worker rather than once per item. ``Progress`` is the one-line bar
``emu explore`` and ``emu fuzz`` draw on stderr.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from emu.arm.hostproc import die_with_parent
from emu.errors import EmuError

if TYPE_CHECKING:
    from emu.kvm.vm import Vm
    from emu.vmm.machine import Machine

T = TypeVar("T")
R = TypeVar("R")

# How long to wait for a Dask scheduler to answer before giving up (EMU_DASK_TIMEOUT overrides).
DASK_CONNECT_TIMEOUT_S = 10.0

# This process's warm object: (key, object) of the last ``warm`` call.
_warm: tuple[str, Any] | None = None


def warm(key: str, build: Callable[[], T]) -> T:
    """The object ``build()`` returned for ``key`` in this process, built on first use.

    One object is kept: a new key closes the previous one (if it has ``close``). Work
    items of one campaign share a key (``campaign_key``), so every item a worker process
    runs after its first reuses what the first one built.
    """
    global _warm
    if _warm is not None and _warm[0] == key:
        return _warm[1]
    drop_warm()
    obj = build()
    _warm = (key, obj)
    return obj


class Booted:
    """A VM set up once (and the machine built on it, if any) with its snapshot from before
    the first run: ``fresh`` puts it back there for the next item, instead of building a
    new one. Kept per process with ``warm``."""

    def __init__(self, vm: Vm, machine: Machine | None = None) -> None:
        self.vm = vm
        self.machine = machine
        self.snapshot = vm.snapshot()

    @classmethod
    def of(cls, machine: Machine) -> Booted:
        """A machine's VM, with the machine."""
        return cls(machine.vm, machine)

    def fresh(self, seed: int | None = None, schedule: str | None = None) -> Vm:
        """The VM as it was booted; with ``seed``, as if booted with that seed
        (``Vm.reseed``: entropy and schedule drawn from it)."""
        self.vm.restore(self.snapshot)
        if seed is not None:
            self.vm.reseed(seed, schedule)
        return self.vm

    def close(self) -> None:
        self.vm.close()


def drop_warm() -> None:
    """Close and forget this process's warm object (the in-process campaign is over)."""
    global _warm
    if _warm is not None:
        close = getattr(_warm[1], "close", None)
        _warm = None
        if close is not None:
            close()


def campaign_key() -> str:
    """A key no earlier campaign in any process used, for ``warm``."""
    return os.urandom(8).hex()


class Progress:
    """A one-line progress bar on a stream, redrawn in place."""

    WIDTH = 30

    def __init__(self, total: int, stream: TextIO, label: str = "exploring") -> None:
        self.total = max(1, total)
        self.stream = stream
        self.label = label
        self.count = 0
        self._drawn = -1

    def step(self, n: int = 1) -> None:
        self.count = min(self.total, self.count + n)
        filled = self.WIDTH * self.count // self.total
        if filled != self._drawn:
            self._drawn = filled
            bar = "#" * filled + "." * (self.WIDTH - filled)
            self.stream.write(f"\r{self.label} [{bar}] {self.count}/{self.total}")
            self.stream.flush()

    def done(self) -> None:
        """End the bar's line (if it was drawn at all)."""
        if self._drawn >= 0:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_exc: object) -> None:
        # However the campaign ended (Ctrl-C too), what is printed next starts a line.
        self.done()


def run_campaign(
    work: Callable[[T], R],
    items: Sequence[T],
    *,
    jobs: int = 1,
    dask: str | None = None,
    on_result: Callable[[int, R], None] | None = None,
) -> list[R]:
    """``[work(item) for item in items]``, spread over ``jobs`` processes or a Dask cluster.

    ``on_result(index, result)`` is called as each item finishes (in completion order);
    the returned list is in item order whatever the order of completion.
    """
    if dask is not None:
        return _on_dask(work, items, dask, on_result)
    if jobs <= 1 or len(items) <= 1:
        results = []
        try:
            for i, item in enumerate(items):
                result = work(item)
                if on_result is not None:
                    on_result(i, result)
                results.append(result)
        finally:
            drop_warm()
        return results
    return _on_pool(work, items, jobs, on_result)


def _start_method() -> str:
    """How pool workers start: ``fork`` where it is safe, else ``spawn``.

    A forked worker starts in milliseconds with emu already imported; a spawned one
    imports it afresh (a few hundred ms, which a short campaign notices). Forking is only
    safe from a process with one thread (a thread holding a lock at the fork would leave
    it held forever in the child), and only on Linux (macOS frameworks refuse a fork).
    """
    if sys.platform == "linux" and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _on_pool(
    work: Callable[[T], R], items: Sequence[T], jobs: int, on_result: Callable[[int, R], None] | None
) -> list[R]:
    out: dict[int, R] = {}
    context = multiprocessing.get_context(_start_method())
    workers = min(jobs, len(items))
    # Futures report here as they finish. (concurrent.futures.wait() takes every pending
    # future's lock in turn: a Ctrl-C among them left some held, and shutdown hung on them.)
    finished: queue.SimpleQueue[Future[R]] = queue.SimpleQueue()
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
    ) as pool:
        index: dict[Future[R], int] = {}
        try:
            for i, item in enumerate(items):
                # The first submits start the workers.
                with _workers_block_ctrl_c() if i < workers else contextlib.nullcontext():
                    future = pool.submit(work, item)
                index[future] = i
                future.add_done_callback(finished.put)
            for _ in items:
                future = finished.get()
                i = index[future]
                out[i] = future.result()
                if on_result is not None:
                    on_result(i, out[i])
        except BaseException:
            # Ctrl-C or a failed item: stop the workers instead of waiting for what they run
            # (a guest may spin until its --timeout) and for the items already queued to them.
            for process in list(pool._processes.values()):
                process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [out[i] for i in range(len(items))]


@contextlib.contextmanager
def _workers_block_ctrl_c() -> Iterator[None]:
    """The workers started meanwhile, and the pool's threads, inherit SIGINT blocked.

    A terminal's Ctrl-C reaches the whole process group: the parent stops the campaign and
    its workers, and a worker still starting or waiting for its next item would print a
    traceback. Here a Ctrl-C waits, and is raised as soon as this ends.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def dask_client(address: str) -> Any:
    """A client of the Dask scheduler at ``address``; one ``EmuError`` line if that fails."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise EmuError("--dask needs dask.distributed: pip install 'hvc-emu[cluster]'") from None
    try:
        timeout = float(os.environ.get("EMU_DASK_TIMEOUT", DASK_CONNECT_TIMEOUT_S))
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as err:
        raise EmuError(f"--dask {address}: cannot reach the scheduler: {err}") from None


def _on_dask(
    work: Callable[[T], R], items: Sequence[T], address: str, on_result: Callable[[int, R], None] | None
) -> list[R]:
    client = dask_client(address)
    from dask.distributed import as_completed

    try:
        futures = client.map(work, list(items), pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        out: dict[int, R] = {}
        for future in as_completed(futures):
            i = index[future.key]
            out[i] = future.result()
            if on_result is not None:
                on_result(i, out[i])
        return [out[i] for i in range(len(items))]
    finally:
        client.close()
