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
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
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

    The rule of ``auto`` is "a GPU when there is one"; it does not yet weigh a job's size. Whether
    the default job is faster on the GPU than with ``--device cpu`` on the same machine is what
    ``benchmarks/gpu_check.sh`` measures (its ``avmnist cuda`` vs ``avmnist cpu`` rows); no threshold
    is set here until that has been measured.
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
