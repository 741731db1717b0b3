"""The two levels a search trains: the hypernet built from the data and the config, and its two
optimisers (the weights' Adam with its per-batch cosine schedule; α, β, γ's Adam).

Shared by the search (:mod:`bmnas.method.search`) and ``device: auto``'s probe of it
(:mod:`bmnas.method.placement`).
"""

from __future__ import annotations

import dataclasses

from ..core.config import Config, arch_lr_of
from ..core.data import FeatureData
from ..engine.loop import AdamSettings, build_optimizer, cosine_restarts
from ..space.hypernet import HyperNet


def build_hypernet(data: FeatureData, cfg: Config) -> HyperNet:
    m = cfg.model
    for n, length in data.feature_lengths.items():
        if length not in (1, m.L):
            raise ValueError(f"feature {n!r} is pooled to {length} positions but model.L = {m.L}; re-pool it")
    return HyperNet(
        data.specs(),
        data.task.num_outputs,
        C=m.C,
        L=m.L,
        num_cells=m.cells,
        num_steps=m.steps,
        ops=m.ops,
        inner_multiplier=m.inner_multiplier,
        multiplier=m.multiplier or None,
        dropout=m.dropout,
        input_mode=m.input_mode,
        relaxation=m.relaxation,
    )


def bilevel_optimizers(net: HyperNet, cfg: Config, batches_per_epoch: int):
    """Adam of the weights and of α, β, γ (both fused), and the weights' per-batch cosine schedule.

    α, β, γ's rate is ``search.arch_lr``, or with ``auto`` :func:`bmnas.core.config.auto_arch_lr` of
    the ``(epochs − warmup_epochs) × batches_per_epoch`` architecture steps the search makes.
    """
    s = cfg.search
    w_opt = build_optimizer(net.weight_parameters(), AdamSettings.of(s, fused=True))
    arch = dataclasses.replace(AdamSettings.arch(s), lr=arch_lr_of(s, batches_per_epoch))
    a_opt = build_optimizer(net.arch_parameters(), arch)
    sched = cosine_restarts(w_opt, batches_per_epoch, s.restart_epochs, s.restart_mult, s.lr_min)
    return w_opt, a_opt, sched
