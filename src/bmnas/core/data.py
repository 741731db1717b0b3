"""Pooled multimodal features as values: the task, the splits and the data a run trains on.

Torch-free: a split hands out torch tensors only when a batch is asked for. How features get
here (pooling, the feature cache, the generic format, validation) is :mod:`bmnas.features`.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError
from .genotype import FeatureSpec

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "val", "test")


class Labelled:
    """A split of ``N`` labelled samples (raw in datasets, pooled in :class:`FeatureSplit`): ``len`` is N."""

    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


TASK_TYPES = ("multiclass", "multilabel")
MAX_OUTPUTS = 100_000  # classes or labels of a task: the labels' check (features.validate) refuses more


@dataclass(frozen=True)
class TaskInfo:
    """What the labels mean: ``multiclass`` with ``num_outputs`` classes or ``multilabel``."""

    type: str
    num_outputs: int

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise DataError(f"task type must be one of {TASK_TYPES}, got {self.type!r}")
        if self.num_outputs < 1:
            raise DataError(f"the task needs at least one output, got {self.num_outputs}")


@dataclass(frozen=True)
class FeatureSplit(Labelled):
    """One split: pooled features ``name -> (N, L_k, C_in)`` float32, labels and optional groups.

    ``groups`` ``(N,)`` int64 (or None) names the item each row comes from: rows of one group (the
    same utterance, subject or picture in several rows) are never split between the train and the
    val part of a fold (:func:`bmnas.engine.folds.kfold`). Codes are ``>= 0``; equal codes in train
    and val are the same item.
    """

    features: Mapping[str, np.ndarray]
    labels: np.ndarray
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.groups is not None and np.shape(self.groups) != (len(self),):
            raise DataError(
                f"groups have shape {np.shape(self.groups)} but the split has {len(self)} rows; "
                f"give one group per row, shape ({len(self)},)"
            )

    def batch(self, index: np.ndarray | slice) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Gather rows ``index`` as torch tensors (one copy out of a memory map, none else)."""
        import torch  # allowed: core stays torch-free until a batch is asked for

        feats = {k: torch.from_numpy(np.ascontiguousarray(v[index])) for k, v in self.features.items()}
        return feats, torch.from_numpy(np.ascontiguousarray(self.labels[index]))


@dataclass(frozen=True)
class FeatureData:
    """Train, val and test splits of pooled features plus the task they serve."""

    splits: Mapping[str, FeatureSplit]
    task: TaskInfo
    name: str = "data"
    info: Mapping[str, object] = field(default_factory=dict)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.splits["train"].features)

    @property
    def feature_channels(self) -> dict[str, int]:
        return {k: int(v.shape[-1]) for k, v in self.splits["train"].features.items()}

    @property
    def feature_lengths(self) -> dict[str, int]:
        return {k: int(v.shape[1]) for k, v in self.splits["train"].features.items()}

    def specs(self) -> tuple[FeatureSpec, ...]:
        """What a network needs to know of each feature: name, channels, positions."""
        lengths, channels = self.feature_lengths, self.feature_channels
        return tuple(FeatureSpec(n, channels[n], lengths[n]) for n in self.feature_names)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n.split(".", 1)[0] for n in self.feature_names))

    def __getitem__(self, split: str) -> FeatureSplit:
        return self.splits[split]

    def select(self, names: list[str] | tuple[str, ...]) -> FeatureData:
        """The same data restricted to the features ``names`` (in that order)."""
        unknown = [n for n in names if n not in self.feature_names]
        if unknown:
            raise DataError(f"unknown features {unknown}; available: {list(self.feature_names)}")
        splits = {
            s: FeatureSplit({n: sp.features[n] for n in names}, sp.labels, sp.groups)
            for s, sp in self.splits.items()
        }
        return FeatureData(splits, self.task, self.name, self.info)


_MEMOS: dict[int, dict] = {}


def memo_of(array: np.ndarray) -> dict:
    """A cache dict tied to ``array``'s identity and dropped when it is freed (so ids never collide).

    Caches of work derived from one split (its k folds, the probe's chosen ``C``) key on that
    split's label array: a run shares them across every network it trains.
    """
    key = id(array)
    if key not in _MEMOS:
        _MEMOS[key] = {}
        weakref.finalize(array, _MEMOS.pop, key, None)
    return _MEMOS[key]


def merge_splits(a: FeatureSplit, b: FeatureSplit) -> FeatureSplit:
    """Concatenate two splits (train + val: the evaluation stage, the k folds).

    Groups are kept (equal codes in both splits stay one group); when only one split has groups,
    every row of the other is a group of its own (negative codes, which no given group uses).
    """
    feats = {k: np.concatenate([a.features[k], b.features[k]]) for k in a.features}
    groups = None
    if a.groups is not None or b.groups is not None:
        ga = a.groups if a.groups is not None else -1 - np.arange(len(a), dtype=np.int64)
        gb = b.groups if b.groups is not None else -1 - len(a) - np.arange(len(b), dtype=np.int64)
        groups = np.concatenate([np.asarray(ga, np.int64), np.asarray(gb, np.int64)])
    return FeatureSplit(feats, np.concatenate([a.labels, b.labels]), groups)


def group_codes(groups: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray | None]:
    """Per-split group arrays (ints or strings) as int64 codes ``>= 0``, equal values equal codes
    across splits (so ``"anna"`` in train and in val stays one group); None stays None."""
    given = {s: np.asarray(g) for s, g in groups.items() if g is not None}
    if not given:
        return dict.fromkeys(groups)
    kinds = {g.dtype.kind for g in given.values()}
    values = [g.astype(str) if len(kinds) > 1 else g for g in given.values()]
    _, codes = np.unique(np.concatenate(values), return_inverse=True)
    bounds = np.cumsum([0, *(len(g) for g in given.values())])
    cut = {s: codes[lo:hi].astype(np.int64) for s, lo, hi in zip(given, bounds[:-1], bounds[1:], strict=True)}
    return {s: cut.get(s) for s in groups}
