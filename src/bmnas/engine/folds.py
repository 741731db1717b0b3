"""k-fold partitions of train ∪ val, for scoring a network on more data than the val split.

A val split of a few hundred rows scores a network to within a standard error of a point or two
(docs/DESIGN.md §8), so picking the best of several networks on it mostly picks noise;
cross-validation over train ∪ val scores every row once. The folds are a seeded permutation split
into ``k`` near-equal parts; fold ``i`` trains on the other ``k − 1`` parts and is scored on part
``i``. The test split is never touched.
"""

from __future__ import annotations

import numpy as np

from ..core.data import FeatureData, FeatureSplit, memo_of, merge_splits


def kfold(data: FeatureData, k: int, seed: int = 0) -> tuple[FeatureData, ...]:
    """``k`` copies of ``data`` whose train/val are the folds of train ∪ val (test unchanged).

    Memoised per train split, ``k`` and ``seed``, so every network of a run is scored on the same
    folds (and per-fold caches, such as the probe's chosen ``C``, are shared).
    """
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    memo = memo_of(data["train"].labels)
    key = ("kfold", k, seed, data["val"].labels.tobytes())
    if key not in memo:
        pool = merge_splits(data["train"], data["val"])
        parts = np.array_split(np.random.default_rng(seed).permutation(len(pool)), k)
        memo[key] = tuple(
            FeatureData(
                {
                    "train": _take(pool, np.sort(np.concatenate(parts[:i] + parts[i + 1 :]))),
                    "val": _take(pool, np.sort(parts[i])),
                    "test": data["test"],
                },
                data.task,
                data.name,
                data.info,
            )
            for i in range(k)
        )
    return memo[key]


def _take(split: FeatureSplit, rows: np.ndarray) -> FeatureSplit:
    return FeatureSplit({n: f[rows] for n, f in split.features.items()}, split.labels[rows])
