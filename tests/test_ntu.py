"""NTU RGB+D: tiny .skeleton files in the official text format, parsed and split exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bmnas.core.errors import DataError
from bmnas.features.backbones.base import backbones_for
from bmnas.features.backbones.ntu import HCN
from bmnas.features.datasets.base import create_dataset
from bmnas.features.datasets.ntu import (
    FeatureStore,
    SampleName,
    read_skeleton,
    sample_code,
    sample_stem,
    skeleton_array,
)
from bmnas.features.extract import extract_features
from bmnas.features.pooling import pool_feature
from helpers import BODY_ID, joint_values, skeleton_text

SAMPLES = {  # stem: bodies per frame
    "S001C001P001R001A001": [1, 1, 1, 1],  # train (subject 1)
    "S001C002P002R001A050": [2, 2, 1, 2],  # val (subject 2), two bodies, one missing in frame 3
    "S002C003P003R002A007": [1, 1, 1, 1],  # test (subject 3)
    "S001C001P004R002A010": [1, 3, 1, 1],  # train (subject 4), a third body is dropped
    "S001C001P009R001A033": [1, 1, 1, 1],  # val (subject 9)
    "S003C001P006R001A060": [1, 1, 1, 1],  # test (subject 6)
    "S001C001P008R001A002": [0, 0, 0],  # train subject, but no body at all (missing skeleton)
}


@pytest.fixture
def skeletons(tmp_path):
    folder = tmp_path / "nturgb+d_skeletons"
    folder.mkdir()
    for stem, bodies in SAMPLES.items():
        (folder / f"{stem}.skeleton").write_text(skeleton_text(bodies))
    return folder


def test_parse_exact_values(skeletons):
    skel = read_skeleton(skeletons / "S001C002P002R001A050.skeleton")
    assert skel.num_frames == 4 and skel.body_counts.tolist() == [2, 2, 1, 2]
    assert skel.joints.shape == (4, 2, 25, 12) and skel.bodies.shape == (4, 2, 10)
    np.testing.assert_array_equal(skel.joints[3, 1, 7], np.round(joint_values(3, 1)[7], 7))
    assert skel.joints[2, 1].sum() == 0 and skel.body_ids[2].tolist() == [BODY_ID, -1]
    assert skel.body_ids[0, 1] == BODY_ID + 1  # exact, beyond float64 precision
    np.testing.assert_allclose(skel.bodies[0, 0, 1:], [0, 1, 1, 1, 1, 0, -0.0517, 0.2391, 2])


def test_skeleton_array_layout_centering_and_resampling(skeletons):
    skel = read_skeleton(skeletons / "S001C002P002R001A050.skeleton")
    raw = skeleton_array(skel, frames=4, center=False)
    assert raw.shape == (3, 4, 25, 2) and raw.dtype == np.float32
    np.testing.assert_allclose(raw[:, 3, 7, 1], joint_values(3, 1)[7, :3], rtol=1e-6)  # (xyz, t, joint, body)
    assert np.all(raw[:, 2, :, 1] == 0)  # the missing second body of frame 3 stays zero
    centred = skeleton_array(skel, frames=4)
    origin = joint_values(0, 0)[1, :3]  # joint 2 of body 0
    np.testing.assert_allclose(centred[:, 0, 7, 1], joint_values(0, 1)[7, :3] - origin, rtol=1e-5, atol=1e-6)
    assert np.all(centred[:, 0, 1, 0] == 0) and np.all(centred[:, 2, :, 1] == 0)
    up = skeleton_array(skel, frames=8, center=False)  # linear, align_corners=False
    x = raw[0, :, 0, 0]  # x of joint 1, body 0 over the 4 frames: 0, 1, 2, 3
    np.testing.assert_allclose(
        up[0, :, 0, 0], np.interp((np.arange(8) + 0.5) / 2 - 0.5, np.arange(4), x), atol=1e-6
    )
    more = read_skeleton(skeletons / "S001C001P004R002A010.skeleton")
    assert more.joints.shape[1] == 3 and skeleton_array(more, 4).shape == (3, 4, 25, 2)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda lines: lines[:20],
            r"file ends at line 20; expected 25 joint line\(s\) from line 5 \(truncated",
        ),
        (lambda lines: lines[:3] + ["24"] + lines[4:], r"line 4: joint count 24; NTU RGB\+D bodies have 25"),
        (
            lambda lines: lines[:6] + [lines[6] + " 1"] + lines[7:],
            r"line 7: expected 12 values \(joint\), got",
        ),
        (
            lambda lines: lines[:2] + [lines[2].replace("0 1", "0 x", 1)] + lines[3:],
            r"line 3: non-numeric body",
        ),
        (lambda lines: lines + ["5"], r"line 114: unexpected content after the 4 frames"),
        (lambda lines: ["four"] + lines[1:], r"line 1: expected the frame count \(one integer\), got 'four'"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, mutate, message):
    lines = skeleton_text([1, 1, 1, 1]).splitlines()
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_text("\n".join(mutate(lines)) + "\n")
    with pytest.raises(DataError, match=rf"S001C001P001R001A001\.skeleton.*{message}"):
        read_skeleton(path)


def test_names_and_codes():
    name = SampleName.parse("S017C003P020R002A060")
    assert (name.setup, name.camera, name.subject, name.replication, name.action) == (17, 3, 20, 2, 60)
    assert sample_stem(sample_code("S017C003P020R002A060")) == "S017C003P020R002A060"
    with pytest.raises(DataError, match="not SsssCcccPpppRrrrAaaa"):
        SampleName.parse("S01C003P020R002A060")
    with pytest.raises(DataError, match="action 61 outside"):
        SampleName.parse("S001C001P001R001A061")


def test_cross_subject_split_and_empty_files(skeletons, tmp_path):
    with pytest.warns(UserWarning, match=r"1 NTU sample\(s\) have no body in any frame.*S001C001P008R"):
        raw = create_dataset("ntu", tmp_path / "cache", skeletons=skeletons, frames=4, progress=False)
    assert raw.modalities == ("skeleton",)
    labels = {s: sp.labels.tolist() for s, sp in raw.splits.items()}
    assert labels == {"train": [0, 9], "val": [32, 49], "test": [6, 59]}  # action - 1, sorted by stem
    train = raw.splits["train"].inputs["skeleton"]
    assert train.shape == (2, 3, 4, 25, 2) and isinstance(train, np.memmap)
    expected = skeleton_array(read_skeleton(skeletons / "S001C001P004R002A010.skeleton"), 4)
    np.testing.assert_array_equal(train[1], expected)
    with pytest.warns(UserWarning, match="no body"):  # the cached parse reports them again
        again = create_dataset("ntu", tmp_path / "cache", skeletons=skeletons, frames=4, progress=False)
    np.testing.assert_array_equal(
        again.splits["val"].inputs["skeleton"], raw.splits["val"].inputs["skeleton"]
    )
    with pytest.raises(DataError, match=r"1 NTU sample\(s\) have no body.*on_empty='skip'"):
        create_dataset(
            "ntu", tmp_path / "c2", skeletons=skeletons, frames=4, on_empty="error", progress=False
        )
    ignore = tmp_path / "NTU_RGBD_samples_with_missing_skeletons.txt"
    ignore.write_text("302 of the captured samples ...\n\nS001C001P008R001A002\n")
    quiet = create_dataset(
        "ntu",
        tmp_path / "c3",
        skeletons=skeletons,
        frames=4,
        ignore=ignore,
        val_subjects=(9,),
        progress=False,
    )
    assert len(quiet.splits["val"]) == 1 and len(quiet.splits["train"]) == 3


def test_bad_file_in_folder_is_named(skeletons, tmp_path):
    (skeletons / "S001C001P001R001A003.skeleton").write_text("2\n0\n")
    with pytest.raises(DataError, match=r"S001C001P001R001A003\.skeleton: file ends at line 2"):
        create_dataset("ntu", tmp_path, skeletons=skeletons, frames=4, progress=False)
    (skeletons / "S001C001P001R001A003.skeleton").unlink()
    (skeletons / "notes.skeleton").write_text("1\n0\n")
    with pytest.raises(DataError, match=r"notes\.skeleton: name 'notes' is not SsssCcccPpppRrrrAaaa"):
        create_dataset("ntu", tmp_path, skeletons=skeletons, frames=4, progress=False)


def rgb_feature(stem: str) -> np.ndarray:
    return np.full((4, 2, 3, 3), sample_code(stem) % 997, dtype=np.float32) + np.arange(3)


@pytest.mark.filterwarnings("ignore:1 NTU sample\\(s\\) have no body")
@pytest.mark.filterwarnings("ignore:1 NTU sample\\(s\\) have no RGB")
def test_rgb_features_directory_and_npz(skeletons, tmp_path):
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    stems = [s for s in SAMPLES if s != "S003C001P006R001A060"]  # one sample lacks RGB features
    for stem in stems:
        np.save(rgb / f"{stem}.npy", rgb_feature(stem))
    with pytest.warns(UserWarning, match=r"have no RGB features .*S003C001P006R001A060"):
        raw = create_dataset(
            "ntu",
            tmp_path / "cache",
            skeletons=skeletons,
            rgb=rgb,
            rgb_layer="i3d",
            frames=32,
            progress=False,
        )
    test = raw.splits["test"]
    assert raw.modalities == ("rgb", "skeleton") and len(test) == 1
    assert test.inputs["rgb"].tolist() == [sample_code("S002C003P003R002A007")]
    rgb_bb, skel_bb = backbones_for("ntu", raw, tmp_path / "cache", progress=False, epochs=1)
    assert rgb_bb.feature_names() == ["rgb.i3d"]
    assert skel_bb.feature_names() == ["skeleton.conv5", "skeleton.conv6", "skeleton.flat", "skeleton.fc7"]
    feats = extract_features(rgb_bb, raw.splits["val"].inputs["rgb"], length=2, progress=False)
    want = pool_feature(
        torch.from_numpy(
            np.stack([rgb_feature("S001C001P009R001A033"), rgb_feature("S001C002P002R001A050")])
        ),
        2,
    ).numpy()
    np.testing.assert_array_equal(feats["rgb.i3d"], want)  # sorted by stem: ...C001P009... < ...C002P002...
    feats = extract_features(skel_bb, raw.splits["val"].inputs["skeleton"], length=4, progress=False)
    assert {k: v.shape for k, v in feats.items()} == {
        "skeleton.conv5": (2, 4, 128),
        "skeleton.conv6": (2, 4, 256),
        "skeleton.flat": (2, 1, 1024),
        "skeleton.fc7": (2, 1, 512),
    }

    npz = tmp_path / "rgb.npz"
    layers = {"l3": 2, "l4": 4}  # two layers, keys "<layer>/<stem>"
    np.savez(npz, **{f"{layer}/{s}": rgb_feature(s)[:n] for s in SAMPLES for layer, n in layers.items()})
    store, first = FeatureStore(npz), "S001C001P001R001A001"
    assert store.layers == ("l3", "l4") and store.shape(first, "l3") == (2, 2, 3, 3)
    np.testing.assert_array_equal(store.load(first, "l4"), rgb_feature(first))
    np.save(rgb / "S002C003P003R002A007.npy", np.zeros((4, 2, 3, 2), np.float32))
    with pytest.raises(DataError, match=r"S002C003P003R002A007\.npy: shape \(4, 2, 3, 2\) differs"):
        create_dataset("ntu", tmp_path / "c4", skeletons=skeletons, rgb=rgb, frames=32, progress=False)


def test_hcn_shapes():
    net = HCN().eval()
    x = torch.randn(2, 3, 32, 25, 2)
    out, hooks = {}, []
    for name in ("conv5_max", "conv6_max", "flat", "fc7"):
        hooks.append(
            getattr(net, name).register_forward_hook(
                lambda _m, _i, o, name=name: out.__setitem__(name, o.shape)
            )
        )
    assert net(x).shape == (2, 60)
    assert out == {
        "conv5_max": (2, 128, 4, 4),
        "conv6_max": (2, 256, 2, 2),
        "flat": (2, 1024),
        "fc7": (2, 512),
    }
    x2 = x.clone()
    x2[..., 1] = 0  # features are the max over the two bodies
    with torch.no_grad():
        assert not torch.equal(net(x), net(x2))
