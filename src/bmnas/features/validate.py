"""Checks of feature data before anything trains: names, shapes, values, labels, task."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

import numpy as np
import torch

from ..core.config import FLOAT32_MAX
from ..core.data import SPLITS, TASK_TYPES, FeatureData, FeatureSplit, TaskInfo, group_codes
from ..core.errors import DataError
from ..core.genotype import CELL_PREFIX
from ..features.pooling import pool_feature

FEATURE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*\.[A-Za-z0-9_.-]+$")


MIN_ROWS = {"train": 2, "val": 2, "test": 1}  # training-mode BatchNorm needs two rows per batch


MAX_CLASSES = 100_000


RAW_SHAPES = "(N, C), (N, C, T), (N, C, H, W) or (N, C, T, H, W)"


def native(arr: np.ndarray) -> np.ndarray:
    """``arr`` in this machine's byte order (the same values and width): a big-endian array, e.g.
    ``np.savez`` of ``>f4`` data from another machine, is converted (torch reads only native order)."""
    arr = np.asarray(arr)
    if arr.dtype.byteorder not in ("=", "|") and arr.dtype != arr.dtype.newbyteorder("="):
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


def infer_task(
    labels: Mapping[str, np.ndarray], override: str | None = None, num_outputs: int | None = None
) -> TaskInfo:
    """Infer the task from label arrays: 1-D integers → multiclass, 2-D 0/1 → multilabel.

    Raises :class:`DataError` for labels that fit neither, or that fall outside ``num_outputs``.
    """
    shapes = {s: y.shape for s, y in labels.items()}
    ndims = {len(sh) for sh in shapes.values()}
    if len(ndims) != 1 or ndims.pop() not in (1, 2):
        raise DataError(
            f"labels must be (N,) integer classes or (N, K) multi-hot in every split; got shapes {shapes}"
        )
    for split, y in labels.items():
        _check_label_array(f"split {split!r}", y)
    first = next(iter(labels.values()))
    kind = override or ("multiclass" if first.ndim == 1 else "multilabel")
    if kind not in TASK_TYPES:
        raise DataError(f"task.type must be one of {TASK_TYPES} or empty (infer), got {kind!r}")
    if kind == "multiclass":
        if first.ndim != 1:
            raise DataError(f"multiclass labels must be 1-D class indices; got shapes {shapes}")
        for split, y in labels.items():
            if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
                row = int(np.flatnonzero(np.mod(y, 1) != 0)[0])
                raise DataError(
                    f"split {split!r}: multiclass labels must be integers; row {row} has {y[row].item()!r}"
                )
        train = labels.get("train", np.concatenate(list(labels.values())))
        n = num_outputs or int(train.max()) + 1
        if n > MAX_CLASSES:
            raise DataError(
                f"labels imply {n} classes (more than {MAX_CLASSES}); multiclass labels must be class "
                f"indices 0..K-1"
            )
        inferred = "" if num_outputs else " (the classes are inferred from train's labels)"
        for split, y in labels.items():
            bad = np.flatnonzero((y < 0) | (y >= n))
            if bad.size:
                raise DataError(
                    f"split {split!r}: label {y[bad[0]].item()!r} at row {bad[0]} is out of range "
                    f"[0, {n}) ({bad.size} such rows); labels must be class indices 0..{n - 1}{inferred}"
                )
        _check_classes(labels, train)
        return TaskInfo("multiclass", n)
    widths = {y.shape[-1] for y in labels.values()}
    if first.ndim != 2 or len(widths) != 1:
        raise DataError(f"multilabel labels must be (N, K) with the same K everywhere; got {shapes}")
    for split, y in labels.items():
        bad = np.argwhere((y != 0) & (y != 1))
        if bad.size:
            r, c = bad[0]
            raise DataError(
                f"split {split!r}: multi-hot label [{r}, {c}] = {y[r, c].item()!r}; multilabel targets "
                f"must be 0 or 1"
            )
    _check_positives(labels)
    return TaskInfo("multilabel", widths.pop())


def _check_positives(labels: Mapping[str, np.ndarray]) -> None:
    """Multi-hot labels: every label column positive somewhere in train, and every split with a
    positive label (the multilabel analogue of a class missing from train)."""
    for split, y in labels.items():
        if not (y == 1).any():
            raise DataError(
                f"split {split!r}: every label is 0 (no sample has a positive label in any of its "
                f"{y.shape[1]} columns); its F1 is undefined: fix the labels or re-split the data"
            )
    train = labels.get("train")
    never = [] if train is None else np.flatnonzero(~(train == 1).any(axis=0)).tolist()
    if never:
        shown = ", ".join(map(str, never[:10])) + (f" and {len(never) - 10} more" if len(never) > 10 else "")
        raise DataError(
            f"split 'train': label column(s) {shown} (of {train.shape[1]}) are never positive; a label "
            f"the model never trains on cannot be predicted: drop those columns, fix the labels or "
            f"re-split the data"
        )


def _check_label_array(name: str, y: np.ndarray) -> None:
    """Labels are a non-empty ``(N,)`` or ``(N, K)`` array of numbers."""
    if y.ndim not in (1, 2):
        raise DataError(
            f"{name}: 'label' has shape {y.shape}; labels must be (N,) integer classes or (N, K) multi-hot"
        )
    if y.dtype.kind not in "biuf":
        raise DataError(
            f"{name}: 'label' has dtype {y.dtype}; labels must be integer class indices 0..K-1 (map "
            f"class names to indices first) or 0/1 multi-hot"
        )
    if y.shape[0] == 0:
        raise DataError(f"{name}: no samples ('label' is empty); every split needs samples")


def _check_classes(labels: Mapping[str, np.ndarray], train: np.ndarray) -> None:
    """At least two classes in train, and no val/test class that train never shows."""
    seen = np.unique(train)
    if seen.size < 2:
        raise DataError(
            f"split 'train': every label is {seen[0].item()!r}; a classification task needs at least 2 "
            f"classes in train"
        )
    for split, y in labels.items():
        unseen = ~np.isin(y, seen)
        if split != "train" and unseen.any():
            row = int(np.flatnonzero(unseen)[0])
            raise DataError(
                f"split {split!r}: label {y[row].item()!r} at row {row} never occurs in train "
                f"({int(unseen.sum())} such rows); a class the model never trains on cannot be predicted: "
                f"fix the labels or re-split the data"
            )


def check_feature(name: str, key: str, arr: np.ndarray, n: int | None = None, values: bool = True) -> None:
    """One raw feature: ``(N, *raw_shape)`` (N = ``n`` if given) of real, finite numbers that fit float32.

    ``values=False`` checks shape and dtype only (a memory-mapped feature's values are checked chunk
    by chunk with :func:`check_values` while it is pooled)."""
    if not 2 <= arr.ndim <= 5:
        raise DataError(f"{name}: feature {key!r} has shape {arr.shape}; a raw feature must be {RAW_SHAPES}")
    if n is not None and arr.shape[0] != n:
        raise DataError(
            f"{name}: feature {key!r} has {arr.shape[0]} samples but 'label' has {n}; every "
            f"array of a split must have the same first dimension"
        )
    if 0 in arr.shape[1:]:
        raise DataError(
            f"{name}: feature {key!r} has shape {arr.shape} with an empty dimension; every dimension "
            f"after N must be at least 1"
        )
    if arr.dtype.kind == "c":
        raise DataError(
            f"{name}: feature {key!r} is complex ({arr.dtype}); store the real and imaginary parts (or "
            f"the magnitude) as real features"
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{name}: feature {key!r} has non-numeric dtype {arr.dtype}")
    if values:
        check_values(name, key, arr)


def check_values(name: str, key: str, arr: np.ndarray, first_row: int = 0) -> None:
    """No NaN/inf, and nothing that becomes inf as float32 (``arr``: rows from ``first_row`` on)."""
    if arr.dtype.kind != "f":
        return
    finite = np.isfinite(arr)
    if not finite.all():
        row = first_row + int(np.argwhere(~finite)[0][0])
        many = "" if first_row == 0 else " in this chunk"
        raise DataError(
            f"{name}: feature {key!r} has {int((~finite).sum())} NaN/inf values{many} "
            f"(first in sample {row}); clean or impute them first"
        )
    if arr.dtype.itemsize > 4 and arr.size:
        big = np.abs(arr) > FLOAT32_MAX
        if big.any():
            row = first_row + int(np.argwhere(big)[0][0])
            raise DataError(
                f"{name}: feature {key!r} has {int(big.sum())} values beyond float32's range "
                f"(|x| > {FLOAT32_MAX:.2e}, first in sample {row}); rescale the feature"
            )


def validate_split(
    name: str, split: Mapping[str, np.ndarray], labels: np.ndarray, min_rows: int = 1, values: bool = True
) -> None:
    """Check one split's arrays: labels, names, shapes, dtypes, sample counts and (``values``) finiteness."""
    labels = np.asarray(labels)
    _check_label_array(name, labels)
    n = labels.shape[0]
    if n < min_rows:
        raise DataError(
            f"{name}: {n} sample(s); this split needs at least {min_rows} (batch normalisation trains on "
            f"batches of two or more)"
        )
    if not split:
        raise DataError(f"{name}: no feature arrays; expected arrays named '<modality>.<layer>'")
    for key, arr in split.items():
        if key.startswith(CELL_PREFIX):
            raise DataError(
                f"{name}: feature {key!r}: a modality name may not start with {CELL_PREFIX!r} (bmnas "
                f"names its Cells {CELL_PREFIX}1, {CELL_PREFIX}2, ...); rename the modality"
            )
        if not FEATURE_NAME.match(key):
            raise DataError(
                f"{name}: array {key!r} is not a feature name; name features "
                f"'<modality>.<layer>', e.g. 'image.block3'"
            )
        check_feature(name, key, arr, n, values)


def check_groups(name: str, groups: np.ndarray, n: int) -> None:
    """A split's ``group`` array: ``(N,)`` integers or strings, one id per row (equal ids: one item)."""
    if groups.ndim != 1 or groups.shape[0] != n:
        raise DataError(
            f"{name}: 'group' has shape {groups.shape} but 'label' has {n} rows; give one group id per "
            f"row, shape ({n},)"
        )
    if groups.dtype.kind not in "biuUS":
        raise DataError(
            f"{name}: 'group' has dtype {groups.dtype}; group ids must be integers or strings (equal ids "
            f"for rows of the same item)"
        )


def check_like_train(name: str, split: Mapping[str, np.ndarray], train: Mapping[str, np.ndarray]) -> None:
    """A split has train's features, in train's order, each with train's per-sample shape."""
    if list(split) != list(train):
        raise DataError(
            f"{name}: features {sorted(split)} differ from train's {sorted(train)}; "
            f"every split needs the same features"
        )
    for key, arr in split.items():
        if arr.shape[1:] != train[key].shape[1:]:
            raise DataError(
                f"{name}: feature {key!r} has per-sample shape {arr.shape[1:]} but "
                f"train has {train[key].shape[1:]}"
            )


def check_samples(where: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Raise :class:`DataError` when an array of ``where`` (one file of inputs) has no rows."""
    empty = [k for k, v in arrays.items() if np.ndim(v) >= 1 and np.shape(v)[0] == 0]
    if empty:
        raise DataError(f"{where}: no samples (0 rows in {empty}); give a file with at least one sample")


def check_labels(labels: np.ndarray, task: TaskInfo, n: int, where: str) -> None:
    """Raise :class:`DataError` unless ``labels`` are n class indices / n multi-hot rows of ``task``."""
    y = np.asarray(labels)
    want = (n,) if task.type == "multiclass" else (n, task.num_outputs)
    if y.shape != want:
        raise DataError(f"{where}: 'label' has shape {y.shape}; this {task.type} run expects {want}")
    ok = np.isin(y, np.arange(task.num_outputs)) if task.type == "multiclass" else np.isin(y, (0, 1))
    if not ok.all():
        raise DataError(
            f"{where}: label {y[~ok][0].item()!r} is out of range for this {task.type} run with "
            f"{task.num_outputs} outputs"
        )


def build_feature_data(
    raw: Mapping[str, tuple[Mapping[str, np.ndarray], np.ndarray]],
    length: int,
    pooling: str = "max",
    task_type: str | None = None,
    num_outputs: int | None = None,
    name: str = "data",
    groups: Mapping[str, np.ndarray | None] | None = None,
) -> FeatureData:
    """Validate raw per-split features, labels and groups, pool the features, and infer the task.

    Args:
        raw: ``split -> (features name -> (N, *raw_shape), labels)`` for train, val and test.
        groups: ``split -> (N,)`` group ids (ints or strings) or None, kept as int64 codes
            (:func:`~bmnas.core.data.group_codes`) for grouped cross-validation.
    """
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise DataError(f"{name}: missing split(s) {missing}; need {list(SPLITS)}")
    for split in SPLITS:
        feats, labels = raw[split]
        validate_split(f"{name}/{split}", feats, labels, MIN_ROWS[split])
        check_like_train(f"{name}/{split}", feats, raw["train"][0])
        if (groups or {}).get(split) is not None:
            check_groups(f"{name}/{split}", np.asarray(groups[split]), len(labels))
    codes = group_codes({s: (groups or {}).get(s) for s in SPLITS})
    task = infer_task({s: np.asarray(raw[s][1]) for s in SPLITS}, task_type, num_outputs)
    splits = {}
    for split in SPLITS:
        feats, labels = raw[split]
        pooled = {
            k: pool_feature(torch.as_tensor(native(v)), length, pooling, name=k).numpy()
            for k, v in feats.items()
        }
        y = np.asarray(labels)
        y = y.astype(np.int64) if task.type == "multiclass" else y.astype(np.float32)
        splits[split] = FeatureSplit(pooled, y, codes[split])
    return FeatureData(splits, task, name)


def fingerprint(data: FeatureData) -> dict[str, object]:
    """What a run's results depend on in ``data``: checksums of its sources, features and task.

    The generic format is identified by its files' SHA-256, a registered dataset by its dataset and
    backbone-weights checksums (with L and pooling in the config, they are the feature cache's key);
    anything else by a hash of the arrays themselves.
    """
    info = data.info or {}
    if "files_sha256" in info:
        source: object = dict(info["files_sha256"])
    elif "dataset_sha256" in info:
        source = {"dataset_sha256": info["dataset_sha256"], "weights": dict(info.get("weights", {}))}
    else:
        h = hashlib.sha256()
        for split, sp in data.splits.items():
            grouped = {} if sp.groups is None else {"group": sp.groups}
            for k, v in {**sp.features, "label": sp.labels, **grouped}.items():
                a = np.ascontiguousarray(v)
                h.update(f"{split}/{k}|{a.dtype.str}|{a.shape}|".encode())
                h.update(memoryview(a).cast("B"))
        source = {"arrays_sha256": h.hexdigest()}
    return {
        "source": source,
        "features": {k: [data.feature_lengths[k], data.feature_channels[k]] for k in data.feature_names},
        "sizes": {s: len(sp) for s, sp in data.splits.items()},
        "task": [data.task.type, data.task.num_outputs],
    }


def check_searchable(data: FeatureData) -> None:
    """A search fuses pairs of features: it needs at least two."""
    if len(data.feature_names) < 2:
        raise DataError(
            f"{data.name}: a search needs at least 2 features (each Cell fuses two inputs), the data has "
            f"{list(data.feature_names)}; add features, or widen data.features"
        )
