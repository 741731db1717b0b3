"""AV-MNIST's interaction benchmarks (task=match, task=parity), built offline from synthetic sources.

The sources are random pixels and MFCCs with the real counts (500 images and 300 utterances per
digit), so the splits, the pairing and the labels are those of the real files; only the arrays'
contents differ. No download, no pre-training: the backbones are stand-ins.
"""

import numpy as np
import pytest
import torch
from torch import nn

import bmnas.features.backbones.avmnist  # noqa: F401  (registers the real backbones first)
import bmnas.features.datasets.avmnist as avmnist
from bmnas.core.data import SPLITS
from bmnas.engine.folds import kfold
from bmnas.features.backbones import base as backbones_base
from bmnas.features.backbones.base import Backbone
from bmnas.features.datasets.avmnist import TASKS, AVMNISTOptions, build_arrays
from bmnas.features.datasets.base import OptionError, create_dataset, sha256_arrays
from bmnas.features.datasets.prepared import publish_arrays
from bmnas.features.pipeline import dataset_features

IMAGE_LABELS = np.repeat(np.arange(10), 500)
UTTERANCE_LABELS = np.repeat(np.arange(10), 300)
DEFAULT_VARIANT = "v1-ce8cfc49360e"  # bmnas before interaction tasks: the default must keep it
# labels and source indices of the default (digit) arrays from the sources below, as bmnas built
# them before tasks existed (pure RNG: no floating-point library in between)
DEFAULT_PAIRING_SHA256 = "9367de78b688015a54e5e21bf433539daee467547faafb41b23eb573d4a2539c"


@pytest.fixture(scope="module")
def sources():
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (5000, 28, 28)).astype(np.uint8)
    utterances = [rng.standard_normal((int(rng.integers(6, 40)), 13)).astype(np.float32) for _ in range(3000)]
    return images, utterances


@pytest.fixture(scope="module")
def built(sources):
    """Each task's arrays; no principal components removed (fast: the pairing does not depend on it)."""
    images, utterances = sources
    return {
        task: build_arrays(
            images, IMAGE_LABELS, utterances, UTTERANCE_LABELS, AVMNISTOptions(task=task, pca_components=0)
        )
        for task in TASKS
    }


def test_the_default_task_keeps_its_variant_arrays_and_manifest_options(built):
    assert AVMNISTOptions().variant() == AVMNISTOptions(task="digit").variant() == DEFAULT_VARIANT
    assert "task" not in AVMNISTOptions().fields()
    variants = {AVMNISTOptions(task=t).variant() for t in TASKS}
    assert len(variants) == 3  # each task is prepared (and its features cached) apart
    digit = built["digit"]
    assert sorted(digit) == sorted(
        f"{s}.{a}" for s in SPLITS for a in ("image", "audio", "label", "image_index", "audio_index")
    )
    pairing = {k: v for k, v in digit.items() if k.endswith(("label", "index"))}
    assert sha256_arrays(pairing) == DEFAULT_PAIRING_SHA256
    with pytest.raises(
        OptionError, match=r"task must be one of \['digit', 'match', 'parity'\], got 'larger'"
    ):
        AVMNISTOptions(task="larger")


@pytest.mark.parametrize("task", ["match", "parity"])
def test_interaction_labels_are_balanced_and_blind_to_each_modality_alone(built, task):
    arrays = built[task]
    images, utterances = {}, {}
    for split, n in {"train": 3500, "val": 500, "test": 1000}.items():
        y, img, aud = (arrays[f"{split}.{a}"] for a in ("label", "image_digit", "audio_digit"))
        assert len(y) == n and y.dtype == np.int64 and set(np.unique(y)) == {0, 1}
        assert y.sum() == n // 2  # balanced 50/50, exactly
        for digit in range(10):  # each modality alone tells nothing: P(y = 1 | its digit) = 1/2 exactly
            assert y[img == digit].mean() == 0.5 and y[aud == digit].mean() == 0.5
            assert (img == digit).sum() == n // 10 and (aud == digit).sum() == n // 10
        image_index, audio_index = arrays[f"{split}.image_index"], arrays[f"{split}.audio_index"]
        np.testing.assert_array_equal(IMAGE_LABELS[image_index], img)
        np.testing.assert_array_equal(UTTERANCE_LABELS[audio_index], aud)
        assert len(np.unique(image_index)) == n  # every image in exactly one row
        assert len(np.unique(audio_index)) == n * 3 // 5  # utterances reused inside the split
        if task == "match":
            np.testing.assert_array_equal(y, (img == aud).astype(np.int64))
            shifts = np.bincount((aud - img)[y == 0] % 10, minlength=10)  # hard negatives: any other digit
            per = n // 20 // 9  # of a digit's n/20 negatives, each other digit gets per or per + 1
            assert shifts[0] == 0 and shifts[1:].min() >= 10 * per and shifts[1:].max() <= 10 * (per + 1)
        else:
            np.testing.assert_array_equal(y, ((img + aud) % 2 == 0).astype(np.int64))
            joint = np.zeros((10, 10), int)
            np.add.at(joint, (img, aud), 1)
            assert (joint == n // 100).all()  # spoken digit independent of the written one
        images[split], utterances[split] = set(image_index), set(audio_index)
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not images[a] & images[b] and not utterances[a] & utterances[b]


def test_tasks_share_the_digit_tasks_split_of_images_and_utterances(built):
    for task in ("match", "parity"):
        for split in SPLITS:
            for item in ("image_index", "audio_index"):
                assert set(built[task][f"{split}.{item}"]) == set(built["digit"][f"{split}.{item}"])


@pytest.fixture(scope="module")
def offline(built, tmp_path_factory):
    """A cache root where AV-MNIST is prepared from the synthetic sources (:func:`built`), with
    stand-in (untrained) backbones."""

    def prepare(directory, _sources, opts):
        arrays = built[opts.task]
        sums = {"mnist_5k.csv.gz": "0" * 64, "digits.npz": "0" * 64}
        return publish_arrays(
            directory, arrays, format=avmnist.FORMAT_VERSION, options=opts.fields(), sources=sums
        )

    def backbones(raw, root, seed=0, progress=True):
        torch.manual_seed(seed)
        image = nn.Sequential(nn.Flatten(), nn.Linear(784, 6)).eval().requires_grad_(False)
        audio = nn.Sequential(nn.Flatten(), nn.Linear(13 * 32, 5)).eval().requires_grad_(False)
        return [Backbone("image", image, {"fc": "1"}), Backbone("audio", audio, {"fc": "1"})]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(avmnist, "prepare", prepare)
        patch.setitem(backbones_base._FACTORIES, "avmnist", backbones)
        yield tmp_path_factory.mktemp("avmnist-tasks")


def test_the_builder_names_classes_groups_rows_and_pretrains_on_each_modalitys_digit(offline):
    tmp_path = offline
    match = create_dataset("avmnist", tmp_path, task="match")
    assert match.class_names == ("no", "yes") and match.provenance["task"] == "match"
    assert create_dataset("avmnist", tmp_path, task="parity").class_names == ("odd", "even")
    digit = create_dataset("avmnist", tmp_path)
    assert digit.class_names == tuple("0123456789") and "task" not in digit.provenance
    for split in SPLITS:
        sp, dg = match.splits[split], digit.splits[split]
        index = np.load(
            tmp_path / "avmnist" / AVMNISTOptions(task="match").variant() / f"{split}.audio_index.npy"
        )
        np.testing.assert_array_equal(sp.groups, index)  # the utterance: the item that repeats
        image_index = np.load(
            tmp_path / "avmnist" / AVMNISTOptions(task="match").variant() / f"{split}.image_index.npy"
        )
        np.testing.assert_array_equal(sp.labels_of("image"), IMAGE_LABELS[image_index])
        np.testing.assert_array_equal(sp.labels_of("audio"), UTTERANCE_LABELS[index])
        assert dg.labels_of("image") is dg.labels and dg.labels_of("audio") is dg.labels


def test_interaction_features_carry_groups_and_their_folds_keep_each_utterance_together(offline):
    tmp_path = offline
    data = dataset_features("avmnist", root=tmp_path, length=1, progress=False, task="parity")
    assert data.task.num_outputs == 2 and data.info["class_names"] == ["odd", "even"]
    groups = {s: data[s].groups for s in SPLITS}
    assert all(g is not None and g.dtype == np.int64 and len(g) == len(data[s]) for s, g in groups.items())
    assert not set(groups["train"]) & set(groups["val"])  # different utterances: different codes
    folds = kfold(data, 3, seed=0)
    held = [set(f["val"].groups) for f in folds]
    assert sum(len(h) for h in held) == len(
        set(groups["train"]) | set(groups["val"])
    )  # no group in two folds
    for f in folds:
        assert not set(f["train"].groups) & set(f["val"].groups)
        assert abs(f["val"].labels.mean() - 0.5) < 0.02  # stratified as far as the groups allow
    other = dataset_features("avmnist", root=tmp_path, length=1, progress=False, task="match")
    assert other.info["dataset_sha256"] != data.info["dataset_sha256"]  # distinct feature-cache keys
    assert not set(other.info["cache_dirs"]) & set(data.info["cache_dirs"])
