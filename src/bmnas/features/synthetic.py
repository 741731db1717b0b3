"""Synthetic pooled features with a planted structure, for tests, demos and benchmarks."""

from __future__ import annotations

import numpy as np

from ..core.data import FeatureData, FeatureSplit, TaskInfo

SPLIT_SIZES = {"train": 0.7, "val": 0.15, "test": 0.15}


def planted_interaction(
    n: int = 1200,
    L: int = 4,
    channels: int = 8,
    seed: int = 0,
    signal: tuple[str, str] = ("a.f2", "b.f1"),
    noise: float = 1.0,
) -> FeatureData:
    """Two modalities ``a``, ``b`` with features ``f1`` (vector), ``f2``, ``f3`` (``L`` positions).

    The label is ``[u > 0] XOR [v > 0]`` where ``u`` and ``v`` are one channel of the two ``signal``
    features (one per modality); every other value is Gaussian noise. Neither modality alone
    predicts anything: only the interaction of the planted pair does.
    """
    rng = np.random.default_rng(seed)
    shapes = {"a.f1": 1, "a.f2": L, "a.f3": L, "b.f1": 1, "b.f2": L, "b.f3": L}
    feats = {
        k: rng.normal(0.0, noise, size=(n, length, channels)).astype(np.float32)
        for k, length in shapes.items()
    }
    u = rng.normal(size=n).astype(np.float32)
    v = rng.normal(size=n).astype(np.float32)
    feats[signal[0]][:, :, 0] = 2.0 * u[:, None]
    feats[signal[1]][:, :, 0] = 2.0 * v[:, None]
    labels = ((u > 0) ^ (v > 0)).astype(np.int64)
    bounds = np.cumsum([0] + [int(round(f * n)) for f in SPLIT_SIZES.values()])
    bounds[-1] = n
    splits = {
        s: FeatureSplit({k: a[lo:hi] for k, a in feats.items()}, labels[lo:hi])
        for s, lo, hi in zip(SPLIT_SIZES, bounds[:-1], bounds[1:], strict=True)
    }
    return FeatureData(splits, TaskInfo("multiclass", 2), name="planted")
