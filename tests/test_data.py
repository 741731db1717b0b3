"""Input validation: bad data is refused with a clear message before any training starts."""

import numpy as np
import pytest
import torch

from bmnas.cli.main import main
from bmnas.core.config import Config, ConfigError
from bmnas.core.errors import DataError
from bmnas.features.generic import export_generic_dir, generic_layout, load_generic_dir, read_npz, write_npz
from bmnas.features.pooling import grid_for, pool_feature
from bmnas.features.synthetic import planted_interaction
from bmnas.features.validate import infer_task
from helpers import corrupt, write_generic


def test_pooling_shapes_and_values():
    assert grid_for(8) == (2, 4) and grid_for(8, 10, 3) == (4, 2) and grid_for(16) == (4, 4)
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).view(2, 3, 8)
    out = pool_feature(x, 4)
    assert out.shape == (2, 4, 3)  # channels last
    assert torch.equal(out[0, :, 0], torch.tensor([1.0, 3.0, 5.0, 7.0]))  # max over pairs
    short = pool_feature(torch.tensor([[[0.0, 3.0]]]), 4)  # T=2 < L=4: linear interpolation
    assert torch.allclose(short[0, :, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert pool_feature(torch.ones(5, 7), 4).shape == (5, 1, 7)  # vectors are not copied
    m = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(pool_feature(m, 4)[0, :, 0], torch.tensor([5.0, 7.0, 13.0, 15.0]))
    v = torch.zeros(1, 1, 6, 2, 2)
    v[0, 0, 3, 1, 1] = 9.0
    assert pool_feature(v, 3)[0, :, 0].tolist() == [0.0, 9.0, 0.0]


def test_generic_format_loads_pools_and_round_trips(tmp_path):
    data = load_generic_dir(write_generic(tmp_path / "d"), length=4)
    assert data.task.type == "multiclass" and data.task.num_outputs == 3
    assert data.feature_lengths == {"image.map": 4, "image.vec": 1, "audio.seq": 4, "audio.video": 4}
    assert data.feature_channels == {"image.map": 4, "image.vec": 7, "audio.seq": 3, "audio.video": 2}
    assert data.modalities == ("image", "audio")
    again = load_generic_dir(export_generic_dir(data, tmp_path / "e"), length=4)
    for s in ("train", "val", "test"):
        for k in data.feature_names:
            assert np.array_equal(data[s].features[k], again[s].features[k])


def test_multilabel_is_inferred(tmp_path):
    data = load_generic_dir(write_generic(tmp_path / "d", multilabel=True), length=4)
    assert data.task.type == "multilabel" and data.task.num_outputs == 4
    assert data["train"].labels.dtype == np.float32


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda r: corrupt(r, "val", **{"image.vec": np.ones((5, 7), np.float32)}),
            r"val: feature 'image.vec' has 5 samples but 'label' has 12",
        ),
        (
            lambda r: corrupt(r, "train", **{"audio.seq": np.full((40, 3, 11), np.nan, np.float32)}),
            r"train: feature 'audio.seq' has 1320 NaN/inf values",
        ),
        (
            lambda r: corrupt(r, "test", label=np.array([0, 1, 2, 7] + [0] * 8)),
            r"split 'test': label 7 at row 3 is out of range \[0, 3\) .* inferred from train's labels",
        ),  # a test label beyond train's classes is refused, not a wider class range
        (
            lambda r: corrupt(r, "test", label=np.array([0, -1] + [0] * 10)),
            r"test': label -1 at row 1 is out of range",
        ),
        (lambda r: (r / "val.npz").unlink(), r"val.npz: missing"),
        (lambda r: corrupt(r, "test", **{"image.vec": None}), r"test: features .* differ from train's"),
        (
            lambda r: corrupt(r, "val", **{"image.map": np.ones((12, 4, 6, 6), np.float32)}),
            r"val: feature 'image.map' has per-sample shape \(4, 6, 6\) but train has \(4, 6, 5\)",
        ),
        (
            lambda r: corrupt(r, "train", **{"image": np.ones((40, 3), np.float32)}),
            r"array 'image' is not a feature name",
        ),
    ],
)
def test_bad_input_is_named(tmp_path, damage, message):
    root = write_generic(tmp_path / "d")
    damage(root)
    with pytest.raises(DataError, match=message):
        load_generic_dir(root, 4)


def test_label_out_of_declared_range():
    with pytest.raises(DataError, match=r"label 3 at row 1 is out of range \[0, 3\)"):
        infer_task({"train": np.array([0, 3]), "val": np.array([0]), "test": np.array([1])}, num_outputs=3)
    with pytest.raises(DataError, match=r"multi-hot label \[0, 1\] = 2"):
        infer_task({"train": np.array([[0, 2]]), "val": np.array([[0, 1]]), "test": np.array([[1, 1]])})


def test_cli_refuses_bad_data_before_training(tmp_path, capsys):
    root = write_generic(tmp_path / "d")
    corrupt(root, "train", **{"audio.seq": np.full((40, 3, 11), np.inf, np.float32)})
    rc = main(["run", "--data", str(root), "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "train: feature 'audio.seq'" in err and "NaN/inf" in err
    assert not (tmp_path / "run" / "search.ckpt.pt").exists()


def test_unknown_op_and_config_keys_are_refused(tmp_path, capsys):
    root = write_generic(tmp_path / "d")
    rc = main(
        ["search", "--data", str(root), "--out", str(tmp_path / "r"), "--set", "model.ops=[sum,atention]"]
    )
    assert rc == 2 and "unknown op 'atention'" in capsys.readouterr().err
    unknown = r"unknown key\(s\) \['epoch'\] \(did you mean 'epochs'\?\); valid keys"
    with pytest.raises(ConfigError, match=unknown):
        Config.from_sources(None, ["search.epoch=3"])
    with pytest.raises(ConfigError, match="model.C: expected int, got 'big'"):
        Config.from_sources(None, ["model.C=big"])


def test_planted_data_is_deterministic():
    a, b = planted_interaction(n=100, seed=5), planted_interaction(n=100, seed=5)
    assert np.array_equal(a["train"].features["a.f2"], b["train"].features["a.f2"])
    assert [len(a[s]) for s in ("train", "val", "test")] == [70, 15, 15]


def test_the_one_npz_reader_and_writer(tmp_path):
    """read_npz/write_npz serve --data DIR, predict's FILE.npz and every writer of the format."""
    y, feats = np.array([2, 0, 1]), {"image.vec": np.arange(6.0).reshape(3, 2)}
    path = write_npz(tmp_path / "s.npz", y, feats)
    with np.load(path) as z:
        assert z.files == ["label", "image.vec"]  # label first, then the features in order
    got, labels = read_npz(path)
    assert labels.tolist() == [2, 0, 1] and got.keys() == feats.keys()
    np.testing.assert_array_equal(got["image.vec"], feats["image.vec"])
    np.savez(tmp_path / "unlabelled.npz", **feats)
    assert read_npz(tmp_path / "unlabelled.npz")[1] is None
    with pytest.raises(DataError, match=r"nope.npz: no such file"):
        read_npz(tmp_path / "nope.npz")
    (tmp_path / "f.csv").write_text("a\n")
    with pytest.raises(DataError, match=r"f.csv: expected a .npz file of the generic format"):
        read_npz(tmp_path / "f.csv")
    with open(tmp_path / "one.npz", "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataError, match=r"one.npz: a single .npy array, not an .npz archive.*numpy.savez"):
        read_npz(tmp_path / "one.npz")
    # pooled (N, L, C) features are stored channels first, vectors as (N, C): a reload gives them back
    pooled = {"a.seq": np.arange(24.0).reshape(2, 4, 3), "a.vec": np.ones((2, 1, 5))}
    stored = generic_layout(pooled)
    assert stored["a.seq"].shape == (2, 3, 4) and stored["a.vec"].shape == (2, 5)
    np.testing.assert_array_equal(pool_feature(torch.as_tensor(stored["a.seq"]), 4).numpy(), pooled["a.seq"])
