"""What every training loop shares: batching, loss, schedule, optimiser step, evaluation, epochs.

The search, the evaluation stage, the baselines and the black-box search differ in what they
optimise, not in how an epoch runs: each gives :func:`run_epochs` a function that trains (and
scores) one epoch, and :func:`run_epochs` times, records and checkpoints the epochs (continuing
from a resumed state, :class:`~bmnas.engine.checkpoint.Checkpoint`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.data import FeatureSplit, TaskInfo
from .augment import drop_modalities
from .distributed import SINGLE, Ranks, average_gradients, barrier, gather_rows, shard, sum_over_ranks
from .metrics import compute_metrics

if TYPE_CHECKING:
    from .checkpoint import Checkpoint


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator | None, min_rows: int = 2
) -> list[np.ndarray]:
    """Index batches over ``n`` samples: shuffled when a generator is given, else in order.

    A last batch of fewer than ``min_rows`` rows joins the one before it (BatchNorm needs two rows
    to train; ``2 * world`` when the batch is sharded over ranks).
    """
    order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < min_rows:  # BatchNorm cannot train on a batch of one row
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


def loss_fn(task: TaskInfo, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (multiclass) or BCE with logits (multilabel)."""
    if task.type == "multiclass":
        return F.cross_entropy(logits, labels)
    return F.binary_cross_entropy_with_logits(logits, labels)


def cosine_restarts(
    optimizer: torch.optim.Optimizer,
    batches_per_epoch: int,
    restart_epochs: int,
    restart_mult: int,
    lr_min: float,
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-batch cosine annealing with warm restarts, the period doubling (SGDR)."""
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=max(1, batches_per_epoch * restart_epochs), T_mult=restart_mult, eta_min=lr_min
    )


@contextlib.contextmanager
def frozen(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Temporarily exclude ``params`` from autograd, so a backward computes no gradient for them."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


def optimizer_step(
    model: nn.Module,
    task: TaskInfo,
    features: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    freeze: Sequence[nn.Parameter] = (),
    ranks: Ranks = SINGLE,
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """One optimiser step on one batch with ``freeze`` excluded from autograd; returns the loss, detached.

    The search's weight step freezes the architecture parameters, its architecture step the weights
    (SPEC §7): a frozen parameter gets no gradient and autograd skips whatever only it needs.
    Over several ``ranks`` the gradients are averaged before the step (:mod:`bmnas.engine.distributed`);
    ``amp`` wraps the forward pass (bf16 autocast).
    """
    with frozen(freeze):
        with amp():
            loss = loss_fn(task, model(features), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(stepped(optimizer), ranks)
        optimizer.step()
    return loss.detach()


def stepped(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """The parameters ``optimizer`` updates."""
    return [p for group in optimizer.param_groups for p in group["params"]]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: FeatureSplit,
    task: TaskInfo,
    batch_size: int = 1024,
    threshold: float = 0.5,
    ranks: Ranks = SINGLE,
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict:
    """Loss and metrics of ``model`` in eval mode over a whole split.

    Over several ``ranks`` each scores its shard ``rows[rank::world]`` and the logits are gathered,
    so every rank returns the metrics of the whole split.
    """
    was_training = model.training
    model.eval()
    rows = shard(np.arange(len(split)), ranks)
    logits, total = [], 0.0
    for b in batch_indices(len(rows), batch_size, None):
        feats, y = split.batch(rows[b])
        with amp():
            out = model(feats)
        total += float(loss_fn(task, out.float(), y)) * len(b)
        logits.append(out.float().cpu().numpy())
    model.train(was_training)
    part = np.concatenate(logits) if logits else np.empty((0, task.num_outputs), np.float32)
    scores = gather_rows(part, len(split), ranks)
    total = sum_over_ranks(total, ranks)
    metrics = compute_metrics(task, scores, split.labels, threshold)
    return {"loss": total / max(1, len(split)), **metrics}


def drop_shard(
    feats: dict[str, torch.Tensor], n_global: int, p: float, generator: torch.Generator, ranks: Ranks
) -> dict[str, torch.Tensor]:
    """Modality dropout of this rank's shard with the masks one process would draw for the global batch.

    Every rank draws the masks of all ``n_global`` rows from the shared generator (so the
    generators stay in step) and applies its own rows of them.
    """
    if not ranks.active:
        return drop_modalities(feats, p, generator)
    ones = {n: torch.ones(n_global, 1) for n in feats}
    masks = drop_modalities(ones, p, generator)
    rows = shard(np.arange(n_global), ranks)
    out = {}
    for n, f in feats.items():
        keep = masks[n][rows].to(device=f.device, dtype=f.dtype)
        out[n] = f * keep.view(len(rows), *([1] * (f.dim() - 1)))
    return out


def new_state(**fields) -> dict:
    """A loop's state before its first epoch: what :func:`run_epochs` records into and resumes from.

    ``fields`` are the loop's own (the search's best so far, the val curve of a fit).
    """
    return {"epoch": 0, "history": [], "seconds": 0.0, **fields}


def run_epochs(
    state: dict,
    epochs: int,
    one_epoch: Callable[[int, dict], dict],
    checkpoint: Checkpoint,
    stop_after: int | None = None,
    report: Callable[[dict], object] | None = None,
    ranks: Ranks = SINGLE,
) -> dict:
    """Run epochs ``state["epoch"] + 1 … epochs`` of ``one_epoch``, checkpointing each; return the state.

    ``one_epoch(epoch, state)`` trains (and scores) one epoch and returns its history row; it may
    update the loop's own fields of ``state``. The row gets the epoch's wall ``seconds``, is
    appended to ``state["history"]`` and passed to ``report``; then ``checkpoint`` saves the state
    and every rank waits for it, so that a rank killed after this epoch resumes from the same
    checkpoint as the others. ``stop_after`` ends the call after that many epochs in total (as a
    kill would; used to test resumption).
    """
    last = epochs if stop_after is None else min(epochs, stop_after)
    for epoch in range(state["epoch"] + 1, last + 1):
        t0 = time.perf_counter()
        row = one_epoch(epoch, state)
        seconds = time.perf_counter() - t0
        state["seconds"] += seconds
        state["history"].append({**row, "seconds": seconds})
        state["epoch"] = epoch
        if report is not None:
            report(state["history"][-1])
        checkpoint.save(state)
        barrier(ranks)
    return state
