"""k copies of one network trained side by side as one model (``train.batched_folds``).

The k folds of a k-fold selection train the same architecture on k different row sets. Instead of
k fits one after the other, :class:`FoldStack` stacks the k networks' parameters and buffers along
a new leading dimension (``torch.func.stack_module_state``) and runs them as one vectorised forward
(``torch.func.vmap`` over ``functional_call``): per batch one forward, one backward and one Adam
step serve every fold, so a loop pays its per-op overhead (and, on a GPU, its kernel launches) once
instead of k times.

Why it is the same training, fold by fold:

- **Loss.** ``L = Σ_i L_i(θ_i)``, with ``L_i`` fold i's mean loss over its own batch; since
  ``∂L/∂θ_i = ∂L_i/∂θ_i``, each fold's gradient is the one its own fit computes.
- **Adam** (L2 weight decay added to the gradient, no clipping) is element-wise, and the k folds
  take the same number of steps: one Adam over the stacked tensors is k Adams. The learning rate
  schedule is a function of the step count alone, the same for every fold (the folds must have the
  same number of batches per epoch; :func:`batch_counts` checks it).
- **Batches.** Each fold draws its batches and modality dropout masks from its own generator, as
  its fit would. Fold train sizes differ by a row or so, so a step's batches may differ in size
  (the last one of an epoch): the folds are then grouped by batch size and each group runs as its
  own vectorised forward, all in one backward. No row is padded: BatchNorm's batch statistics
  would see the padding.
- **BatchNorm** running statistics are stacked buffers, updated per fold.
- **Dropout** (``model.dropout``) draws independent masks per fold (``randomness="different"``):
  statistically the same training as k separate fits, but not the same masks, so with dropout on
  the curves match the one-by-one ones only in distribution. With dropout 0 they are equal to
  float tolerance.
- **Evaluation** (eval mode: every row is independent of the others) pads each fold's split to the
  longest with copies of its last row and drops their logits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..core.data import FeatureSplit, TaskInfo
from .distributed import SINGLE
from .loop import CPU, Context, ModalityDropout, batch_indices, loss_fn
from .metrics import compute_metrics

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


class FoldStack:
    """``k`` networks of one architecture as stacked tensors: ``params[name]`` is ``(k, *shape)``.

    Args:
        models: the k networks (same architecture, each initialised as its own fit would be); they
            are not changed (:meth:`unstack` writes the trained weights back).
    """

    def __init__(self, models: Sequence[nn.Module]):
        if not models:
            raise ValueError("FoldStack needs at least one network")
        names = [tuple(n for n, _ in m.named_parameters()) for m in models]
        if any(n != names[0] for n in names):
            raise ValueError(
                "FoldStack: the networks differ in their parameters; stack copies of one architecture"
            )
        self.k = len(models)
        params, buffers = stack_module_state(list(models))
        self.params: dict[str, torch.Tensor] = params
        self.buffers: dict[str, torch.Tensor] = buffers
        self._base = copy.deepcopy(models[0]).to("meta")  # the architecture; weights come from the stack
        self.training = True

    # ---------------------------------------------------------------------------- as a model
    def train(self, mode: bool = True) -> FoldStack:
        """Train (``True``) or eval mode for every fold (BatchNorm's statistics, dropout)."""
        self.training = mode
        self._base.train(mode)
        return self

    def eval(self) -> FoldStack:
        return self.train(False)

    def parameters(self) -> list[torch.Tensor]:
        """The stacked parameters (leaf tensors), what one optimiser steps for all folds."""
        return list(self.params.values())

    def to(self, device: torch.device) -> FoldStack:
        """Move the stack to ``device`` (before the optimiser is built: the tensors are replaced)."""
        self.params = {
            n: p.detach().to(device).requires_grad_(p.requires_grad) for n, p in self.params.items()
        }
        self.buffers = {n: b.to(device) for n, b in self.buffers.items()}
        return self

    def __call__(
        self, features: Mapping[str, torch.Tensor], folds: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Logits ``(g, B, …)`` of the folds ``folds`` (default: all, ``g = k``) on ``features[n]`` of
        shape ``(g, B, …)``, the g folds' batches of one size B.

        In train mode the folds' BatchNorm running statistics are updated, each from its own batch.
        """
        if folds is None or list(folds) == list(range(self.k)):
            return self._forward(self.params, self.buffers, features)
        rows = torch.as_tensor(list(folds), device=next(iter(self.params.values())).device)
        params = {n: p[rows] for n, p in self.params.items()}  # a differentiable gather
        buffers = {n: b[rows] for n, b in self.buffers.items()}
        out = self._forward(params, buffers, features)
        if self.training:
            with torch.no_grad():
                for n, b in buffers.items():
                    self.buffers[n][rows] = b
        return out

    def _forward(self, params: dict, buffers: dict, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        def one(p: dict, b: dict, x: dict) -> torch.Tensor:
            return functional_call(self._base, (p, b), (x,))

        return vmap(one, randomness="different")(params, buffers, dict(features))

    # ---------------------------------------------------------------------------- to and from networks
    def unstack(self, models: Sequence[nn.Module]) -> None:
        """Write fold i's parameters and buffers into ``models[i]``."""
        with torch.no_grad():
            for i, model in enumerate(models):
                state = {n: t[i] for n, t in {**self.params, **self.buffers}.items()}
                model.load_state_dict(state)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """The stacked tensors, on the CPU (a checkpoint loads anywhere)."""
        return {
            "params": {n: p.detach().cpu() for n, p in self.params.items()},
            "buffers": {n: b.cpu() for n, b in self.buffers.items()},
        }

    def load_state_dict(self, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Restore :meth:`state_dict` in place (the optimiser keeps stepping the same tensors)."""
        for kind, mine in (("params", self.params), ("buffers", self.buffers)):
            saved = state[kind]
            if set(saved) != set(mine):
                raise KeyError(f"the saved {kind} name other tensors than this stack's")
            with torch.no_grad():
                for n, t in mine.items():
                    t.copy_(saved[n])


class Generators:
    """Per-fold ``torch.Generator``s as one stateful object (a checkpoint saves and restores them)."""

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)

    def state_dict(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def load_state_dict(self, state: Sequence[torch.Tensor]) -> None:
        if len(state) != len(self.generators):
            raise ValueError(f"{len(state)} saved generators for {len(self.generators)} folds")
        for g, s in zip(self.generators, state, strict=True):
            g.set_state(s)


def batch_counts(sizes: Sequence[int], batch_size: int, min_rows: int = 2) -> list[int]:
    """Batches per epoch of each fold (:func:`~bmnas.engine.loop.batch_indices`); stacked training
    needs them all equal, so that every fold takes every optimiser step."""
    return [len(batch_indices(n, batch_size, None, min_rows)) for n in sizes]


def groups_by_size(sizes: Sequence[int]) -> list[list[int]]:
    """Fold indices grouped by batch size, in order of first appearance: ``[3, 2, 3] -> [[0, 2], [1]]``."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(sizes):
        groups.setdefault(n, []).append(i)
    return list(groups.values())


def _stack(batches: Sequence[Batch]) -> Batch:
    feats = {n: torch.stack([b[0][n] for b in batches]) for n in batches[0][0]}
    return feats, torch.stack([b[1] for b in batches])


def train_folds_epoch(
    stack: FoldStack,
    batches: Sequence[Sequence[np.ndarray]],
    gathers: Sequence[Callable[[np.ndarray], Batch]],
    task: TaskInfo,
    optimizer: torch.optim.Optimizer,
    ctx: Context = CPU,
    *,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    dropouts: Sequence[ModalityDropout | None] | None = None,
) -> list[float]:
    """One epoch of every fold: ``batches[i]`` fold i's row batches, ``gathers[i](rows)`` its batch.

    Per step j: each fold's batch ``j`` (its modality dropout applied with its own generator), the
    folds grouped by batch size, one forward per group, ``Σ_i`` of the folds' mean losses backward,
    one optimiser step, ``schedule.step()``. Returns each fold's ``Σ loss(batch) · |batch| / Σ |batch|``.
    One process only (a process group trains fold by fold).
    """
    counts = {len(b) for b in batches}
    if len(counts) != 1:
        raise ValueError(f"stacked folds need the same number of batches per fold, got {sorted(counts)}")
    k = stack.k
    dropouts = list(dropouts) if dropouts is not None else [None] * k
    stack.train()
    totals = torch.zeros(k, device=ctx.device)
    rows = [0] * k
    for step in range(counts.pop()):
        fold_batches = []
        for i in range(k):
            idx = batches[i][step]
            inputs, labels = gathers[i](idx)
            if dropouts[i] is not None:
                inputs = dropouts[i](inputs, len(idx), SINGLE)
            fold_batches.append((inputs, labels))
            rows[i] += len(idx)
        losses = []
        for group in groups_by_size([len(b[1]) for b in fold_batches]):
            feats, labels = _stack([fold_batches[i] for i in group])
            with ctx.amp():
                logits = stack(feats, group)
            loss = vmap(lambda o, y: loss_fn(task, o, y))(logits.float(), labels)
            losses.append((group, loss))
        optimizer.zero_grad(set_to_none=True)
        sum(loss.sum() for _, loss in losses).backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        with torch.no_grad():
            for group, loss in losses:
                sizes = torch.tensor([len(fold_batches[i][1]) for i in group], device=loss.device)
                totals[group] += loss.detach() * sizes
    return [float(t) / max(1, n) for t, n in zip(totals.tolist(), rows, strict=True)]


@torch.no_grad()
def evaluate_folds(
    stack: FoldStack,
    splits: Sequence[FeatureSplit],
    task: TaskInfo,
    batch_size: int = 1024,
    threshold: float = 0.5,
    ctx: Context = CPU,
) -> list[dict[str, Any]]:
    """Loss and metrics of fold i in eval mode over ``splits[i]``, for every fold (one forward per batch).

    Each split is padded to the longest with copies of its last row (in eval mode rows do not
    interact), whose logits are dropped; ``loss`` is the mean over the split's rows.
    """
    was_training = stack.training
    stack.eval()
    n = max(len(s) for s in splits)
    order = [np.minimum(np.arange(n), len(s) - 1) for s in splits]
    logits: list[list[torch.Tensor]] = [[] for _ in splits]
    labels: list[list[torch.Tensor]] = [[] for _ in splits]
    try:
        for chunk in batch_indices(n, batch_size, None, 1):
            feats, ys = _stack([s.batch(o[chunk]) for s, o in zip(splits, order, strict=True)])
            feats = {name: f.to(ctx.device) for name, f in feats.items()}
            with ctx.amp():
                out = stack(feats).float().cpu()
            for i in range(len(splits)):
                logits[i].append(out[i])
                labels[i].append(ys[i].cpu())
    finally:
        stack.train(was_training)
    results = []
    for split, out, ys in zip(splits, logits, labels, strict=True):
        out, ys = torch.cat(out)[: len(split)], torch.cat(ys)[: len(split)]
        metrics = compute_metrics(task, out.numpy(), split.labels, threshold)
        results.append({"loss": float(loss_fn(task, out, ys)), **metrics})
    return results
