"""EgoGesture: a tiny frame tree with JPEG frames and label CSVs in the release's layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bmnas.core.errors import DataError
from bmnas.features.backbones.base import backbones_for
from bmnas.features.backbones.egogesture import Small3DCNN
from bmnas.features.datasets.base import create_dataset
from bmnas.features.datasets.egogesture import TEST_SUBJECTS, TRAIN_SUBJECTS, VAL_SUBJECTS, frame_indices
from bmnas.features.extract import extract_features
from helpers import make_tree, rgb_of

GROUPS = {
    (3, 1, 1): "3,1,4\n7,5,8\n",  # train subject
    (3, 2, 2): "83,2,7\n,,\n\n",  # train; blank rows are ignored
    (1, 1, 1): "1,1,8\n",  # val
    (2, 4, 1): "12,3,6\n",  # test
}


@pytest.fixture
def tree(tmp_path):
    path = tmp_path / "EgoGesture"
    make_tree(path, GROUPS)
    return path


def test_official_subject_split():
    assert len(TRAIN_SUBJECTS) == 30 and len(VAL_SUBJECTS) == len(TEST_SUBJECTS) == 10
    assert set(TRAIN_SUBJECTS) | set(VAL_SUBJECTS) | set(TEST_SUBJECTS) == set(range(1, 51))
    assert 3 in TRAIN_SUBJECTS and 1 in VAL_SUBJECTS and 2 in TEST_SUBJECTS
    assert frame_indices(1, 4, 4).tolist() == [1, 2, 3, 4]
    assert frame_indices(2, 7, 4).tolist() == [2, 4, 5, 7]


def test_clips_labels_and_frames(tree, tmp_path):
    raw = create_dataset("egogesture", tmp_path / "cache", path=tree, frames=4, size=(8, 8), progress=False)
    assert raw.modalities == ("rgb", "depth") and len(raw.class_names) == 83
    assert {s: sp.labels.tolist() for s, sp in raw.splits.items()} == {
        "train": [2, 6, 82],
        "val": [0],
        "test": [11],
    }
    train = raw.splits["train"]
    assert train.inputs["rgb"].shape == (3, 3, 4, 8, 8) and train.inputs["rgb"].dtype == np.uint8
    assert train.inputs["depth"].shape == (3, 1, 4, 8, 8)
    red = train.inputs["rgb"][:, 0, :, 4, 4].astype(int)  # red channel = 10 × frame number
    np.testing.assert_allclose(red, [[10, 20, 30, 40], [50, 60, 70, 80], [20, 40, 50, 70]], atol=2)
    np.testing.assert_allclose(train.inputs["rgb"][0, :, 0, 2, 2], rgb_of(3, 1), atol=2)
    np.testing.assert_allclose(raw.splits["val"].inputs["depth"][0, 0, :, 1, 1], [25, 75, 150, 200], atol=2)
    small = create_dataset("egogesture", tmp_path / "cache", path=tree, frames=2, size=(4, 6), progress=False)
    assert small.splits["test"].inputs["rgb"].shape == (1, 3, 2, 4, 6)
    np.testing.assert_allclose(small.splits["test"].inputs["rgb"][0, :, 1, 2, 3], rgb_of(2, 6), atol=2)


@pytest.mark.parametrize(
    "rows, message",
    [
        ("3,1\n", r"Group1\.csv, line 1: expected 'label,start,end'"),
        ("3,1,4\n84,1,2\n", r"Group1\.csv, line 2: label 84 outside 1\.\.83"),
        ("3,5,4\n", r"Group1\.csv, line 1: frames 5\.\.4: need 1 <= start <= end"),
        ("a,b,c\n", r"Group1\.csv, line 1: expected 'label,start,end' .*'a,b,c'"),
    ],
)
def test_bad_label_rows(tmp_path, rows, message):
    make_tree(tmp_path / "ego", {(3, 1, 1): rows})
    with pytest.raises(DataError, match=message):
        create_dataset("egogesture", tmp_path, path=tmp_path / "ego", frames=2, size=(8, 8), progress=False)


def test_bad_rows_can_be_skipped(tmp_path):
    make_tree(tmp_path / "ego", {(3, 1, 1): "3,1,4\n99,1,2\n", (1, 1, 1): "1,1,8\n", (2, 1, 1): "2,1,8\n"})
    with pytest.warns(UserWarning, match="1 bad label row"):
        raw = create_dataset(
            "egogesture",
            tmp_path,
            path=tmp_path / "ego",
            frames=2,
            size=(8, 8),
            bad_rows="skip",
            progress=False,
        )
    assert raw.splits["train"].labels.tolist() == [2]


def test_missing_and_corrupt_frames(tree, tmp_path):
    missing = tree / "images_320-240" / "Subject03" / "Scene1" / "Depth" / "depth1" / "000005.jpg"
    missing.unlink()
    with pytest.raises(DataError, match=r"depth1/000005\.jpg: frame not found \(clip .*Group1\.csv, line 2"):
        create_dataset("egogesture", tmp_path / "c1", path=tree, frames=4, size=(8, 8), progress=False)
    with pytest.warns(UserWarning, match=r"1 EgoGesture clip\(s\) with missing frames skipped"):
        raw = create_dataset(
            "egogesture", tmp_path / "c2", path=tree, frames=4, size=(8, 8), on_missing="skip", progress=False
        )
    assert raw.splits["train"].labels.tolist() == [2, 82]
    missing.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"depth1/000005\.jpg: cannot be decoded"):
        create_dataset("egogesture", tmp_path / "c3", path=tree, frames=4, size=(8, 8), progress=False)


def test_layout_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"labels-final-revised1: label folder not found"):
        create_dataset("egogesture", tmp_path, path=tmp_path / "empty", progress=False)
    make_tree(tmp_path / "ego", {(3, 1, 1): "3,1,4\n"})
    (tmp_path / "ego" / "labels-final-revised1" / "subject03" / "Scene1" / "Group2.csv").write_text("1,1,2\n")
    with pytest.raises(DataError, match=r"Group2\.csv: frame folder .*rgb2 not found"):
        create_dataset("egogesture", tmp_path, path=tmp_path / "ego", progress=False)


def test_small3dcnn_feature_shapes():
    net = Small3DCNN(3).eval()
    shapes, hooks = {}, []
    for name in ("block2", "block3", "block4", "fc"):
        hooks.append(
            getattr(net, name).register_forward_hook(
                lambda _m, _i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:]))
            )
        )
    assert net(torch.zeros(2, 3, 8, 48, 64)).shape == (2, 83)
    assert shapes == {
        "block2": (64, 4, 6, 8),
        "block3": (128, 2, 3, 4),
        "block4": (256, 1, 3, 4),
        "fc": (256,),
    }


def test_backbones_pretrain_and_extract(tree, tmp_path):
    root = tmp_path / "cache"
    raw = create_dataset(
        "egogesture", root, path=tree, frames=4, size=(8, 8), pretrain_epochs=1, progress=False
    )
    rgb, depth = backbones_for("egogesture", raw, root, progress=False)
    assert rgb.feature_names() == ["rgb.block2", "rgb.block3", "rgb.block4", "rgb.fc"]
    assert depth.feature_names()[0] == "depth.block2"
    assert len(list((root / "egogesture" / "backbones").glob("*.pt"))) == 2
    feats = extract_features(depth, raw.splits["test"].inputs["depth"], length=2, progress=False)
    assert {k: v.shape for k, v in feats.items()} == {
        "depth.block2": (1, 2, 64),
        "depth.block3": (1, 2, 128),
        "depth.block4": (1, 2, 256),
        "depth.fc": (1, 1, 256),
    }
