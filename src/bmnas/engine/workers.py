"""Independent training jobs side by side: a small pool of ``spawn``ed worker processes.

A run trains many small networks that do not depend on one another (the k folds of a selection,
the re-ranking candidates, the baselines). Each one runs on one torch thread (the thread policy,
:func:`bmnas.engine.device.choose_threads`: OpenMP's spin-waiting makes small ops slower with more
threads), so on a machine with ``n`` cores ``n - 1`` of them idle while they train one after the
other. A :class:`Pool` trains them in ``n`` worker processes instead, each on one thread.

A :class:`Job` is a module-level function (pickled by reference) and picklable arguments; it is
called as ``fn(shared, *args)``, where ``shared`` is what every job of the pool reads (the
features): made once per worker by the pool's ``setup`` call, so the data cross to each worker
once, not with every job. A job seeds itself, so its result does not depend on which process ran
it or what ran before. With one worker nothing is spawned: :meth:`Pool.results` calls the jobs in
this process, one by one, in the order they were submitted — the serial path, exactly.

A job that raises ends the pool with a :class:`WorkerError` naming the job; a worker that dies
(killed, out of memory) likewise names the jobs it may have been running. Ctrl-C in the parent
stops the workers (they ignore SIGINT themselves, so one Ctrl-C stops one pool, cleanly).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.errors import BmnasError
from .device import available_cores, busy_cores
from .distributed import current

log = logging.getLogger(__name__)

AUTO_MIN_JOB = 50_000
"""``workers: 0`` runs jobs side by side only when each holds at least this many row-epochs (rows
trained × epochs; AV-MNIST's default network trains about 10,000 a second on one core) …"""
AUTO_MIN_WORK = 500_000
"""… and all of them together at least this many: starting a worker (importing torch, receiving
the data) costs 2–7 s of a core."""


class WorkerError(BmnasError, RuntimeError):
    """A job failed in a worker process; the message names the job and its error."""


@dataclass(frozen=True)
class Job:
    """One independent computation: ``fn(shared, *args)``; ``name`` says what it trains (in errors)."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()


@dataclass
class Handle:
    """A submitted job: its result once :meth:`Pool.results` has yielded it."""

    job: Job
    future: Future | None = None
    done: bool = False
    result: Any = None
    seconds: float = 0.0


def resolve_workers(
    setting: int, jobs: int, work: float, cores: int | None = None, busy: float | None = None
) -> int:
    """How many worker processes to use for ``jobs`` jobs of ``work`` row-epochs in all.

    ``setting >= 1``: that many (at most one per job); ``1`` is the serial path. ``0`` (auto): one
    inside a process group (``torchrun`` ranks share the cores already) or when the jobs are small
    (:data:`AUTO_MIN_JOB`, :data:`AUTO_MIN_WORK`), else the cores no other process is using, at
    least one, at most one per job (measured as :func:`~bmnas.engine.device.choose_threads` does).
    """
    if jobs <= 1 or current().active or _IN_WORKER:  # no pool inside a worker
        return 1
    if setting >= 1:
        return min(setting, jobs)
    if work < AUTO_MIN_WORK or work / jobs < AUTO_MIN_JOB:
        return 1
    cores = available_cores() if cores is None else cores
    busy = busy_cores() if busy is None else busy
    return max(1, min(jobs, cores, int(cores - busy + 0.5)))


_SHARED: Any = None  # in a worker process: what the pool's setup returned
_IN_WORKER = False


def _init_worker(setup: Callable[..., Any], setup_args: tuple) -> None:
    global _SHARED, _IN_WORKER
    _IN_WORKER = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool on Ctrl-C
    torch.set_num_threads(1)
    _SHARED = setup(*setup_args)


def _run_job(job: Job) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = job.fn(_SHARED, *job.args)
    return result, time.perf_counter() - t0


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]


@dataclass
class Pool:
    """Jobs run by ``workers`` processes (1: in this process, in submission order).

    Args:
        workers: the number of worker processes (:func:`resolve_workers`).
        setup: a module-level function called once in each worker with ``setup_args``; what it
            returns is every job's ``shared`` argument. ``shared`` is that value in this process
            (the serial path, and the parent's own copy).
    """

    workers: int
    setup: Callable[..., Any]
    setup_args: tuple
    shared: Any
    _executor: ProcessPoolExecutor | None = field(default=None, init=False, repr=False)
    _pending: list[Handle] = field(default_factory=list, init=False, repr=False)

    def start(self) -> None:
        """Start the worker processes (each on one torch thread, ``OMP_NUM_THREADS=1``)."""
        if self.workers <= 1 or self._executor is not None:
            return
        t0 = time.perf_counter()
        size = len(pickle.dumps((self.setup, self.setup_args), protocol=pickle.HIGHEST_PROTOCOL))
        saved = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"  # read by each child's OpenMP when torch loads there
        try:
            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.setup, self.setup_args),
            )
            # start every worker now, while the environment says one thread
            for f in [self._executor.submit(time.sleep, 0) for _ in range(self.workers)]:
                f.result()
        except (BrokenProcessPool, OSError, pickle.PicklingError) as err:
            log.warning(
                "worker processes did not start (%s: %s); training one network at a time. A script "
                'that calls bmnas must keep its top level under `if __name__ == "__main__":` '
                "(worker processes import it); or set workers=1",
                type(err).__name__,
                _first_line(err),
            )
            self.close(cancel=True)
            self.workers = 1
            return
        finally:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = saved
        log.info(
            "%d worker processes started in %.1f s (%.1f MiB of data sent to each)",
            self.workers,
            time.perf_counter() - t0,
            size / 2**20,
        )

    def submit(self, job: Job) -> Handle:
        """Queue ``job``; with workers it starts as soon as a worker is free."""
        handle = Handle(job)
        if self._executor is not None:
            handle.future = self._executor.submit(_run_job, job)
        self._pending.append(handle)
        return handle

    def results(self, handles: Sequence[Handle]) -> Iterator[Handle]:
        """Yield each of ``handles`` once its job has finished (with workers: as they finish; in
        this process: one by one, in submission order). A failed job raises :class:`WorkerError`."""
        todo = [h for h in handles if not h.done]
        for h in handles:
            if h.done:
                yield h
        if self._executor is None:
            for h in todo:
                t0 = time.perf_counter()
                h.result, h.done = h.job.fn(self.shared, *h.job.args), True
                h.seconds = time.perf_counter() - t0
                self._pending.remove(h)
                yield h
            return
        by_future = {h.future: h for h in todo}
        while by_future:
            finished, _ = wait(by_future, return_when=FIRST_COMPLETED)
            for f in [f for f in by_future if f in finished]:
                h = by_future.pop(f)
                self._collect(h, by_future.values())
                yield h

    def _collect(self, h: Handle, running: Any) -> None:
        try:
            h.result, h.seconds = h.future.result()
        except BrokenProcessPool:
            names = ", ".join(x.job.name for x in [h, *running] if x.future.running() or x is h)
            raise WorkerError(
                f"a worker process died (killed, or out of memory?) while running: {names}; "
                f"rerun to resume, or set workers=1 to train one network at a time"
            ) from None
        except BmnasError as err:
            raise WorkerError(f"{h.job.name}: {_first_line(err)}") from err
        except Exception as err:  # noqa: BLE001 - a job's error of any kind: named, in one line
            raise WorkerError(
                f"{h.job.name} failed in a worker process: {type(err).__name__}: {_first_line(err)} "
                f"(set workers=1 to see the traceback with --debug)"
            ) from err
        h.done = True
        self._pending.remove(h)

    def close(self, cancel: bool = False) -> None:
        """Stop the workers: after their jobs, or (``cancel``) at once, terminating them."""
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        if cancel:
            processes = list((executor._processes or {}).values())  # noqa: SLF001 - no public way
            executor.shutdown(wait=False, cancel_futures=True)
            for p in processes:
                p.terminate()
            for p in processes:
                p.join(5)
        else:
            executor.shutdown(wait=True)


_ACTIVE: list[Pool] = []


def active(shared: Any) -> Pool | None:
    """The pool a caller up the stack opened for ``shared`` (the same object), or None."""
    return next((p for p in reversed(_ACTIVE) if p.shared is shared), None)


@contextlib.contextmanager
def pool(workers: int, setup: Callable[..., Any], setup_args: tuple, shared: Any) -> Iterator[Pool]:
    """A started :class:`Pool`, stopped when the block ends (at once on an error or Ctrl-C).

    Inside the block :func:`active` returns it, so functions called there submit their jobs to
    it instead of opening a pool of their own.
    """
    p = Pool(workers, setup, setup_args, shared)
    _ACTIVE.append(p)
    ok = False
    try:
        p.start()
        yield p
        ok = True
    finally:
        _ACTIVE.remove(p)
        p.close(cancel=not ok)
