"""Data parallelism over processes (``torchrun``): shards, gradient all-reduce, agreement checks.

Every rank holds the same network and draws the same global batches (same seed, same shuffle
generator); rank ``r`` of ``W`` computes on rows ``batch[r::W]``. After each backward the
gradients of the parameters being stepped are averaged over the ranks in one flat all-reduce —
what DistributedDataParallel does for a static parameter set, done by hand because the bilevel
search alternates *which* parameters are trained (weights, then α/β/γ) and DDP's reducer expects
one fixed set. With equal shards the averaged gradient is the gradient of the mean loss over the
global batch, so every rank applies the same update and the parameters stay identical; the
BatchNorm statistics of a training step are those of each rank's shard (ghost batches of ``B/W``
rows), and the running statistics are taken from rank 0 before each evaluation.

Without an initialised process group everything here is the identity (one process).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..core.errors import BmnasError


class DistributedError(BmnasError, RuntimeError):
    """The ranks of a distributed run disagree, or the run cannot be set up."""


@dataclass(frozen=True)
class Ranks:
    """This process's rank and the world size (``Ranks()``: a single process)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Ranks()


def current() -> Ranks:
    """The ranks of the initialised process group, or a single process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return SINGLE


def launched() -> bool:
    """Whether ``torchrun`` (or a launcher setting the same variables) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> Ranks:
    """Join the process group ``torchrun`` describes (gloo on CPU, NCCL on GPUs); idempotent."""
    if not launched() or current().active:
        return current()
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return current()


def local_device(device: torch.device) -> torch.device:
    """On a multi-GPU node, rank ``LOCAL_RANK`` uses GPU ``LOCAL_RANK`` (``cuda`` without an index)."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard(rows: np.ndarray, r: Ranks) -> np.ndarray:
    """This rank's rows of a global batch (``rows[rank::world]``; all rows in one process)."""
    return rows[r.rank :: r.world] if r.active else rows


def min_batch(r: Ranks) -> int:
    """Smallest global batch: every rank's shard needs two rows for training-mode BatchNorm."""
    return 2 * r.world


def average_gradients(params: Iterable[nn.Parameter], r: Ranks) -> None:
    """Replace each gradient by its mean over the ranks (one flat all-reduce)."""
    if not r.active:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= r.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_state(module: nn.Module, r: Ranks) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not r.active:
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            dist.broadcast(t, 0)


def broadcast_buffers(module: nn.Module, r: Ranks) -> None:
    """Copy rank 0's buffers (BatchNorm's running statistics) to every rank."""
    if not r.active:
        return
    for t in module.buffers():
        dist.broadcast(t, 0)


def sum_over_ranks(value: float, r: Ranks) -> float:
    if not r.active:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def gather_rows(part: np.ndarray, n: int, r: Ranks) -> np.ndarray:
    """Reassemble rows ``[rank::world]`` held by every rank into the ``n`` rows in order."""
    if not r.active:
        return part
    parts: list = [None] * r.world
    dist.all_gather_object(parts, part)
    out = np.empty((n, *part.shape[1:]), dtype=part.dtype)
    for rank, p in enumerate(parts):
        out[rank :: r.world] = p
    return out


def check_same(value: object, what: str, r: Ranks) -> None:
    """Raise :class:`DistributedError` unless every rank holds the same ``value``."""
    if not r.active:
        return
    values: list = [None] * r.world
    dist.all_gather_object(values, value)
    differ = [i for i, v in enumerate(values) if v != values[0]]
    if differ:
        raise DistributedError(f"ranks {differ} hold another {what} than rank 0; the run is not in sync")


def barrier(r: Ranks) -> None:
    if r.active:
        dist.barrier()
