"""What every training loop shares: batching, loss, schedule, optimiser, one epoch, evaluation, epochs.

The search, the evaluation stage, the baselines and backbone pre-training differ in what they
optimise, not in how an epoch runs. :func:`train_epoch` is the one batch loop (gather, modality
dropout, forward, loss, :func:`optimizer_step`, schedule, an ``after_step`` hook where the bilevel
search takes its architecture step); :func:`forward_batches` the one eval-mode batched forward
(:func:`evaluate`, pre-training's accuracy, ``LoadedModel.logits``); :func:`build_optimizer` the
one optimiser; :class:`Context` the device, ranks and autocast a loop runs with, resolved once.
:func:`run_epochs` times, records and checkpoints the epochs (continuing from a resumed state,
:class:`~bmnas.engine.checkpoint.Checkpoint`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.data import FeatureSplit, TaskInfo
from .augment import drop_modalities
from .device import autocast, cuda_settings, resolve_device
from .distributed import (
    SINGLE,
    Ranks,
    average_gradients,
    barrier,
    broadcast_buffers,
    current,
    gather_rows,
    local_device,
    shard,
    sum_over_ranks,
)
from .metrics import compute_metrics
from .replay import forward_function

if TYPE_CHECKING:
    from ..core.config import Config, SearchConfig
    from .checkpoint import Checkpoint


@dataclass(frozen=True)
class Context:
    """Where a loop computes: its device, its processes (``ranks``), the precision of its forward passes
    and how its training steps run (``graphs``).

    Resolved once per loop (:meth:`of`); :meth:`amp` is the autocast every forward pass runs under.
    ``graphs``: ``off`` (today's eager step), ``capture`` (each step replayed as a CUDA graph,
    :mod:`bmnas.engine.graphs`) or ``buffers`` (the same static-buffer step, run eagerly: what
    ``cuda_graphs: on`` gives on a CPU, so that the path is tested without a GPU).
    """

    device: torch.device = torch.device("cpu")
    ranks: Ranks = SINGLE
    precision: str = "fp32"
    graphs: str = "off"

    @classmethod
    def of(cls, cfg: Config) -> Context:
        """``cfg.device`` (this rank's GPU under ``torchrun``), the process group, ``cfg.precision``,
        ``cfg.cuda_graphs`` resolved (:func:`graphs_mode`); applies
        :func:`~bmnas.engine.device.cuda_settings`."""
        device = local_device(resolve_device(cfg.device))
        cuda_settings(device, cfg.deterministic)
        ranks = current()
        return cls(device, ranks, cfg.precision, graphs_mode(cfg.cuda_graphs, device, ranks))

    def amp(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on this device for ``precision: bf16``, else a no-op context."""
        return autocast(self.device, self.precision)


def graphs_mode(setting: str, device: torch.device, ranks: Ranks = SINGLE) -> str:
    """``cuda_graphs`` (``auto | on | off``) on ``device`` -> :attr:`Context.graphs`.

    ``auto``: ``capture`` on a CUDA device in one process, else ``off``. ``on``: ``capture`` on CUDA,
    ``buffers`` (the static-buffer step run eagerly) on the CPU. Over several processes the steps
    stay eager (the gradient all-reduce is not captured).
    """
    if setting == "off" or ranks.active:
        return "off"
    if device.type == "cuda":
        return "capture"
    return "buffers" if setting == "on" else "off"


CPU = Context()  # one process on the CPU in fp32: pre-training, inference, tests


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator | None, min_rows: int = 2
) -> list[np.ndarray]:
    """Index batches over ``n`` samples: shuffled when a generator is given, else in order.

    A last batch of fewer than ``min_rows`` rows joins the one before it (BatchNorm needs two rows
    to train; ``2 * world`` when the batch is sharded over ranks).
    """
    order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    return split_batches(order, batch_size, min_rows)


def split_batches(order: np.ndarray, batch_size: int, min_rows: int = 2) -> list[np.ndarray]:
    """``order`` cut into batches of ``batch_size``; a last one under ``min_rows`` joins the one before."""
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
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


def cosine_restarts_rate(
    step: torch.Tensor, lr: float, period: int, restart_mult: int, lr_min: float
) -> torch.Tensor:
    """The learning rate :func:`cosine_restarts` gives after ``step`` scheduler steps, as a tensor on
    ``step``'s device (no host round trip: a step of a captured graph can read it).

    SGDR with a first period ``T_0 = period`` and periods growing by ``m = restart_mult``: the
    restart ``n`` holding ``step`` is the largest with ``T_0 (m^n − 1)/(m − 1) ≤ step`` (``n =
    ⌊step / T_0⌋`` for m = 1), ``T_i = T_0 m^n``, ``t = step − T_0 (m^n − 1)/(m − 1)`` and
    ``lr(step) = lr_min + (lr − lr_min) (1 + cos(π t / T_i)) / 2``. Computed in float64.
    """
    s = step.to(torch.float64)
    T0 = float(max(1, period))
    if restart_mult == 1:
        n = torch.floor(s / T0)
        start, T_i = n * T0, torch.full_like(s, T0)
    else:
        m = float(restart_mult)
        n = torch.floor(torch.log(s / T0 * (m - 1) + 1) / math.log(m))

        def first(k: torch.Tensor) -> torch.Tensor:  # the first step of restart k
            return T0 * (m**k - 1) / (m - 1)

        n = n - (first(n) > s).to(n.dtype) + (first(n + 1) <= s).to(n.dtype)  # float log at a boundary
        start, T_i = first(n), T0 * m**n
    return lr_min + (lr - lr_min) * (1 + torch.cos(math.pi * (s - start) / T_i)) / 2


class _Rates(Protocol):
    lr: float
    weight_decay: float


@dataclass(frozen=True)
class AdamSettings:
    """Adam's settings: ``lr``, ``weight_decay`` (L2, added to the gradient), ``betas``; ``fused``: one
    kernel per step instead of ~10 per parameter tensor (7× faster on CPU in the search, see
    benchmarks/README.md)."""

    lr: float
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    fused: bool | None = None

    @classmethod
    def of(cls, section: _Rates, fused: bool | None = None) -> AdamSettings:
        """The weights' settings of a config section (``search``, ``train``) or a pre-training recipe."""
        return cls(section.lr, section.weight_decay, fused=fused)

    @classmethod
    def arch(cls, search: SearchConfig) -> AdamSettings:
        """The architecture parameters': ``search.arch_lr``, ``arch_weight_decay``, ``arch_betas``, fused."""
        return cls(search.arch_lr, search.arch_weight_decay, search.arch_betas, fused=True)


def build_optimizer(params: Iterable[nn.Parameter], settings: AdamSettings) -> torch.optim.Optimizer:
    """The optimiser of every bmnas loop: Adam with ``settings``."""
    return torch.optim.Adam(
        params, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay, fused=settings.fused
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
    features: Mapping[str, torch.Tensor] | torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    freeze: Sequence[nn.Parameter] = (),
    ranks: Ranks = SINGLE,
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """One optimiser step on one batch with ``freeze`` excluded from autograd; returns the loss, detached.

    The search's weight step freezes the architecture parameters, its architecture step the weights
    (docs/DESIGN.md §7): a frozen parameter gets no gradient and autograd skips whatever only it needs.
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
def forward_batches(
    model: nn.Module,
    n: int,
    gather: Callable[[np.ndarray], tuple[Any, Any]],
    batch_size: int,
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    min_rows: int = 2,
    graphs: str = "off",
) -> Iterator[tuple[Any, torch.Tensor]]:
    """Eval-mode forward passes over rows ``0 … n−1`` in order: yields each batch's ``(labels, fp32 logits)``.

    ``gather(rows)`` returns a batch's ``(inputs, labels)`` (labels may be None); batches are
    :func:`batch_indices` in order (``min_rows=1``: plain consecutive slices). The model's
    train/eval mode is restored afterwards. The one evaluation loop: :func:`evaluate`, backbone
    pre-training's accuracy and ``LoadedModel.logits`` read their logits from it. ``graphs``
    (:attr:`Context.graphs`): ``off`` calls the model on each batch; ``capture`` / ``buffers`` run
    it through the static buffers of a :class:`~bmnas.engine.replay.ForwardFunction` (replayed as a
    CUDA graph under ``capture``; the short last batch padded), kept with the model across calls.
    """
    was_training = model.training
    model.eval()
    try:
        forward = None
        for b in batch_indices(n, batch_size, None, min_rows):
            inputs, labels = gather(b)
            if graphs == "off":
                with amp():
                    out = model(inputs)
                yield labels, out.float()
                continue
            if forward is None:  # looked up once per call: the size is the first batch's
                forward = forward_function(model, inputs, graphs, amp)
            yield labels, forward(model, inputs)
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module,
    split: FeatureSplit,
    task: TaskInfo,
    batch_size: int = 1024,
    threshold: float = 0.5,
    ctx: Context = CPU,
) -> dict:
    """Loss and metrics of ``model`` in eval mode over a whole split.

    ``loss = Σ_batches loss(batch) · |batch| / N``. Over several ``ctx.ranks`` each scores its shard
    ``rows[rank::world]`` and the logits are gathered, so every rank returns the metrics of the whole split.
    The forwards run as ``ctx.graphs`` says (:func:`forward_batches`); the losses are summed and the
    logits kept on the device (float64 sums, the same as Python floats), read back once at the end.
    """
    ranks = ctx.ranks
    rows = shard(np.arange(len(split)), ranks)
    logits: list[torch.Tensor] = []
    total: float | torch.Tensor = 0.0
    batches = forward_batches(
        model, len(rows), lambda b: split.batch(rows[b]), batch_size, ctx.amp, graphs=ctx.graphs
    )
    for y, out in batches:
        total = total + loss_fn(task, out, y).double() * len(out)
        logits.append(out)
    part = torch.cat(logits).cpu().numpy() if logits else np.empty((0, task.num_outputs), np.float32)
    scores = gather_rows(part, len(split), ranks)
    total = sum_over_ranks(float(total), ranks)
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


@dataclass(frozen=True)
class ModalityDropout:
    """Modality dropout of a loop's batches: probability ``p``, masks drawn from ``generator``,
    over ``features`` only when given (the network's inputs: a modality it ignores must not be the
    one a sample keeps)."""

    p: float
    generator: torch.Generator
    features: tuple[str, ...] | None = None

    def __call__(
        self, feats: dict[str, torch.Tensor], n_global: int, ranks: Ranks
    ) -> dict[str, torch.Tensor]:
        if self.features is not None:
            feats = {n: feats[n] for n in self.features}
        return drop_shard(feats, n_global, self.p, self.generator, ranks)


@dataclass(frozen=True)
class EpochLoss:
    """An epoch's mean losses: ``rows`` = Σ loss(batch) · |batch| / Σ |batch| of the optimiser steps;
    ``steps`` = the mean over iterations of what ``after_step`` returned (0 when it returned nothing)."""

    rows: float
    steps: float = 0.0


def train_epoch(
    model: nn.Module,
    batches: Iterable[np.ndarray],
    gather: Callable[[np.ndarray], tuple[Any, torch.Tensor]],
    task: TaskInfo,
    optimizer: torch.optim.Optimizer,
    ctx: Context = CPU,
    *,
    freeze: Sequence[nn.Parameter] = (),
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    dropout: ModalityDropout | None = None,
    after_step: Callable[[int, torch.Tensor], float | torch.Tensor | None] | None = None,
    step: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
) -> EpochLoss:
    """One epoch of ``model`` in train mode over ``batches`` (global row indices, in order).

    Per batch: this rank's shard of the rows, ``gather(rows) -> (inputs, labels)`` on the device,
    ``dropout`` where given, :func:`optimizer_step` with ``freeze`` excluded, ``schedule.step()``,
    then ``after_step(i, loss)`` (the bilevel search's architecture step; a float it returns is
    averaged into :attr:`EpochLoss.steps`). ``step(inputs, labels) -> loss`` replaces
    :func:`optimizer_step` where given (a :class:`bmnas.engine.graphs.StepFunction`). The losses are
    summed on the device in float64 (no host round trip per batch; the same sums as Python floats).
    Afterwards they are summed over ranks and rank 0's buffers (BatchNorm statistics) broadcast.
    """
    ranks = ctx.ranks
    model.train()
    total: float | torch.Tensor = 0.0
    extra: float | torch.Tensor = 0.0
    rows, steps = 0, 0
    for i, idx in enumerate(batches):
        mine = shard(idx, ranks)
        inputs, labels = gather(mine)
        if dropout is not None:
            inputs = dropout(inputs, len(idx), ranks)
        if step is None:
            loss = optimizer_step(model, task, inputs, labels, optimizer, freeze, ranks, ctx.amp)
        else:
            loss = step(inputs, labels)
        if schedule is not None:
            schedule.step()
        if after_step is not None and (value := after_step(i, loss)) is not None:
            extra = extra + (value.double() if isinstance(value, torch.Tensor) else value)
        total = total + loss.double() * len(mine)
        rows, steps = rows + len(idx), steps + 1
    total, extra = float(total), float(extra)
    if ranks.active:
        total, extra = sum_over_ranks(total, ranks), sum_over_ranks(extra, ranks) / ranks.world
    broadcast_buffers(model, ranks)
    return EpochLoss(total / max(1, rows), extra / max(1, steps))


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
