"""Perturbation-based selection of the Cells' inputs (``search.select=perturb``; DARTS-PT, Wang et
al. 2021, "Rethinking architecture selection in differentiable NAS").

The argmax of α need not name the edges the trained hypernet relies on: α's weights can stay
within a few thousandths of each other while the network has learnt to use some edges and not
others. Perturbation selection asks the hypernet itself. For Cell n, slot s and predecessor i,
the edge is removed (:func:`bmnas.space.hypernet.mask_edge`: its weight set to 0, renormalised
under the softmax relaxation) and the loss on the architecture rows is measured in eval mode,
through the hypernet's own forward (:meth:`~bmnas.space.hypernet.HyperNet.alpha_override`):

    ``Δ[n, s, i] = loss(α with edge (n, s, i) removed) − loss(α)``

The edge whose removal hurts most is the one the hypernet needs. Cell n then reads the pair
``argmax_{(i, j)} Δ[n, x, i] + Δ[n, y, j]`` under the derivation's rules (distinct, a pair no
earlier Cell took, cross-modal): :func:`bmnas.space.derive.derive` receives the scores
``exp((Δ − max Δ) / scale)``, whose product over the two slots orders pairs as the sum of their Δ.
The steps' inputs and ops are derived from β and γ as before.

Progressive (``search.select_tune_steps = T > 0``): Cells are decided in order; once Cell n's pair
is chosen it is fixed (:func:`~bmnas.space.hypernet.fix_inputs`: one-hot slots, as the derived
Cell reads them) and a copy of the hypernet's weights is tuned T steps on train batches with α, β,
γ frozen before Cell n + 1 is measured, so later Cells are judged in a network whose earlier Cells
are already discrete. The search's own hypernet is left as the search trained it.

With ``search.select_ops``, each step's op is chosen the same way afterwards (the op whose removal
from the step's mixture raises the loss most; ``zero`` is never chosen), else by argmax γ.

The record (per Cell and slot, each predecessor's Δ and the base loss) goes to
``RUN_DIR/perturb.json`` and :attr:`bmnas.method.search.SearchResult.perturb`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.config import Config
from ..core.data import FeatureSplit, TaskInfo
from ..core.genotype import DeriveRules, Genotype
from ..engine.distributed import shard, sum_over_ranks
from ..engine.loop import (
    AdamSettings,
    Context,
    batch_indices,
    build_optimizer,
    forward_batches,
    loss_fn,
    optimizer_step,
)
from ..space.hypernet import HyperNet, fix_inputs, mask_edge, mask_op

SLOT_NAMES = ("x", "y")


@dataclass(frozen=True)
class Batches:
    """Where selection reads its rows: the loss split and rows, and (progressive) the train batches."""

    split: FeatureSplit  # the split of the architecture steps (val, or train with search.arch_split)
    rows: np.ndarray
    train: FeatureSplit
    train_rows: np.ndarray
    min_rows: int = 2


def loss_on(net: HyperNet, b: Batches, task: TaskInfo, batch_size: int, ctx: Context) -> float:
    """Mean loss of ``net`` (eval mode) over ``b.rows`` of ``b.split``, over all ranks' shards."""
    rows = shard(b.rows, ctx.ranks)
    total = 0.0
    for y, out in forward_batches(net, len(rows), lambda i: b.split.batch(rows[i]), batch_size, ctx.amp):
        total += float(loss_fn(task, out, y)) * len(out)
    return sum_over_ranks(total, ctx.ranks) / max(1, len(b.rows))


def scores_of(delta: np.ndarray) -> np.ndarray:
    """Positive derivation scores ``exp((Δ − max Δ) / scale)`` of one Cell's ``(S, P)`` loss deltas.

    ``scale = max |Δ|`` of the Cell (1 when all are 0) keeps the exponent in [−2, 0], and a product
    of two slots' scores is ``exp((Δ_x + Δ_y − const) / scale)``: pairs are ordered by the sum of Δ.
    """
    d = np.asarray(delta, dtype=np.float64)
    scale = float(np.abs(d).max()) or 1.0
    return np.exp((d - d.max()) / scale)


def perturb_select(
    net: HyperNet, b: Batches, task: TaskInfo, cfg: Config, ctx: Context
) -> tuple[Genotype, dict]:
    """The genotype perturbation selection picks and its record (see the module doc).

    Returns ``(genotype, record)``; ``record = {"method", "base_loss", "rows", "tune_steps",
    "cells": [{"cell", "base_loss", "inputs", "slots": [{"slot", "delta": {state: Δ}}]}]}``.
    """
    s = cfg.search
    rules = DeriveRules.of(s)
    steps = s.select_tune_steps
    names = [f.name for f in net.features] + [f"cell{n + 1}" for n in range(net.num_cells)]
    K = len(net.features)
    with torch.no_grad():
        weights = [w.detach().clone() for w in net.alpha_weights()]
    tuned = copy.deepcopy(net) if steps else net
    tune = _Tuner(tuned, b, task, cfg, ctx) if steps else None
    scores: list[np.ndarray] = []
    cells: list[dict] = []
    for n, w in enumerate(weights):
        with tuned.alpha_override(weights):
            base = loss_on(tuned, b, task, s.eval_batch_size, ctx)
        delta = np.zeros(tuple(w.shape))
        for slot in range(w.shape[0]):
            for i in range(w.shape[1]):
                with tuned.alpha_override(mask_edge(weights, n, slot, i, net.relaxation)):
                    delta[slot, i] = loss_on(tuned, b, task, s.eval_batch_size, ctx) - base
        scores.append(scores_of(delta))
        # the rules decide Cell n from the scores of Cells 0..n alone (later Cells: placeholders)
        partial = scores + [np.ones(tuple(x.shape)) for x in weights[n + 1 :]]
        inputs = net.genotype(rules, alpha=partial).cells[n].inputs
        cells.append(
            {
                "cell": n + 1,
                "base_loss": base,
                "inputs": list(inputs),
                "slots": [
                    {
                        "slot": SLOT_NAMES[slot] if w.shape[0] > 1 else "xy",
                        "delta": {names[i]: float(delta[slot, i]) for i in range(K + n)},
                    }
                    for slot in range(w.shape[0])
                ],
            }
        )
        if tune is not None:
            weights = fix_inputs(weights, n, (names.index(inputs[0]), names.index(inputs[1])))
            if n + 1 < len(weights):
                tune(weights, steps, seed=cfg.seed + n)
    op_scores = _select_ops(tuned, weights, b, task, cfg, ctx, cells) if s.select_ops else None
    genotype = net.genotype(rules, alpha=scores, gamma=op_scores)
    record = {
        "method": "perturb",
        "rows": int(len(b.rows)),
        "tune_steps": steps,
        "base_loss": cells[0]["base_loss"],
        "cells": cells,
    }
    if not all(math.isfinite(c["base_loss"]) for c in cells):
        raise FloatingPointError("perturbation selection: the hypernet's loss is not finite on the arch rows")
    return genotype, record


def _select_ops(
    net: HyperNet,
    weights: list[torch.Tensor],
    b: Batches,
    task: TaskInfo,
    cfg: Config,
    ctx: Context,
    cells: list,
) -> list[np.ndarray]:
    """``search.select_ops``: each step's op by the loss when it is removed from the step's mixture
    (:func:`~bmnas.space.hypernet.mask_op`), ``Δ[n, m, f] = loss(op f of step m removed) − loss``;
    the step takes ``argmax_f Δ`` over the ops other than ``zero``. The Cell slots mix with
    ``weights`` (α's, or the fixed inputs when progressive). Adds ``"ops"`` to each Cell's record."""
    bs = cfg.search.eval_batch_size
    with torch.no_grad():
        op_w = [w.detach().clone() for w in net.op_weights()]
    out = []
    with net.alpha_override(weights):
        with net.op_override(op_w):
            base = loss_on(net, b, task, bs, ctx)
        for n, w in enumerate(op_w):
            delta = np.full(tuple(w.shape), -np.inf)
            for m in range(w.shape[0]):
                for f, name in enumerate(net.ops):
                    if name == "zero":
                        continue
                    with net.op_override(mask_op(op_w, n, m, f)):
                        delta[m, f] = loss_on(net, b, task, bs, ctx) - base
            out.append(delta)
            cells[n]["ops"] = [
                {
                    "step": m + 1,
                    "delta": {o: float(delta[m, f]) for f, o in enumerate(net.ops) if o != "zero"},
                }
                for m in range(w.shape[0])
            ]
    return out


class _Tuner:
    """Weight steps on a copy of the hypernet with its Cell slots overridden (progressive selection)."""

    def __init__(self, net: HyperNet, b: Batches, task: TaskInfo, cfg: Config, ctx: Context):
        self.net, self.b, self.task, self.cfg, self.ctx = net, b, task, cfg, ctx
        self.opt = build_optimizer(net.weight_parameters(), AdamSettings.of(cfg.search, fused=True))

    def __call__(self, weights: list[torch.Tensor], steps: int, seed: int) -> None:
        net, b, bs = self.net, self.b, self.cfg.search.batch_size
        gen = torch.Generator().manual_seed(seed)
        arch = net.arch_parameters()
        net.train()
        done = 0
        with net.alpha_override(weights):
            while done < steps:
                for rows in batch_indices(len(b.train_rows), bs, gen, b.min_rows):
                    if done >= steps:
                        break
                    feats, y = b.train.batch(shard(b.train_rows[rows], self.ctx.ranks))
                    optimizer_step(net, self.task, feats, y, self.opt, arch, self.ctx.ranks, self.ctx.amp)
                    done += 1
        net.eval()
