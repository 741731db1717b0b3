"""MM-IMDB: a tiny multimodal_imdb.hdf5 written in the GMU/Fuel layout, read back exactly."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

from bmnas.core.errors import DataError  # noqa: E402
from bmnas.features.backbones.base import backbones_for  # noqa: E402
from bmnas.features.backbones.mmimdb import VGG19_LAYERS, VGG19Features  # noqa: E402
from bmnas.features.datasets.base import create_dataset  # noqa: E402
from bmnas.features.datasets.mmimdb import HDF5Rows  # noqa: E402
from helpers import GENRES, GMU_HW, GMU_ROWS, GMU_SIZES, write_gmu  # noqa: E402

N, SIZES, (H, W) = GMU_ROWS, GMU_SIZES, GMU_HW


@pytest.fixture(scope="module")
def gmu(tmp_path_factory):
    path = tmp_path_factory.mktemp("gmu") / "multimodal_imdb.hdf5"
    return path, write_gmu(path)


def test_splits_labels_and_text_are_read_exactly(gmu, tmp_path):
    path, (rgb, text, genres) = gmu
    raw = create_dataset("mmimdb", tmp_path / "cache", path=path)
    assert {s: len(sp) for s, sp in raw.splits.items()} == {"train": 18, "val": 6, "test": 6}
    assert raw.class_names == tuple(GENRES)
    assert raw.modalities == ("image", "text")
    assert raw.provenance["split"] == "Fuel 'split' attribute"
    assert raw.provenance["image_encoding"] == "caffe_bgr"
    val = raw.splits["val"]  # rows 18..23
    np.testing.assert_array_equal(val.labels, genres[18:24].astype(np.float32))
    assert val.labels.dtype == np.float32 and set(np.unique(val.labels)) <= {0.0, 1.0}
    np.testing.assert_array_equal(val.inputs["text"], text[18:24])
    np.testing.assert_array_equal(raw.splits["test"].inputs["text"][-1], text[29])


def test_posters_are_lazy_and_decoded_to_rgb(gmu, tmp_path):
    path, (rgb, _, _) = gmu
    raw = create_dataset("mmimdb", tmp_path / "cache", path=path)
    images = raw.splits["test"].inputs["image"]  # rows 24..29
    assert isinstance(images, HDF5Rows) and images.shape == (6, 3, H, W) and images.dtype == np.uint8
    got = images[[4, 1, 4]]  # unsorted, repeated: fancy indexing
    assert got.shape == (3, 3, H, W) and got.dtype == np.uint8
    for k, row in enumerate([28, 25, 28]):
        diff = np.abs(got[k].astype(int) - rgb[row])
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # exact except stored zeros
    np.testing.assert_array_equal(images[1:3], images[np.array([1, 2])])
    assert images[2].shape == (3, H, W)
    clone = pickle.loads(pickle.dumps(images))  # DataLoader workers reopen the file
    np.testing.assert_array_equal(clone[0], images[0])


def test_plain_rgb_posters_are_detected(tmp_path):
    path = tmp_path / "rgb.hdf5"
    rgb, _, _ = write_gmu(path, caffe=False, hw=(8, 5))
    raw = create_dataset("mmimdb", tmp_path, path=path)
    assert raw.provenance["image_encoding"] == "rgb"
    np.testing.assert_array_equal(raw.splits["train"].inputs["image"][0], rgb[0])


def test_split_fallbacks_and_limit(tmp_path):
    path = tmp_path / "nosplit.hdf5"
    write_gmu(path, split_attr=False, hw=(8, 5))
    with pytest.raises(DataError, match=r"nosplit\.hdf5: no Fuel 'split' attribute and 30 samples.*sizes"):
        create_dataset("mmimdb", tmp_path, path=path)
    raw = create_dataset("mmimdb", tmp_path, path=path, split_sizes=(20, 5, 5), limit=3)
    assert [len(raw.splits[s]) for s in ("train", "val", "test")] == [3, 3, 3]
    assert raw.splits["val"].inputs["image"].start == 20


@pytest.mark.parametrize("key", ["images", "features", "genres"])
def test_missing_key_is_named(tmp_path, key):
    path = tmp_path / "broken.hdf5"
    write_gmu(path, drop=(key,), hw=(8, 5))
    with pytest.raises(DataError, match=rf"broken\.hdf5: missing dataset\(s\) \['{key}'\]"):
        create_dataset("mmimdb", tmp_path, path=path)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        create_dataset("mmimdb", tmp_path, path=tmp_path / "absent.hdf5")
    bad = tmp_path / "not.hdf5"
    bad.write_text("plain text")
    with pytest.raises(DataError, match=r"not\.hdf5: cannot be read as HDF5"):
        create_dataset("mmimdb", tmp_path, path=bad)
    path = tmp_path / "multi.hdf5"
    write_gmu(path, hw=(8, 5))
    with h5py.File(path, "a") as f:
        f["genres"][0, 0] = 2
    with pytest.raises(DataError, match=r"genres\[0, 0\] = 2"):
        create_dataset("mmimdb", tmp_path, path=path)


def test_nan_plot_vectors_become_zeros(tmp_path):
    path = tmp_path / "nan.hdf5"
    write_gmu(path, nan_rows=(2,), hw=(8, 5))
    with pytest.warns(UserWarning, match="1 plot vectors .* NaN"):
        raw = create_dataset("mmimdb", tmp_path, path=path)
    assert np.all(raw.splits["train"].inputs["text"][2] == 0)


def hooked(backbone, batch):
    """Run a backbone on a raw batch and return its named features."""
    named = dict(backbone.module.named_modules())
    out, hooks = {}, []
    for layer, path in backbone.layers.items():
        hooks.append(
            named[path].register_forward_hook(lambda _m, _i, o, layer=layer: out.__setitem__(layer, o))
        )
    with torch.no_grad():
        backbone.module(backbone.preprocess(batch))
    for h in hooks:
        h.remove()
    return out


def test_backbones_pretrain_once_and_expose_features(gmu, tmp_path):
    path, _ = gmu
    root = tmp_path / "cache"
    raw = create_dataset("mmimdb", root, path=path, pretrain_epochs=1)
    image, text = backbones_for("mmimdb", raw, root, seed=0, progress=False)
    assert image.feature_names() == ["image.block2", "image.block3", "image.block4", "image.fc"]
    assert text.feature_names() == ["text.maxout1", "text.maxout2"]
    assert not image.module.training and not any(p.requires_grad for p in image.module.parameters())
    feats = hooked(image, raw.splits["val"].inputs["image"][:2])
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "block2": (2, 64, 32, 20),
        "block3": (2, 128, 16, 10),
        "block4": (2, 256, 8, 5),
        "fc": (2, 256),
    }
    feats = hooked(text, raw.splits["val"].inputs["text"][:2])
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"maxout1": (2, 64), "maxout2": (2, 128)}
    saved = sorted(p.name for p in (root / "mmimdb" / "backbones").glob("*.pt"))
    assert len(saved) == 2
    again = backbones_for("mmimdb", raw, root, seed=0, progress=False)  # loaded, not retrained
    assert [b.weights_hash() for b in again] == [image.weights_hash(), text.weights_hash()]


def test_user_vgg19_weights(gmu, tmp_path):
    path, _ = gmu
    weights = tmp_path / "vgg19.pth"
    with torch.device("meta"):
        shapes = {f"features.{k}": v.shape for k, v in VGG19Features().features.state_dict().items()}
    state = {k: torch.full(shape, 0.01) for k, shape in shapes.items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files also hold the classifier
    torch.save(state, weights)
    raw = create_dataset("mmimdb", tmp_path, path=path, image_weights=str(weights), pretrain_epochs=1)
    image, _ = backbones_for("mmimdb", raw, tmp_path, progress=False)
    assert image.name == "vgg19" and image.layers == VGG19_LAYERS
    feats = hooked(image, raw.splits["test"].inputs["image"][:1])
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "relu4_1": (512, 32, 20),
        "relu4_4": (512, 32, 20),
        "relu5_3": (512, 16, 10),
        "pool5": (512, 8, 5),
    }
    torch.save({"features.0.weight": torch.zeros(1)}, weights)
    with pytest.raises(DataError, match=r"vgg19\.pth: missing"):
        backbones_for("mmimdb", raw, tmp_path, progress=False)
