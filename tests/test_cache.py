"""The pooled-feature cache: keys, checksums, memory maps, corruption and atomic writes."""

import dataclasses
import json

import numpy as np
import pytest

from bmnas.features.cache import CacheKey, FeatureCache
from bmnas.features.datasets.base import RawDataset, RawSplit, dataset_checksum, sha256_arrays

KEY = CacheKey(
    "toy",
    "ab" * 32,
    "train",
    "image",
    "0123456789abcdef",
    (("image.a", "a"), ("image.b", "block.b")),
    4,
    "max",
)


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image.a": rng.standard_normal((6, 4, 3)).astype(np.float32),
        "image.b": rng.standard_normal((6, 1, 5)).astype(np.float32),
    }


def test_digest_depends_on_every_field():
    changes = {
        "dataset": "other",
        "dataset_checksum": "cd" * 32,
        "split": "val",
        "modality": "audio",
        "weights": "fedcba9876543210",
        "layers": (("image.a", "a"),),
        "length": 8,
        "pooling": "avg",
    }
    digests = {dataclasses.replace(KEY, **{k: v}).digest() for k, v in changes.items()}
    assert len(digests | {KEY.digest()}) == len(changes) + 1
    assert KEY.digest() == dataclasses.replace(KEY).digest() and len(KEY.digest()) == 20


def test_store_then_load_memory_maps_read_only(tmp_path):
    cache = FeatureCache(tmp_path)
    arrays = _arrays()
    stored = cache.store(KEY, arrays)
    loaded = cache.load(KEY)
    assert list(loaded) == ["image.a", "image.b"]
    for name, arr in arrays.items():
        assert isinstance(loaded[name], np.memmap) and not loaded[name].flags.writeable
        np.testing.assert_array_equal(loaded[name], arr)
        np.testing.assert_array_equal(stored[name], arr)
    manifest = json.loads((cache.entry_dir(KEY) / "manifest.json").read_text())
    assert manifest["key"] == KEY.as_dict() and len(manifest["features"]) == 2
    # nothing but the entry itself is left in the dataset folder (no staging directories)
    assert [p.name for p in (tmp_path / "toy").iterdir()] == [cache.entry_dir(KEY).name]


def test_get_or_compute_computes_once(tmp_path):
    cache, calls = FeatureCache(tmp_path), []

    def compute():
        calls.append(1)
        return _arrays()

    first, hit1 = cache.get_or_compute(KEY, compute)
    second, hit2 = cache.get_or_compute(KEY, compute)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(first["image.b"], second["image.b"])
    # another key (e.g. new weights) is a miss
    _, hit3 = cache.get_or_compute(dataclasses.replace(KEY, weights="ffff" * 4), compute)
    assert (hit3, len(calls)) == (False, 2)


def test_corrupted_file_is_detected_and_removed(tmp_path, caplog):
    cache = FeatureCache(tmp_path)
    cache.store(KEY, _arrays())
    file = cache.entry_dir(KEY) / "01.npy"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF  # flip one bit pattern in the last float
    file.write_bytes(bytes(data))
    assert cache.load(KEY) is None
    assert "checksum mismatch" in caplog.text
    assert not cache.entry_dir(KEY).exists()
    arrays, hit = cache.get_or_compute(KEY, _arrays)
    assert not hit and cache.load(KEY) is not None


@pytest.mark.parametrize("damage", ["manifest", "missing", "stale"])
def test_unusable_entries_are_rebuilt(tmp_path, damage):
    cache = FeatureCache(tmp_path)
    cache.store(KEY, _arrays())
    entry = cache.entry_dir(KEY)
    if damage == "manifest":
        (entry / "manifest.json").write_text("{not json")
    elif damage == "missing":
        (entry / "00.npy").unlink()
    else:  # a manifest written for another key under this key's directory
        manifest = json.loads((entry / "manifest.json").read_text())
        manifest["key"]["length"] = 99
        (entry / "manifest.json").write_text(json.dumps(manifest))
    assert cache.load(KEY) is None
    _, hit = cache.get_or_compute(KEY, _arrays)
    assert not hit


def test_a_failed_write_leaves_no_entry(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    real_save, calls = np.save, []

    def failing_save(path, arr, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        real_save(path, arr, **kw)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        cache.store(KEY, _arrays())
    assert cache.load(KEY) is None
    assert list((tmp_path / "toy").iterdir()) == []


def test_store_rejects_arrays_that_do_not_match_the_key(tmp_path):
    with pytest.raises(ValueError, match="do not match"):
        FeatureCache(tmp_path).store(KEY, {"image.a": _arrays()["image.a"]})


def test_dataset_checksum_prefers_the_builders_and_hashes_otherwise():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    split = RawSplit({"v": x}, np.array([0, 1, 0]))
    raw = RawDataset("d", {"train": split})
    assert dataset_checksum(RawDataset("d", {"train": split}, {"sha256": "abc"})) == "abc"
    same = RawDataset("d", {"train": RawSplit({"v": x.copy()}, np.array([0, 1, 0]))})
    other = RawDataset("d", {"train": RawSplit({"v": x + 1}, np.array([0, 1, 0]))})
    assert dataset_checksum(raw) == dataset_checksum(same) != dataset_checksum(other)
    assert sha256_arrays({"a": x}) != sha256_arrays({"a": x.reshape(4, 3)})
