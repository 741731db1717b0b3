"""On-disk cache of pooled features (docs/DESIGN.md §2): written once per key, checksummed, memory-mapped.

One cache entry holds the pooled features ``name -> (N, L_k, C_in)`` float32 of one backbone on one
split. Its key (:class:`CacheKey`) names everything the features depend on: the dataset and the
SHA-256 of its prepared arrays, the split, the modality, the backbone's weights hash, the feature
layers, L and the pooling mode. Layout::

    <root>/<dataset>/<split>-<modality>-<digest>/
        manifest.json       key, per-file shape, dtype and SHA-256
        00.npy, 01.npy, …   one array per feature, in the backbone's layer order

An entry is built in a temporary directory and published with one ``os.replace``
(:func:`bmnas.core.fileio.publish_dir`): a killed run leaves no half entry. Loading verifies the
manifest (:data:`~bmnas.core.schemas.CACHE_MANIFEST`), its key and every file's SHA-256 (one pass
over the bytes) before memory-mapping the arrays
with ``np.load(mmap_mode="r")``; a corrupt or stale entry is logged, deleted and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core import locks
from ..core.fileio import make_staging_dir, naming_write_errors, publish_dir, remove_dir, write_json_sorted
from ..core.fileio import sha256 as sha256_file
from ..core.schema import problem
from ..core.schemas import CACHE_MANIFEST

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


# ------------------------------------------------------------------------------------- feature cache
@dataclass(frozen=True)
class CacheKey:
    """Everything one backbone's pooled features on one split depend on."""

    dataset: str
    dataset_checksum: str
    split: str
    modality: str
    weights: str  # Backbone.weights_hash()
    layers: tuple[tuple[str, str], ...]  # (feature name, module path), in backbone order
    length: int
    pooling: str

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["layers"] = [list(p) for p in self.layers]
        d["format"] = FORMAT_VERSION
        return d

    def digest(self) -> str:
        """First 20 hex digits of the SHA-256 of the key's canonical JSON."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    @property
    def feature_names(self) -> list[str]:
        return [name for name, _ in self.layers]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


class CacheError(RuntimeError):
    """A cache entry that cannot be used (missing file, bad checksum, stale key)."""


class FeatureCache:
    """Pooled features on disk under ``root`` (see the module docstring for the layout)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry_dir(self, key: CacheKey) -> Path:
        return self.root / _safe(key.dataset) / f"{_safe(key.split)}-{_safe(key.modality)}-{key.digest()}"

    def load(self, key: CacheKey) -> dict[str, np.ndarray] | None:
        """The cached arrays of ``key`` as read-only memory maps, or None when absent or unusable.

        A corrupt or stale entry is logged and deleted, so that the caller rebuilds it.
        """
        path = self.entry_dir(key)
        if not path.is_dir():
            return None
        try:
            return self._read(path, key)
        except CacheError as err:
            log.warning("feature cache %s is unusable (%s); rebuilding it", path, err)
            remove_dir(path)
            return None

    @staticmethod
    def _read(path: Path, key: CacheKey) -> dict[str, np.ndarray]:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError, RecursionError) as err:
            raise CacheError(f"unreadable manifest: {type(err).__name__}: {err}") from None
        damage = problem(manifest, CACHE_MANIFEST)
        if damage is not None:
            raise CacheError(f"damaged manifest: {damage}")
        if manifest["key"] != key.as_dict():
            raise CacheError("stale key: the manifest was written for other inputs")
        entries = manifest["features"]
        if [e["name"] for e in entries] != key.feature_names:
            raise CacheError("the manifest lists other features")
        out: dict[str, np.ndarray] = {}
        for e in entries:
            file = path / e["file"]
            if not file.is_file():
                raise CacheError(f"missing file {e['file']}")
            if sha256_file(file) != e["sha256"]:
                raise CacheError(f"checksum mismatch in {e['file']} ({e['name']})")
            try:
                arr = np.load(file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise CacheError(f"{e['file']} is not a readable .npy ({err})") from err
            if list(arr.shape) != e["shape"] or arr.dtype.str != e["dtype"]:
                raise CacheError(f"{e['file']} has shape {arr.shape} {arr.dtype}, manifest says {e}")
            out[e["name"]] = arr
        return out

    def store(self, key: CacheKey, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Write ``arrays`` (name -> (N, L_k, C_in)) as the entry of ``key``; return them memory-mapped."""
        if list(arrays) != key.feature_names:
            raise ValueError(f"arrays {list(arrays)} do not match the key's features {key.feature_names}")
        final = self.entry_dir(key)
        staging = make_staging_dir(final)
        try:
            entries = []
            for i, (name, arr) in enumerate(arrays.items()):
                file = f"{i:02d}.npy"
                with naming_write_errors(final):  # a full disk names the entry, not its staging copy
                    np.save(staging / file, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
                entries.append(
                    {
                        "name": name,
                        "file": file,
                        "shape": list(arr.shape),
                        "dtype": np.dtype(np.float32).str,
                        "sha256": sha256_file(staging / file),
                    }
                )
            write_json_sorted(staging / MANIFEST, {"key": key.as_dict(), "features": entries})
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        publish_dir(staging, final)
        return self._read(final, key)

    def store_rows(
        self,
        key: CacheKey,
        shapes: Mapping[str, tuple[int, ...]],
        fill: Callable[[Mapping[str, np.ndarray]], None],
    ) -> dict[str, np.ndarray]:
        """Write the entry of ``key`` in place: ``fill`` gets one writable float32 memory map per
        feature (name -> ``shapes[name]``) and fills it, e.g. chunk by chunk; nothing is held in memory.

        A ``fill`` that raises leaves no entry (its staging directory is deleted).
        """
        if list(shapes) != key.feature_names:
            raise ValueError(f"shapes {list(shapes)} do not match the key's features {key.feature_names}")
        final = self.entry_dir(key)
        staging = make_staging_dir(final)
        try:
            files = {name: f"{i:02d}.npy" for i, name in enumerate(shapes)}
            with naming_write_errors(final):
                maps = {
                    name: np.lib.format.open_memmap(
                        staging / files[name], mode="w+", dtype=np.float32, shape=tuple(shapes[name])
                    )
                    for name in shapes
                }
                fill(maps)
                for m in maps.values():
                    m.flush()
            del maps
            entries = [
                {
                    "name": name,
                    "file": files[name],
                    "shape": list(shapes[name]),
                    "dtype": np.dtype(np.float32).str,
                    "sha256": sha256_file(staging / files[name]),
                }
                for name in shapes
            ]
            write_json_sorted(staging / MANIFEST, {"key": key.as_dict(), "features": entries})
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        publish_dir(staging, final)
        return self._read(final, key)

    def get_or_compute(
        self, key: CacheKey, compute: Callable[[], Mapping[str, np.ndarray]]
    ) -> tuple[dict[str, np.ndarray], bool]:
        """``(arrays, hit)``: the cached entry of ``key``, computing and storing it on a miss.

        A miss is built under the entry's lock: a second process asking for the same entry waits,
        then reads the first one's result instead of building (and replacing) it again.
        """
        return self._get_or_build(key, lambda: self.store(key, compute()))

    def get_or_fill(
        self,
        key: CacheKey,
        shapes: Mapping[str, tuple[int, ...]],
        fill: Callable[[Mapping[str, np.ndarray]], None],
    ) -> tuple[dict[str, np.ndarray], bool]:
        """``(arrays, hit)`` as :meth:`get_or_compute`, a miss written in place by :meth:`store_rows`."""
        return self._get_or_build(key, lambda: self.store_rows(key, shapes, fill))

    def _get_or_build(
        self, key: CacheKey, build: Callable[[], dict[str, np.ndarray]]
    ) -> tuple[dict[str, np.ndarray], bool]:
        cached = self.load(key)
        if cached is not None:
            return cached, True
        final = self.entry_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        with locks.locked(final.parent / f".{final.name}.lock"):
            cached = self.load(key)
            if cached is not None:
                return cached, True
            remove_leftovers(final)
            return build(), False


def remove_leftovers(final: Path) -> None:
    """Delete the staging and trash directories killed processes left beside ``final``.

    Call with ``final``'s lock held: every live builder of ``final`` holds it too.
    """
    for path in final.parent.glob(f".{final.name}.*"):
        if path.is_dir() and path.name.endswith((".tmp", ".old")):
            shutil.rmtree(path, ignore_errors=True)
