"""Grouped, stratified k-fold selection: groups never straddle folds, classes are spread evenly,
repeated rows without groups are warned about, and the generic format carries ``group``."""

import json
import logging

import numpy as np
import pytest

from bmnas.cli.main import main
from bmnas.core.data import FeatureData, FeatureSplit, TaskInfo, group_codes, merge_splits
from bmnas.core.errors import DataError
from bmnas.engine.folds import fold_parts, kfold
from bmnas.features.generic import export_generic_dir, load_generic_dir, read_npz

N = {"train": 120, "val": 60, "test": 20}


def grouped_data(groups=True, classes=3, multilabel=False, repeat=1, seed=0) -> FeatureData:
    """Rows of ``N // repeat`` items, each item ``repeat`` times (identical features, one group)."""
    rng = np.random.default_rng(seed)
    splits, offset = {}, 0
    for split, n in N.items():
        items = n // repeat
        item = np.repeat(np.arange(items), repeat)
        x = rng.normal(size=(items, 1, 4)).astype(np.float32)[item]
        y = (
            (rng.random((items, 4)) > 0.5).astype(np.float32)[item]
            if multilabel
            else rng.integers(0, classes, items)[item]
        )
        splits[split] = FeatureSplit({"a.x": x, "b.x": x + 1}, y, item + offset if groups else None)
        offset += items
    task = TaskInfo("multilabel", 4) if multilabel else TaskInfo("multiclass", classes)
    return FeatureData(splits, task, "grouped")


def random_groups(seed=0) -> FeatureData:
    """Groups of 1 to 4 rows with random labels (a group's rows may disagree, as in match tasks)."""
    rng = np.random.default_rng(seed)
    splits, offset = {}, 0
    for split, n in N.items():
        g = np.sort(rng.integers(0, n // 2, n)) + offset
        offset += n
        splits[split] = FeatureSplit(
            {"a.x": rng.normal(size=(n, 1, 3)).astype(np.float32)}, rng.integers(0, 2, n), g
        )
    return FeatureData(splits, TaskInfo("multiclass", 2), "random-groups")


@pytest.mark.parametrize(
    "make", [lambda: grouped_data(repeat=3), random_groups, lambda: grouped_data(multilabel=True, repeat=2)]
)
def test_rows_of_one_group_never_straddle_folds_and_every_row_is_held_out_once(make):
    data = make()
    folds = kfold(data, 3, seed=0)
    pool = np.concatenate([data["train"].groups, data["val"].groups])
    held = np.concatenate([f["val"].groups for f in folds])
    assert sorted(held.tolist()) == sorted(pool.tolist())  # a partition of train ∪ val
    for f in folds:
        assert not set(f["train"].groups) & set(f["val"].groups)
        assert len(f["train"]) + len(f["val"]) == len(pool) and f["test"] is data["test"]
    assert [len(f["val"]) for f in folds] != [0, 0, len(pool)]


def test_backbones_fit_on_train_make_the_folds_score_val_rows_only():
    base = grouped_data(repeat=3)
    data = FeatureData(base.splits, base.task, base.name, {"backbones_fit_on_train": ["avmnist-image"]})
    folds = kfold(data, 3, seed=0)
    train, val = data["train"], data["val"]
    held = np.concatenate([f["val"].groups for f in folds])
    assert sorted(held.tolist()) == sorted(val.groups.tolist())  # each val row scored exactly once
    for f in folds:
        assert set(train.groups) <= set(f["train"].groups)  # every train row trains every fold
        assert not set(f["train"].groups) & set(f["val"].groups)
        assert len(f["train"]) == len(train) + len(val) - len(f["val"])
    plain = kfold(base, 3, seed=0)  # without the flag: train rows are scored too
    assert sum(len(f["val"]) for f in plain) == len(train) + len(val)


def test_folds_without_groups_are_stratified_to_within_one_row_per_class():
    rng = np.random.default_rng(1)
    labels = rng.choice(4, size=203, p=[0.55, 0.25, 0.15, 0.05])
    parts = fold_parts(labels, None, 5, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(203))
    total = np.bincount(labels, minlength=4)
    for p in parts:
        counts = np.bincount(labels[p], minlength=4)
        assert (np.abs(counts - total / 5) <= 1).all(), (counts, total / 5)
    # plain shuffling would not: the same seed's permutation cut in 5 misses a class by more
    plain = np.array_split(np.random.default_rng(0).permutation(203), 5)
    assert max(np.abs(np.bincount(labels[p], minlength=4) - total / 5).max() for p in plain) > 1


def test_grouped_folds_are_stratified_as_far_as_the_groups_allow():
    data = grouped_data(repeat=2, classes=2)
    for f in kfold(data, 3, seed=0):
        share = f["val"].labels.mean()
        pool = np.concatenate([data["train"].labels, data["val"].labels]).mean()
        assert abs(share - pool) < 0.05


def test_repeated_rows_without_groups_are_warned_about_and_groups_silence_it(caplog):
    with caplog.at_level(logging.WARNING, logger="bmnas.engine.folds"):
        kfold(grouped_data(groups=False, repeat=2), 3, seed=0)
    assert "repeat their a.x values in another fold" in caplog.text and "'group' array" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bmnas.engine.folds"):
        kfold(grouped_data(groups=True, repeat=2), 3, seed=0)
        kfold(grouped_data(groups=False, repeat=1), 3, seed=0)
    assert caplog.text == ""


def test_too_few_groups_for_k_folds_is_a_clear_error():
    with pytest.raises(
        ValueError, match="5-fold cross-validation needs at least 5 groups, train ∪ val has 3"
    ):
        fold_parts(np.arange(6) % 2, np.array([0, 0, 1, 1, 2, 2]), 5, seed=0)


def test_group_codes_are_shared_across_splits_and_merge_keeps_them():
    codes = group_codes(
        {"train": np.array(["anna", "bob", "anna"]), "val": np.array(["bob", "cy"]), "test": None}
    )
    assert codes["train"].tolist() == [0, 1, 0] and codes["val"].tolist() == [1, 2] and codes["test"] is None
    a = FeatureSplit({"a.x": np.zeros((3, 1, 1), np.float32)}, np.zeros(3, np.int64), codes["train"])
    b = FeatureSplit({"a.x": np.zeros((2, 1, 1), np.float32)}, np.zeros(2, np.int64))
    assert merge_splits(a, b).groups.tolist() == [0, 1, 0, -4, -5]  # ungrouped rows: one group each
    with pytest.raises(DataError, match=r"groups have shape \(2,\) but the split has 3 rows"):
        FeatureSplit(a.features, a.labels, np.zeros(2, np.int64))


def _write(root, groups):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in N.items():
        extra = {} if groups is None else {"group": groups(split, n)}
        np.savez(
            root / f"{split}.npz",
            label=rng.integers(0, 2, n),
            **{"a.x": rng.normal(size=(n, 3)), "b.y": rng.normal(size=(n, 2))},
            **extra,
        )
    return root


def test_the_generic_format_reads_int_or_str_groups_and_exports_them(tmp_path):
    data = load_generic_dir(
        _write(tmp_path / "s", lambda s, n: np.array([f"{s}{i // 3:03d}" for i in range(n)])), length=1
    )
    assert np.diff(data["train"].groups[:7]).tolist() == [0, 0, 1, 0, 0, 1]  # "train0" ×3, "train1" ×3, …
    assert data["test"].groups is not None
    assert not set(data["train"].groups) & set(data["val"].groups)
    ints = load_generic_dir(_write(tmp_path / "i", lambda s, n: np.arange(n) // 2), length=1)
    assert (
        ints["val"].groups.tolist() == ints["train"].groups[:60].tolist()
    )  # equal ids in train and val: one item
    again = load_generic_dir(export_generic_dir(data, tmp_path / "e"), length=1)
    np.testing.assert_array_equal(again["val"].groups, data["val"].groups)
    assert "group" not in read_npz(tmp_path / "e" / "val.npz")[0]  # never taken for a feature
    assert load_generic_dir(_write(tmp_path / "n", None), length=1)["train"].groups is None


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        (lambda s, n: np.arange(n - 1), r"grouped/val: 'group' has shape \(59,\) but 'label' has 60 rows"),
        (
            lambda s, n: np.linspace(0, 1, n),
            r"grouped/val: 'group' has dtype float64; group ids must be integers or strings",
        ),
    ],
)
def test_a_bad_group_array_is_reported_with_its_split_and_fix(tmp_path, groups, message):
    root = _write(tmp_path / "grouped", lambda s, n: groups(s, n) if s == "val" else np.arange(n))
    with pytest.raises(DataError, match=message):
        load_generic_dir(root, length=1)


def test_cli_search_reranks_on_grouped_folds_of_generic_data_with_a_group_array(tmp_path, caplog):
    rng = np.random.default_rng(0)
    root = tmp_path / "d"
    root.mkdir()
    for split, n in N.items():
        item = np.arange(n) // 2  # every item twice, identical features
        y = rng.integers(0, 2, n // 2)[item]
        x = {
            "a.x": rng.normal(size=(n // 2, 3))[item] + y[:, None],
            "b.y": rng.normal(size=(n // 2, 2))[item],
        }
        np.savez(root / f"{split}.npz", label=y, group=item + 1000 * len(split), **x)
    sets = [
        "search.epochs=1",
        "search.rerank=2",
        "search.batch_size=32",
        "model.C=8",
        "model.L=1",
        "train.epochs=2",
        "train.select_folds=2",
    ]
    args = ["search", "--data", str(root), "--out", str(tmp_path / "run"), "--quiet"]  # re-ranks on folds
    with caplog.at_level(logging.WARNING, logger="bmnas.engine.folds"):
        assert main([*args, *(a for s in sets for a in ("--set", s))]) == 0
    assert "repeat their" not in caplog.text
    assert [
        json.loads(line)["folds"] for line in (tmp_path / "run" / "rerank.jsonl").read_text().splitlines()
    ] == [2, 2]
