"""dataset name -> FeatureData: cache reuse and invalidation on a toy dataset, AV-MNIST end to end."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

import bmnas.features.extract
from bmnas.core.data import FeatureData
from bmnas.features.backbones.base import Backbone, register_backbones
from bmnas.features.datasets.base import RawDataset, RawSplit, register_dataset
from bmnas.features.pipeline import dataset_features, default_root, prepare_backbones

SIZES = {"train": 12, "val": 5, "test": 7}


def _toy_dataset(root, shift: float = 0.0) -> RawDataset:
    rng = np.random.default_rng(0)
    splits = {
        s: RawSplit(
            {
                "pic": (rng.standard_normal((n, 2, 6, 6)) + shift).astype(np.float32),
                "snd": rng.standard_normal((n, 3, 10)).astype(np.float32),
            },
            rng.integers(0, 3, n),
        )
        for s, n in SIZES.items()
    }
    return RawDataset("toy-pipeline", splits, {"source": "random numbers"})


def _toy_backbones(raw, root, seed: int = 0, progress: bool = True, width: int = 4) -> list[Backbone]:
    torch.manual_seed(seed)
    pic = nn.Sequential(nn.Conv2d(2, width, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * width, 5))
    snd = nn.Sequential(nn.Conv1d(3, 4, 3), nn.Flatten(), nn.Linear(32, 6))
    return [
        Backbone("pic", pic.eval().requires_grad_(False), {"conv": "0", "fc": "3"}),
        Backbone("snd", snd.eval().requires_grad_(False), {"conv": "0", "fc": "2"}),
    ]


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
    register_dataset("toy-pipeline")(_toy_dataset)
    register_backbones("toy-pipeline")(_toy_backbones)


@pytest.fixture()
def forwards(monkeypatch):
    """Counts the backbones' forward passes during extraction."""
    calls = []
    real = bmnas.features.extract._forward

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(bmnas.features.extract, "_forward", counting)
    return calls


def test_toy_features_names_shapes_and_info(tmp_path, forwards):
    data = dataset_features("toy-pipeline", root=tmp_path, length=4, progress=False)
    assert isinstance(data, FeatureData) and data.name == "toy-pipeline"
    assert data.feature_names == ("pic.conv", "pic.fc", "snd.conv", "snd.fc")
    assert {k: v.shape for k, v in data["val"].features.items()} == {
        "pic.conv": (5, 4, 4),
        "pic.fc": (5, 1, 5),
        "snd.conv": (5, 4, 4),
        "snd.fc": (5, 1, 6),
    }
    assert data.task.type == "multiclass" and data["test"].labels.dtype == np.int64
    assert [len(data[s]) for s in ("train", "val", "test")] == [12, 5, 7]
    assert data.info["cache_hit"] is False and data.info["provenance"] == {"source": "random numbers"}
    assert len(forwards) == 6  # 3 splits × 2 backbones, one batch each
    for key in ("prepare_seconds", "pretrain_seconds", "extract_seconds"):
        assert data.info[key] >= 0


def test_second_call_reuses_the_cache(tmp_path, forwards):
    first = dataset_features("toy-pipeline", root=tmp_path, length=4, progress=False)
    n = len(forwards)
    second = dataset_features("toy-pipeline", root=tmp_path, length=4, progress=False)
    assert len(forwards) == n and second.info["cache_hit"] is True
    for k in first.feature_names:
        np.testing.assert_array_equal(first["train"].features[k], second["train"].features[k])
        assert isinstance(second["train"].features[k], np.memmap)


def test_new_weights_length_or_pooling_mean_new_keys(tmp_path, forwards):
    base = dataset_features("toy-pipeline", root=tmp_path, length=4, progress=False)
    n = len(forwards)
    reseeded = dataset_features("toy-pipeline", root=tmp_path, length=4, seed=1, progress=False)
    assert len(forwards) == n + 6 and not reseeded.info["cache_hit"]
    assert reseeded.info["weights"] != base.info["weights"]
    assert not np.allclose(reseeded["train"].features["pic.fc"], base["train"].features["pic.fc"])
    dataset_features("toy-pipeline", root=tmp_path, length=2, progress=False)
    dataset_features("toy-pipeline", root=tmp_path, length=4, pooling="avg", progress=False)
    assert len(forwards) == n + 18
    again = dataset_features("toy-pipeline", root=tmp_path, length=4, progress=False)
    assert again.info["cache_hit"] and len(forwards) == n + 18


def test_changed_dataset_means_a_new_key(tmp_path, forwards):
    dataset_features("toy-pipeline", root=tmp_path, length=4, progress=False)
    n = len(forwards)
    shifted = dataset_features("toy-pipeline", root=tmp_path, length=4, progress=False, shift=1.0)
    assert len(forwards) == n + 6 and not shifted.info["cache_hit"]


def test_a_corrupted_npy_is_rebuilt(tmp_path, forwards, caplog):
    first = dataset_features("toy-pipeline", root=tmp_path, length=4, progress=False)
    expected = np.array(first["val"].features["snd.conv"])
    entry = next(d for d in first.info["cache_dirs"] if "/val-snd-" in d)
    file = f"{entry}/00.npy"
    with open(file, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\xc0\x7f")  # a NaN where a float was
    n = len(forwards)
    again = dataset_features("toy-pipeline", root=tmp_path, length=4, progress=False)
    assert "checksum mismatch" in caplog.text
    assert len(forwards) == n + 1 and not again.info["cache_hit"]  # only that entry is rebuilt
    np.testing.assert_array_equal(again["val"].features["snd.conv"], expected)


def test_backbone_options_and_prepare_backbones(tmp_path):
    data = dataset_features(
        "toy-pipeline", root=tmp_path, length=4, progress=False, backbone_options={"width": 3}
    )
    assert data.feature_channels["pic.conv"] == 3
    raw, backbones = prepare_backbones("toy-pipeline", root=tmp_path, progress=False, shift=2.0)
    assert raw.splits["train"].inputs["pic"].mean() > 1.5
    assert [b.feature_names() for b in backbones] == [["pic.conv", "pic.fc"], ["snd.conv", "snd.fc"]]


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BMNAS_CACHE", str(tmp_path / "c"))
    assert default_root() == tmp_path / "c"
    monkeypatch.delenv("BMNAS_CACHE")
    assert default_root().parts[-2:] == (".cache", "bmnas")


def _fit_score(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> float:
    scaler = StandardScaler().fit(train)
    with threadpool_limits(1):  # one BLAS thread: a busy 2-core machine slows two down many times over
        model = LogisticRegression(C=0.1, max_iter=500).fit(scaler.transform(train), y_train)
    return float(model.score(scaler.transform(test), y_test))


@pytest.mark.network
def test_avmnist_end_to_end_and_fusion_matters(bmnas_root, forwards):
    data = dataset_features("avmnist", root=bmnas_root, length=8, progress=False)
    assert data.feature_names == (
        "image.conv1",
        "image.conv2",
        "image.conv3",
        "image.fc",
        "audio.conv1",
        "audio.conv2",
        "audio.conv3",
        "audio.fc",
    )
    assert data.feature_channels == {
        "image.conv1": 8,
        "image.conv2": 16,
        "image.conv3": 32,
        "image.fc": 128,
        "audio.conv1": 32,
        "audio.conv2": 64,
        "audio.conv3": 64,
        "audio.fc": 128,
    }
    assert data.feature_lengths["image.conv1"] == 8 and data.feature_lengths["audio.fc"] == 1
    assert data.task.type == "multiclass" and data.task.num_outputs == 10
    assert data.info["provenance"]["image_licence"] == "CC BY-SA 3.0"
    again = dataset_features("avmnist", root=bmnas_root, length=8, progress=False)
    assert again.info["cache_hit"] and len(forwards) == (0 if data.info["cache_hit"] else 2 * (14 + 2 + 4))

    tr, te = data["train"], data["test"]
    img = _fit_score(tr.features["image.fc"][:, 0], tr.labels, te.features["image.fc"][:, 0], te.labels)
    aud = _fit_score(tr.features["audio.fc"][:, 0], tr.labels, te.features["audio.fc"][:, 0], te.labels)
    both = _fit_score(
        np.concatenate([tr.features["image.fc"][:, 0], tr.features["audio.fc"][:, 0]], 1),
        tr.labels,
        np.concatenate([te.features["image.fc"][:, 0], te.features["audio.fc"][:, 0]], 1),
        te.labels,
    )
    assert 0.45 < img < 0.75 and 0.5 < aud < 0.75
    assert both > max(img, aud) + 0.08


def test_unknown_backbone_option_is_a_clear_error(tmp_path, capsys):
    from bmnas.cli.main import main

    argv = ["pretrain", "--dataset", "toy-pipeline", "--cache", str(tmp_path), "--quiet"]
    assert main([*argv, "--backbone-option", "depth=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bmnas: error: unknown --backbone-option ['depth'] for 'toy-pipeline'")
    assert "valid options: ['progress', 'seed', 'width']" in err
    assert main([*argv, "--backbone-option", "width=3"]) == 0
