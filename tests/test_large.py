"""Data larger than memory: the generic format as a folder of ``.npy`` files per split.

The same data as ``.npz`` files and as ``.npy`` folders must give identical pooled features and an
identical search; pooling runs chunk by chunk into the feature cache; values are checked chunk by
chunk; an optional ``class_names`` array names the classes of a ``--data`` run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bmnas.cli.main import main
from bmnas.core.errors import DataError
from bmnas.features.generic import load_generic_dir
from bmnas.features.pooling import chunk_rows, pool_chunks, pool_feature
from helpers import FAST, write_generic


def npz_to_npy_dir(src: Path, dst: Path, dtype=None) -> Path:
    """The same arrays as ``dst/<split>/<name>.npy`` (features cast to ``dtype`` when given)."""
    for split in ("train", "val", "test"):
        folder = dst / split
        folder.mkdir(parents=True)
        with np.load(src / f"{split}.npz") as z:
            for name in z.files:
                arr = z[name]
                if dtype is not None and name not in ("label", "class_names"):
                    arr = arr.astype(dtype)
                np.save(folder / f"{name}.npy", arr)
    return dst


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pooling_in_chunks_equals_pooling_at_once(mode):
    rng = np.random.default_rng(0)
    for shape in [(13, 5), (13, 4, 11), (13, 3, 7, 6), (13, 2, 5, 3, 3), (13, 3, 2)]:
        x = rng.normal(size=shape).astype(np.float32)
        whole = pool_feature(torch.from_numpy(x), 4, mode).numpy()
        seen = []
        chunked = pool_chunks(
            x, 4, mode, rows=3, on_chunk=lambda c, first, seen=seen: seen.append((first, len(c)))
        )
        assert np.array_equal(chunked, whole)  # bit for bit
        assert seen == [(0, 3), (3, 3), (6, 3), (9, 3), (12, 1)]
    assert chunk_rows((100, 512, 196), budget=4 * 512 * 196 * 10) == 10 and chunk_rows((1, 10**9)) == 1


def sorted_npz(root: Path) -> Path:
    """The npz files with their features in name order, the order of a folder of .npy files."""
    for split in ("train", "val", "test"):
        z = dict(np.load(root / f"{split}.npz"))
        np.savez(root / f"{split}.npz", **{k: z[k] for k in sorted(z)})
    return root


def test_npz_and_npy_dir_give_identical_features_and_search(tmp_path):
    npz = sorted_npz(write_generic(tmp_path / "npz"))
    npy = npz_to_npy_dir(npz, tmp_path / "npy")
    a = load_generic_dir(npz, 4)
    b = load_generic_dir(npy, 4, cache=tmp_path / "cache")
    assert a.task == b.task and list(a.feature_names) == sorted(a.feature_names) == list(b.feature_names)
    for split in ("train", "val", "test"):
        assert np.array_equal(a[split].labels, b[split].labels)
        for k in a.feature_names:
            assert isinstance(b[split].features[k], np.memmap)  # served from the feature cache
            assert np.array_equal(a[split].features[k], b[split].features[k]), (split, k)
    again = load_generic_dir(npy, 4, cache=tmp_path / "cache")
    assert again.info["cache_dirs"] == b.info["cache_dirs"] and len(b.info["cache_dirs"]) == 3
    genotypes = []
    for name, data in (("a", npz), ("b", npy)):
        out = tmp_path / f"run-{name}"
        assert (
            main(["search", "--data", str(data), "--out", str(out), "--cache", str(tmp_path / "c"), *FAST])
            == 0
        )
        genotypes.append(json.loads((out / "genotype.json").read_text()))
        history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
        genotypes.append([h.get("train_loss") for h in history])
    assert genotypes[0] == genotypes[2] and genotypes[1] == genotypes[3]


def test_fp16_maps_are_pooled_as_float32_of_the_fp16_values(tmp_path):
    npz = write_generic(tmp_path / "npz")
    npy = npz_to_npy_dir(npz, tmp_path / "npy", dtype=np.float16)
    got = load_generic_dir(npy, 4)["train"].features["image.map"]
    with np.load(npz / "train.npz") as z:
        want = pool_feature(torch.from_numpy(z["image.map"].astype(np.float16)), 4).numpy()
    assert got.dtype == np.float32 and np.array_equal(got, want)


def test_a_nan_deep_in_a_memory_mapped_feature_is_named_with_its_row(tmp_path, monkeypatch):
    npy = npz_to_npy_dir(write_generic(tmp_path / "npz"), tmp_path / "npy")
    arr = np.load(npy / "train" / "audio.seq.npy")
    arr[37, 1, 4] = np.nan
    np.save(npy / "train" / "audio.seq.npy", arr)
    monkeypatch.setattr("bmnas.features.pooling.CHUNK_BYTES", 4 * 3 * 11 * 5)  # chunks of 5 rows
    with pytest.raises(DataError, match=r"audio\.seq.*1 NaN/inf values in this chunk \(first in sample 37\)"):
        load_generic_dir(npy, 4, cache=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.npy"))  # nothing half-written is left in the cache


def test_npy_dir_shape_mismatch_and_mixed_layouts_are_refused(tmp_path):
    npy = npz_to_npy_dir(write_generic(tmp_path / "npz"), tmp_path / "npy")
    np.save(npy / "val" / "image.vec.npy", np.zeros((12, 6), np.float32))
    with pytest.raises(
        DataError, match=r"val: feature 'image\.vec' has per-sample shape \(6,\) but train has \(7,\)"
    ):
        load_generic_dir(npy, 4)
    (npy / "val.npz").write_bytes(b"")
    with pytest.raises(DataError, match="both .npz files and split folders"):
        load_generic_dir(npy, 4)
    (npy / "val.npz").unlink()
    (npy / "test" / "label.npy").unlink()
    with pytest.raises(DataError, match=r"test/label\.npy: missing"):
        load_generic_dir(npy, 4)


def test_class_names_of_the_generic_format_reach_predict_and_show(tmp_path, capsys):
    data = write_generic(tmp_path / "d")
    z = dict(np.load(data / "train.npz"))
    np.savez(data / "train.npz", class_names=np.array(["red", "green", "blue"]), **z)
    assert load_generic_dir(data, 4).info["class_names"] == ["red", "green", "blue"]
    out = tmp_path / "run"
    assert main(["run", "--data", str(data), "--out", str(out), "--no-baselines", *FAST]) == 0
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    assert "classes (3): red, green, blue" in capsys.readouterr().out
    preds = tmp_path / "p.jsonl"
    assert main(["predict", str(out), "--split", "test", "--out", str(preds), "--quiet"]) == 0
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert {r["prediction"] for r in rows} <= {"red", "green", "blue"} and set(rows[0]["probabilities"]) == {
        "red",
        "green",
        "blue",
    }
    exported = tmp_path / "e"
    assert main(["export", "--data", str(data), "--out", str(exported), "--quiet", "--set", "model.L=4"]) == 0
    with np.load(exported / "train.npz") as e:
        assert e["class_names"].tolist() == ["red", "green", "blue"]
    assert load_generic_dir(exported, 4).info["class_names"] == ["red", "green", "blue"]
    np.savez(data / "train.npz", class_names=np.array(["red", "green"]), **z)
    with pytest.raises(DataError, match="'class_names' has 2 names but the labels have 3 classes"):
        load_generic_dir(data, 4)
