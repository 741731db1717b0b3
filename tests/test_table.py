"""Tables in: a CSV (or a DataFrame) of image paths, captions, numbers and class names -> a run.

The README's "Your own data" example runs as written on a tiny generated table (a few dozen PNGs
written with Pillow, short captions), with small stand-in backbones in place of EfficientNet-Lite0
and MiniLM (one slow test uses the real ones).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bmnas
from bmnas.cli.main import main
from bmnas.core.errors import DataError
from bmnas.features import table as tb
from bmnas.features.backbones.base import Backbone
from bmnas.serve.export import read_metadata
from helpers import FAST, PHOTO_CLASSES, table_stand_in, write_photos

CLASSES = PHOTO_CLASSES
CALLS = {"image": 0, "text": 0}


def tiny_backbone(kind: str, modality: str, *_args) -> Backbone:
    """:func:`helpers.table_stand_in`, counted."""
    CALLS[kind] += 1
    return table_stand_in(kind, modality)


STAND_INS = {"image": lambda m: tiny_backbone("image", m), "text": lambda m: tiny_backbone("text", m)}


def readme_commands() -> list[list[str]]:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    start = text.index("<!-- example: your own data")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)
    lines = [ln.split("#")[0].strip() for ln in block.splitlines()]
    return [shlex.split(ln)[1:] for ln in lines if ln.startswith("bmnas ")]


def test_the_readme_example_runs_on_a_tiny_table(tmp_path, monkeypatch, capsys):
    write_photos(tmp_path)
    pd.read_csv(tmp_path / "photos.csv").drop(columns=["label"])[:4].to_csv(tmp_path / "new.csv", index=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tb, "default_backbone", tiny_backbone)
    commands = readme_commands()
    assert [c[0] for c in commands] == ["run", "predict", "export-model", "predict"] and len(commands) <= 10
    cache = ["--cache", str(tmp_path / "cache")]
    run_extra = [*FAST, "--set", "search.rerank=2", "--set", "train.select_folds=0", *cache]
    CALLS.update(image=0, text=0)
    for argv in commands:
        extra = run_extra if argv[0] == "run" else ["--quiet", *cache]
        assert main([*argv, *extra]) == 0, argv
    # run, predict: the same cached features; export-model: the image backbone; predict --table: both
    assert CALLS == {"image": 4, "text": 3}
    assert len(pd.read_csv(tmp_path / "new_preds.csv")) == 4
    split = pd.read_csv(tmp_path / "runs" / "photos" / "split.csv")
    assert list(split["row"]) == list(range(36))
    sizes = split["split"].value_counts().to_dict()
    assert sizes == {"train": 26, "val": 5, "test": 5}
    labels = pd.read_csv("photos.csv")["label"]
    for s in ("train", "val", "test"):  # stratified: every class in every split
        assert set(labels[split["split"] == s]) == set(CLASSES)
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert len(preds) == 5 and set(preds["prediction"]) <= set(CLASSES)
    assert [c for c in preds.columns if c.startswith("prob_")] == [f"prob_{c}" for c in CLASSES]
    assert list(preds["label"]) == list(labels[split["split"] == "test"])
    metrics = json.loads((tmp_path / "runs" / "photos" / "metrics.json").read_text())
    assert (
        metrics["data"]["info"]["class_names"] == list(CLASSES)
        and "split_rows" not in metrics["data"]["info"]
    )
    assert set(metrics["data"]["info"]["modalities"]) == {"path", "caption"}
    assert read_metadata(tmp_path / "photos.pt")["class_names"] == list(CLASSES)
    capsys.readouterr()
    assert main(["show", "runs/photos"]) == 0
    assert "classes (3): cat, dog, eel" in capsys.readouterr().out


def test_a_dataframe_in_python_gives_features_class_names_and_a_cached_rerun(tmp_path):
    csv = write_photos(tmp_path)
    df = pd.read_csv(csv)
    df["path"] = [str(tmp_path / p) for p in df["path"]]  # a DataFrame reads relative paths from the cwd
    df["age"] = np.arange(36, dtype=float)
    df["height"] = np.linspace(0, 1, 36)
    cfg = bmnas.Config.from_sources(None, ["data.label=label", "model.L=4"])
    CALLS.update(image=0, text=0)
    data = bmnas.load_data(
        cfg, tmp_path / "cache", False, table=df, backbone_options={"backbones": STAND_INS}
    )
    assert data.feature_names == ("numeric.values", "path.conv", "path.pool", "caption.fc")
    assert data.info["class_names"] == list(CLASSES) and data.task.type == "multiclass"
    assert data["train"].features["numeric.values"].shape == (26, 1, 2)
    assert data["train"].features["path.conv"].shape == (26, 4, 4)  # 6×6 conv map pooled to L = 4
    assert data.info["cache_hit"] is False
    other_seed = cfg.replace(seed=3)
    again = bmnas.load_data(
        other_seed, tmp_path / "cache", False, table=df, backbone_options={"backbones": STAND_INS}
    )
    assert again.info["cache_hit"] is True  # another split of the same table extracts nothing
    assert again.info["split_rows"] != data.info["split_rows"]
    whole = np.concatenate([data[s].features["path.pool"] for s in ("train", "val", "test")])
    rows = np.concatenate([data.info["split_rows"][s] for s in ("train", "val", "test")])
    reordered = np.concatenate([again[s].features["path.pool"] for s in ("train", "val", "test")])
    rows2 = np.concatenate([again.info["split_rows"][s] for s in ("train", "val", "test")])
    assert np.array_equal(whole[np.argsort(rows)], reordered[np.argsort(rows2)])


def test_numeric_columns_by_rule_a_given_split_and_integer_labels_from_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(1)
    n = 60
    y = np.arange(n) % 2
    df = pd.DataFrame({f"px_{i}": rng.normal(size=n) + y for i in range(3)})
    df["age"], df["height"] = rng.normal(size=n) - y, rng.normal(size=n)
    df["id"] = [f"sample-{i}" for i in range(n)]  # not named by a rule: not used
    df["y"] = y * 7 + 1  # classes 1 and 8
    df["split"] = ["train"] * 40 + ["val"] * 10 + ["test"] * 10
    df.to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "run"
    argv = ["run", "--table", str(tmp_path / "t.csv"), "--label", "y", "--modality", "pix=px_*"]
    argv += ["--modality", "meta=age,height", "--out", str(out), "--no-baselines", *FAST]
    assert main([*argv, "--cache", str(tmp_path / "c")]) == 0
    split = pd.read_csv(out / "split.csv")
    assert list(split["split"]) == list(df["split"])  # used as given
    metrics = json.loads((out / "metrics.json").read_text())
    info = metrics["data"]["info"]
    assert info["class_names"] == ["1", "8"] and info["split"]["how"] == "splits as given by the split column"
    assert info["modalities"] == {
        "pix": {"kind": "vector", "columns": ["px_0", "px_1", "px_2"]},
        "meta": {"kind": "vector", "columns": ["age", "height"]},
    }
    assert metrics["data"]["sizes"] == {"train": 40, "val": 10, "test": 10}


def test_a_delimited_multilabel_column_and_its_split_by_the_rarest_label(tmp_path):
    rng = np.random.default_rng(2)
    n = 80
    tags = ["comedy|drama" if i % 4 == 0 else ("drama" if i % 4 == 1 else "action") for i in range(n)]
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "genres": tags})
    data = tb.table_features(df, "genres", label_sep="|", length=1, root=tmp_path)
    assert data.task.type == "multilabel" and data.info["class_names"] == ["action", "comedy", "drama"]
    y = np.concatenate([data[s].labels for s in ("train", "val", "test")])
    assert y.shape == (n, 3) and y.sum(axis=0).tolist() == [40, 20, 40]
    for s in ("val", "test"):  # stratified by the rarest label: comedy rows in every split
        assert data[s].labels[:, 1].sum() >= 2
    # the split is seeded: the same seed gives the same rows
    again = tb.table_features(df, "genres", label_sep="|", length=1, root=tmp_path)
    assert again.info["split_rows"] == data.info["split_rows"]


def test_a_parquet_table_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    real = tb.optional

    def no_pyarrow(module, needs, install):
        if module == "pyarrow":
            raise bmnas.core.errors.MissingDependencyError(f"{needs} needs pyarrow: {install}")
        return real(module, needs, install)

    monkeypatch.setattr(tb, "optional", no_pyarrow)
    with pytest.raises(
        bmnas.core.errors.MissingDependencyError, match=r"needs pyarrow: pip install 'bmnas\[table\]'"
    ):
        tb.read_table(tmp_path / "t.parquet")


def test_column_kinds_are_inferred():
    df = pd.DataFrame({"n": [1.0, 2.0], "b": [True, False], "p": ["a.png", "b.JPG"], "t": ["a.png", "hello"]})
    assert [tb.column_kind(df[c]) for c in df] == ["vector", "vector", "image", "text"]
    assert tb.modality_name("my col(2)") == "my_col_2" and tb.modality_name("3d") == "m_3d"
    with pytest.raises(DataError, match="no column of t starts with 'q'"):
        tb.parse_rules(["x=q*"], list(df.columns), "t")


@pytest.mark.slow
def test_the_real_backbones_read_a_tiny_table(tmp_path):
    """EfficientNet-Lite0 and MiniLM on 12 images (64×64) and captions (about 20 s on a loaded CPU)."""
    csv = write_photos(tmp_path, n=12)
    data = tb.table_features(csv, "label", length=4, root=tmp_path / "cache", image_size=64)
    assert {n.split(".")[0] for n in data.feature_names} == {"path", "caption"}
    assert data["train"].features["caption.layer6"].shape[-1] == 384
    assert data["train"].features["path.head"].shape[-1] == 1280


def test_bmnas_run_takes_a_dataframe(tmp_path, monkeypatch):
    monkeypatch.setenv("BMNAS_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(3)
    y = np.arange(48) % 2
    df = pd.DataFrame({"a": rng.normal(size=48) + y, "b": rng.normal(size=48) - y})
    df["label"] = np.where(y == 1, "yes", "no")
    sets = ["data.label=label", "data.modalities=[x=a,z=b]", "search.epochs=1", "train.epochs=1", "model.C=8"]
    cfg = bmnas.Config.from_sources(None, [*sets, "train.select_folds=0", "search.rerank=0"])
    report = bmnas.run(df, cfg, tmp_path / "run", baselines=False, progress=False)
    assert set(report.rows) == {"searched"}
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    assert split["split"].value_counts().to_dict() == {"train": 34, "val": 7, "test": 7}
    info = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]["info"]
    assert info["class_names"] == ["no", "yes"] and list(info["modalities"]) == ["x", "z"]


def test_a_missing_val_split_is_carved_from_train_only_stratified_and_seeded():
    y = np.arange(60) % 3
    given = np.array(["train"] * 45 + ["test"] * 15, dtype=object)
    split, how = tb.assign_splits(y, given, seed=5)
    assert list(split[45:]) == ["test"] * 15  # the given test rows stay
    val = np.flatnonzero(split == "val")
    assert val.size == 9 and val.max() < 45 and np.bincount(y[val]).tolist() == [3, 3, 3]
    assert how == "carved val (9 rows, stratified) from the split column's train rows with seed 5"
    assert np.array_equal(tb.assign_splits(y, given, seed=5)[0], split)
    assert not np.array_equal(tb.assign_splits(y, given, seed=6)[0], split)
    with pytest.raises(DataError, match="too few to carve a test split"):
        tb.assign_splits(np.array([0, 1, 0]), None)


def _label_deviation(y: np.ndarray, split: np.ndarray) -> np.ndarray:
    """``|rows of label l in split s - n_l · |s| / N|`` for each split (rows) and label (columns)."""
    return np.stack(
        [np.abs(y[split == s].sum(0) - y.sum(0) * (split == s).sum() / len(y)) for s in tb.SPLITS]
    )


def test_multilabel_splits_are_iteratively_stratified_within_a_row_of_each_labels_share():
    rng = np.random.default_rng(0)
    y = (rng.random((100, 5)) < [0.6, 0.5, 0.4, 0.3, 0.1]).astype(np.float32)
    assert y.sum(0).tolist() == [55, 54, 30, 32, 9]
    split, how = tb.assign_splits(y, None, seed=0)
    assert how == (
        "carved test (15 rows, iteratively stratified) and val (15 rows, iteratively stratified) "
        "from the table with seed 0"
    )
    assert [int((split == s).sum()) for s in tb.SPLITS] == [70, 15, 15]
    new = _label_deviation(y, split)
    assert new.max() < 1.0 and round(float(new.max()), 2) == 0.7  # every label's share, to a row
    # stratifying by the rarest label alone (what multilabel tables used before) is off by 2.8 rows
    old = np.array(["train"] * 100, dtype=object)
    for name in ("test", "val"):
        _, carved, _ = tb._carve(np.flatnonzero(old == "train"), tb.strata_of(y), 15, 0)
        old[carved] = name
    assert round(float(_label_deviation(y, old).max()), 2) == 2.8
    assert np.array_equal(tb.assign_splits(y, None, seed=0)[0], split)  # seeded


def test_iterative_split_gives_exact_sizes_and_deals_unlabelled_rows():
    y = np.zeros((10, 2))
    y[:4, 0] = 1
    part = tb.iterative_split(y, (6, 4), seed=3)
    assert np.bincount(part).tolist() == [6, 4] and np.bincount(part[:4]).tolist() == [2, 2]
    with pytest.raises(ValueError, match="sum to the 10 rows"):
        tb.iterative_split(y, (6, 3))
