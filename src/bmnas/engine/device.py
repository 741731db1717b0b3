"""Where a run computes: the device, the precision of its forward passes and the CPU threads.

Library code never names a device: :func:`resolve_device` turns ``config.device`` into a
``torch.device`` once, :func:`on_device` places a split's features there, :func:`autocast` wraps
forward passes for ``precision: bf16``. :func:`choose_threads` is the *policy* for intra-op CPU
threads; :func:`thread_policy` applies it around a block (the previous count is restored after) and
:func:`uses_threads` around every public entry that computes (``search``, ``train``, ``run``,
predicting with a loaded network, exporting it), so the command line and the Python API run with the
same threads. :func:`keep_freed_memory` changes malloc for the whole process: only the command line
calls it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import inspect
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from ..core.data import FeatureSplit
from ..core.errors import BmnasError

log = logging.getLogger(__name__)

FIT_SHARE = 0.5  # features go to the accelerator at once when they take at most this share of its free memory
# fused elements per batch from which more threads pay off (the MM-IMDB, NTU presets: yes; default C, L: no)
LARGE_STEP = 1 << 19


class DeviceError(BmnasError, RuntimeError):
    """The configured device does not exist on this machine."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto | cpu | cuda | cuda:N`` -> a device this machine has (auto: the first GPU, else the CPU).

    This is ``auto`` where nothing is measured (feature extraction, serving). A search and the
    evaluation stage measure instead: with ``device: auto`` on a machine with a GPU they time a short
    probe of their own steps on each of :func:`auto_candidates` and run on the faster
    (:func:`faster_device`, :func:`time_steps`, :class:`DeviceChoice`; the probe itself is
    ``bmnas.method.placement.place``).
    Raises :class:`DeviceError` naming what exists when ``cuda``/``cuda:N`` is not available.
    """
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from err
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceError(
            f"device {name!r}: this machine has no usable CUDA GPU (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}); use --device cpu"
        )
    if device.index is not None and device.index >= count:
        raise DeviceError(f"device {name!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    return device


PROBE_WARMUP = 5  # untimed steps first: allocations, cuDNN/cuBLAS plans, the CUDA graph's capture (4th)
PROBE_STEPS = 10  # then this many, timed between two synchronisations


def auto_candidates() -> dict[str, str]:
    """The devices ``device: auto`` weighs, by the name its log line gives each: ``{"cuda": "cuda",
    "cpu": "cpu"}`` on a machine with a CUDA GPU, ``{"cpu": "cpu"}`` without (nothing to probe)."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return {"cuda": "cuda", "cpu": "cpu"}
    return {"cpu": "cpu"}


def faster_device(seconds: Mapping[str, float], side_by_side: Mapping[str, int] | None = None) -> str:
    """The candidate that does the most steps per second: ``argmax_d n_d / t_d``.

    ``seconds[d]``: one step's time on ``d``; ``side_by_side[d]`` (default 1): the steps ``d`` runs at
    once (the CPU's worker processes, :mod:`bmnas.engine.workers`). A tie goes to ``cpu`` (a GPU
    is chosen only when it is faster), else to the first named.
    Raises :class:`DeviceError` when there is no candidate or a time is not a positive number.
    """
    if not seconds:
        raise DeviceError("faster_device: no candidate device was timed")
    n = dict(side_by_side or {})
    bad = {
        d: t for d, t in seconds.items() if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0)
    }
    if bad:
        raise DeviceError(f"faster_device: step times must be positive seconds, got {bad}")
    if any(n.get(d, 1) < 1 for d in seconds):
        raise DeviceError(f"faster_device: steps side by side must be >= 1, got {n}")
    rate = {d: n.get(d, 1) / t for d, t in seconds.items()}
    best = max(rate.values())
    tied = [d for d, r in rate.items() if r == best]
    return "cpu" if "cpu" in tied else tied[0]


def time_steps(
    step: Callable[[], object], device: torch.device, warmup: int = PROBE_WARMUP, steps: int = PROBE_STEPS
) -> float:
    """Seconds per call of ``step`` on ``device``: ``warmup`` calls, then the mean of ``steps`` calls,
    timed from one synchronisation of ``device`` (CUDA) to the next."""
    if steps < 1:
        raise ValueError(f"time_steps: steps must be >= 1, got {steps}")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


@dataclass(frozen=True)
class DeviceChoice:
    """Where one phase of a run computes (``search`` or ``evaluation``) and, when ``device: auto``
    probed, why: each candidate's time per step (``seconds``) and steps side by side (``side_by_side``).

    ``name``: the candidate chosen (a key of :func:`auto_candidates`); ``device``: the ``device``
    value the phase runs with (a config value: ``cpu``, ``cuda``, ...).
    """

    phase: str
    name: str
    device: str
    seconds: Mapping[str, float] = field(default_factory=dict)
    side_by_side: Mapping[str, int] = field(default_factory=dict)

    @property
    def probed(self) -> bool:
        return bool(self.seconds)

    @classmethod
    def measured(
        cls,
        phase: str,
        seconds: Mapping[str, float],
        candidates: Mapping[str, str],
        side_by_side: Mapping[str, int] | None = None,
    ) -> DeviceChoice:
        """The choice :func:`faster_device` makes from ``seconds`` (timed on ``candidates``)."""
        n = {d: k for d, k in (side_by_side or {}).items() if k > 1 and d in seconds}
        name = faster_device(seconds, n)
        return cls(phase, name, candidates[name], dict(seconds), n)

    @classmethod
    def from_dict(cls, phase: str, row: Mapping[str, Any]) -> DeviceChoice:
        """The choice :meth:`to_dict` wrote (``RUN_DIR/devices.json``)."""
        seconds = {d: ms / 1000 for d, ms in row.get("ms_per_step", {}).items()}
        return cls(
            phase, row.get("chosen", row["device"]), row["device"], seconds, row.get("side_by_side", {})
        )

    def line(self, note: str = "") -> str:
        """``device auto: search on cuda (cuda 3.1 ms/step, cpu 41 ms/step)``; the CPU's workers as
        ``cpu 41 ms/step / 4 workers``; ``note`` after a semicolon. Without a probe:
        ``device auto: search on cpu (not probed)``."""
        if not self.probed:
            return f"device auto: {self.phase} on {self.name} (not probed)"
        times = [
            f"{d} {_ms(t)} ms/step" + (f" / {self.side_by_side[d]} workers" if d in self.side_by_side else "")
            for d, t in self.seconds.items()
        ]
        return f"device auto: {self.phase} on {self.name} ({', '.join(times)}{'; ' + note if note else ''})"

    def to_dict(self) -> dict:
        """``metrics.json``'s ``devices[phase]``: the device, and the probe's milliseconds per step."""
        row: dict = {"device": self.device if self.probed else self.name}
        if self.probed:
            row["chosen"] = self.name
            row["ms_per_step"] = {d: round(1000 * t, 4) for d, t in self.seconds.items()}
        if self.side_by_side:
            row["side_by_side"] = dict(self.side_by_side)
        return row


def _ms(seconds: float) -> str:
    """Milliseconds to two significant figures at least: 3.1, 41, 1234."""
    ms = 1000 * seconds
    return f"{ms:.2g}" if ms < 10 else f"{ms:.0f}"


def cuda_settings(device: torch.device, deterministic: bool = False) -> None:
    """Process-wide settings of a run on ``device``: TF32 matmuls, and deterministic kernels if asked.

    On CUDA fp32 matmuls and convolutions use TF32 (``torch.set_float32_matmul_precision("high")``:
    a 10-bit mantissa in the products, fp32 accumulation; Ampere and later). ``deterministic``
    (``config.deterministic``) sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (when unset; cuBLAS reads it
    when its handle is made, i.e. at the first matmul) and
    ``torch.use_deterministic_algorithms(True, warn_only=True)``, and keeps fp32 matmuls in full
    fp32: a resumed run then repeats the straight one exactly on a GPU. On the CPU: nothing.
    """
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.set_float32_matmul_precision("highest")
    else:
        torch.set_float32_matmul_precision("high")


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Forward passes in bfloat16 where safe (``precision: bf16``), else a no-op context."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise DeviceError(f"precision must be fp32 or bf16, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16)


@dataclass(frozen=True)
class DeviceSplit:
    """A split whose :meth:`batch` returns tensors on ``device``; ``labels`` stay a NumPy array.

    ``resident``: every feature was copied to the device once (gathering a batch is then an index
    on the device); otherwise each batch is gathered on the CPU, pinned, and copied asynchronously.
    """

    split: FeatureSplit
    device: torch.device
    tensors: Mapping[str, torch.Tensor] | None = None
    label_tensor: torch.Tensor | None = None

    @property
    def resident(self) -> bool:
        return self.tensors is not None

    @property
    def labels(self) -> np.ndarray:
        return self.split.labels

    @property
    def features(self) -> Mapping[str, np.ndarray]:
        return self.split.features

    def __len__(self) -> int:
        return len(self.split)

    def batch(self, index: np.ndarray | slice) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self.tensors is not None and self.label_tensor is not None:
            idx = torch.as_tensor(index, device=self.device) if not isinstance(index, slice) else index
            return {k: v[idx] for k, v in self.tensors.items()}, self.label_tensor[idx]
        feats, y = self.split.batch(index)
        pin = self.device.type == "cuda"
        move = lambda t: (t.pin_memory() if pin else t).to(self.device, non_blocking=pin)  # noqa: E731
        return {k: move(v) for k, v in feats.items()}, move(y)


def probe_split(split: FeatureSplit, device: torch.device, rows: int) -> FeatureSplit | DeviceSplit:
    """The first ``rows`` rows of ``split``, served on ``device`` the way :func:`on_device` serves the
    whole split (resident on a GPU only if the whole split would be): what a probe's steps read."""
    part = FeatureSplit(
        {k: np.array(v[:rows]) for k, v in split.features.items()}, np.array(split.labels[:rows])
    )
    if device.type == "cpu":
        return part
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    return DeviceSplit(part, device) if split_bytes(split) > FIT_SHARE * free else on_device(part, device)


@contextlib.contextmanager
def kept_settings() -> Iterator[None]:
    """Restore after the block the process-wide settings :func:`cuda_settings` changes (matmul
    precision, deterministic algorithms, cuDNN's benchmark): a probe on a device the run does not
    choose leaves no trace."""
    precision = torch.get_float32_matmul_precision()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark


def split_bytes(split: FeatureSplit) -> int:
    return sum(int(v.nbytes) for v in split.features.values()) + int(split.labels.nbytes)


def on_device(split: FeatureSplit, device: torch.device) -> FeatureSplit | DeviceSplit:
    """``split`` served on ``device``: unchanged on the CPU; on a GPU resident if it fits, else
    gathered per batch and copied from pinned memory."""
    if device.type == "cpu":
        return split
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    if split_bytes(split) > FIT_SHARE * free:
        return DeviceSplit(split, device)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in split.features.items()}
    labels = torch.from_numpy(np.ascontiguousarray(split.labels)).to(device)
    return DeviceSplit(split, device, tensors, labels)


def busy_cores(window: float = 0.25) -> float:
    """Cores other processes keep busy now: ``/proc/stat`` busy time minus this process's, over
    ``window`` seconds (Linux); elsewhere the 1-minute load average (0 where the OS has none).
    """
    try:
        first, own, t0 = _busy_seconds(), _own_seconds(), time.perf_counter()
        time.sleep(window)
        busy, mine, wall = _busy_seconds() - first, _own_seconds() - own, time.perf_counter() - t0
        return max(0.0, (busy - mine) / wall)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return 0.0


def _busy_seconds() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def choose_threads(step_elements: int, cores: int | None = None, busy: float | None = None) -> int:
    """Intra-op threads for a run whose fused tensors hold ``step_elements`` per batch.

    OpenMP threads spin-wait for each other at every op; a small op finishes before the threads
    sync, and when another process occupies a core one thread waits for a descheduled sibling
    (docs/DESIGN.md §11; measured in benchmarks/README.md, threads.py). So: one thread for small steps;
    for large ones, the cores no other process is using (at least one).
    """
    if step_elements < LARGE_STEP:  # decided before measuring the load, which takes a quarter second
        return 1
    cores = available_cores() if cores is None else cores
    busy = busy_cores() if busy is None else busy
    return max(1, min(cores, int(cores - busy + 0.5)))


def step_elements(batch_size: int, num_features: int, C: int, L: int) -> int:
    """Elements of the fused tensors of one batch (a proxy for one step's work)."""
    return batch_size * num_features * C * L


@contextlib.contextmanager
def thread_policy(threads: int = 0, step: int = 0) -> Iterator[int]:
    """Run the block with ``threads`` intra-op torch threads, or with 0 the policy's count
    :func:`choose_threads` for ``step`` fused elements per batch (on this process's share of the
    cores under ``torchrun``); restore the previous count after. Yields the count.

    Blocks nest: the command line runs every command in one with the policy's default (one
    thread), and each computing entry inside it sets the count for its own step.
    """
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # processes of this run on this machine
    n = threads or choose_threads(step, cores=max(1, available_cores() // local))
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
        log.debug("%d torch threads (%s)", n, "threads" if threads else "bmnas' policy")
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def config_threads(arguments: Mapping[str, Any]) -> tuple[int, int]:
    """``(threads, step elements)`` of a call with a ``cfg`` (a :class:`~bmnas.core.config.Config`)
    and ``data`` (a :class:`~bmnas.core.data.FeatureData`): one search batch of every feature."""
    cfg, data = arguments["cfg"], arguments["data"]
    m = cfg.model
    names = getattr(data, "feature_names", None)  # a table (DataFrame) has its features made inside
    return cfg.threads, step_elements(cfg.search.batch_size, len(names) if names else 2, m.C, m.L)


F = TypeVar("F", bound=Callable[..., Any])


def uses_threads(policy: Callable[[Mapping[str, Any]], tuple[int, int]] = config_threads) -> Callable[[F], F]:
    """Decorate a public entry so that it runs inside :func:`thread_policy`; ``policy`` reads
    ``(threads, step elements)`` from the call's arguments by name (default :func:`config_threads`)."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def entry(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with thread_policy(*policy(bound.arguments)):
                return fn(*args, **kwargs)

        return entry  # type: ignore[return-value]

    return decorate


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Have glibc's malloc keep and reuse freed memory rather than hand it back to the OS.

    Every search iteration frees and re-allocates the same megabyte-sized activations. With
    glibc's defaults such blocks come from fresh ``mmap``s or are trimmed off the heap, so each
    iteration page-faults on its memory anew (counted in benchmarks/README.md).
    Process-wide; blocks up to ``mmap_threshold`` come from the heap, which keeps up to
    ``trim_threshold`` bytes free. Returns whether it applied (Linux with glibc only).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)
    )
