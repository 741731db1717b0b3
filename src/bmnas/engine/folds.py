"""k-fold partitions of train ∪ val, for scoring a network on more data than the val split.

A val split of a few hundred rows scores a network to within a standard error of a point or two
(docs/DESIGN.md §8), so picking the best of several networks on it mostly picks noise;
cross-validation over train ∪ val scores every row once. Fold ``i`` trains on the other ``k − 1``
parts and is scored on part ``i``; the test split is never touched. The parts are seeded and:

* **grouped**: rows that share a group (``FeatureSplit.groups``: the same utterance, subject or
  picture in several rows) are always in the same part, so a fold never scores a network on an
  item it trained on;
* **stratified** (multiclass): every part holds each class in proportion, to within a row
  (scikit-learn's ``StratifiedKFold``, or ``StratifiedGroupKFold`` with groups, which balances as
  well as the groups allow). Multilabel rows are not stratified: a seeded permutation cut into
  ``k`` near-equal parts, or with groups, shuffled groups dealt largest first to the smallest part.

When the features come from backbones bmnas fitted on the train split (``data.info`` lists them
under ``backbones_fit_on_train``: AV-MNIST's CNNs, MM-IMDB's, NTU's, EgoGesture's), a train row's
features have seen its label, so a fold scored on train rows is optimistic — most for the models
that read the backbones' last layer, such as the linear probe (AV-MNIST: probe CV 0.919 over train
∪ val vs 0.851 test). There only **val rows are scored**: val is cut into the ``k`` parts (grouped and
stratified as above) and fold ``i`` trains on all of train plus the other val parts. Every val row is
scored once, by a network trained on more rows than train alone.

Without groups, rows whose features repeat exactly in another part (the first feature of a
modality, hashed row by row) are logged as a warning: such a fold scores memorised items and its
cross-validated score is optimistic. Give each split a ``group`` array to keep them together.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from ..core.data import FeatureData, FeatureSplit, memo_of, merge_splits

log = logging.getLogger(__name__)


def kfold(data: FeatureData, k: int, seed: int = 0) -> tuple[FeatureData, ...]:
    """``k`` copies of ``data`` whose train/val are the folds of train ∪ val (test unchanged).

    Memoised per train split, ``k`` and ``seed``, so every network of a run is scored on the same
    folds (and per-fold caches, such as the probe's chosen ``C``, are shared).
    """
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    memo = memo_of(data["train"].labels)
    val = data["val"]
    groups = None if val.groups is None else val.groups.tobytes()
    key = ("kfold", k, seed, val.labels.tobytes(), groups, scores_val_only(data))
    if key not in memo:
        pool = merge_splits(data["train"], data["val"])
        multilabel = data.task.type == "multilabel"
        if scores_val_only(data):
            n = len(data["train"])
            parts = [n + p for p in fold_parts(val.labels, val.groups, k, seed, multilabel=multilabel)]
            always = [np.arange(n)]  # train rows: in every fold's training, never scored
        else:
            parts, always = fold_parts(pool.labels, pool.groups, k, seed, multilabel=multilabel), []
            if pool.groups is None:
                warn_repeated_rows(pool, parts)
        memo[key] = tuple(
            FeatureData(
                {
                    "train": _take(pool, np.sort(np.concatenate(always + parts[:i] + parts[i + 1 :]))),
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


def scores_val_only(data: FeatureData) -> bool:
    """Whether :func:`kfold` scores val rows only: some backbone was fitted on the train split."""
    return bool((data.info or {}).get("backbones_fit_on_train"))


def fold_parts(
    labels: np.ndarray, groups: np.ndarray | None, k: int, seed: int, multilabel: bool = False
) -> list[np.ndarray]:
    """The ``k`` disjoint row sets (sorted indices) that cover ``len(labels)`` rows (see the module doc)."""
    n = len(labels)
    units = n if groups is None else len(np.unique(groups))
    if units < k:
        what = "rows" if groups is None else "groups"
        raise ValueError(
            f"{k}-fold cross-validation needs at least {k} {what}, train ∪ val has {units}; lower "
            f"train.select_folds"
        )
    if multilabel:
        if groups is None:
            return [np.sort(p) for p in np.array_split(np.random.default_rng(seed).permutation(n), k)]
        return _grouped_parts(groups, k, seed)
    with warnings.catch_warnings():  # a class rarer than k rows cannot be in every part: not an error
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        if groups is None:
            split = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(n), labels)
        else:
            cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            split = cv.split(np.zeros(n), labels, groups)
        parts = [np.sort(test) for _, test in split]
    if groups is not None and any(len(p) == 0 for p in parts):  # a few large groups: balance sizes
        return _grouped_parts(groups, k, seed)
    return parts


def _grouped_parts(groups: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Shuffled groups, dealt largest first (ties in shuffled order) to the part with fewest rows."""
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-counts[order], kind="stable")]
    sizes, part_of = np.zeros(k, np.int64), np.empty(len(names), np.int64)
    for g in order:
        part_of[g] = int(np.argmin(sizes))
        sizes[part_of[g]] += counts[g]
    return [np.flatnonzero(part_of[inverse] == i) for i in range(k)]


def repeated_rows(features: np.ndarray, parts: list[np.ndarray]) -> int:
    """Rows of ``features`` ``(N, ...)`` whose exact values also occur in another part."""
    flat = np.ascontiguousarray(features).reshape(len(features), -1)
    rows = flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))).ravel()
    _, ids = np.unique(rows, return_inverse=True)
    part = np.empty(len(features), np.int64)
    for i, p in enumerate(parts):
        part[p] = i
    first, last = np.full(ids.max() + 1, len(parts)), np.full(ids.max() + 1, -1)
    np.minimum.at(first, ids, part)
    np.maximum.at(last, ids, part)
    return int((first[ids] != last[ids]).sum())


def warn_repeated_rows(pool: FeatureSplit, parts: list[np.ndarray]) -> None:
    """Log a warning when a modality's first feature repeats rows across the parts (see the module doc)."""
    firsts = {}
    for name in pool.features:
        firsts.setdefault(name.split(".", 1)[0], name)
    for name in firsts.values():
        count = repeated_rows(pool.features[name], parts)
        if count:
            log.warning(
                "%d of the %d rows of train ∪ val repeat their %s values in another fold (the same "
                "item in several rows?): each fold scores rows it trained on and the cross-validated "
                "score is optimistic. Give every split a 'group' array (one id per row, equal ids for "
                "one item) so that repeats stay in one fold",
                count,
                len(pool),
                name,
            )
            return


def _take(split: FeatureSplit, rows: np.ndarray) -> FeatureSplit:
    groups = None if split.groups is None else split.groups[rows]
    return FeatureSplit({n: f[rows] for n, f in split.features.items()}, split.labels[rows], groups)
