"""The generic ``--data DIR`` format: one ``<split>.npz`` per split, read, validated and written."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..core.data import SPLITS, FeatureData
from ..core.errors import DataError
from ..core.fileio import atomic_write, sha256
from .validate import build_feature_data


def read_generic_dir(path: str | Path) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray]]:
    """Read ``DIR/{train,val,test}.npz`` (raw shapes) without pooling."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"--data {root}: not a directory; it must hold train.npz, val.npz, test.npz")
    raw = {}
    for split in SPLITS:
        file = root / f"{split}.npz"
        if not file.exists():
            raise DataError(f"{file}: missing; the generic format needs {[s + '.npz' for s in SPLITS]}")
        arrays = _read_npz(file)
        if "label" not in arrays:
            raise DataError(f"{file}: no 'label' array; add labels of shape (N,) or (N, K)")
        labels = arrays.pop("label")
        raw[split] = (arrays, labels)
    return raw


_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, KeyError)


def _read_npz(file: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive (never unpickling); a damaged file is a DataError."""
    fix = "write it again with numpy.savez(file, label=..., **features)"
    try:
        z = np.load(file, allow_pickle=False)
    except _NPZ_ERRORS as err:
        raise DataError(f"{file}: cannot be read as .npz ({type(err).__name__}: {err}); {fix}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{file}: a single .npy array, not an .npz archive of named arrays; {fix}")
    with z:
        try:
            return {k: z[k] for k in z.files}
        except _NPZ_ERRORS as err:  # a flipped byte shows as a CRC error only when the array is read
            raise DataError(f"{file}: damaged .npz ({type(err).__name__}: {err}); {fix}") from None


def load_generic_dir(
    path: str | Path,
    length: int,
    pooling: str = "max",
    task_type: str | None = None,
    num_outputs: int | None = None,
) -> FeatureData:
    """Load and pool the generic format (SPEC §10)."""
    raw = read_generic_dir(path)
    data = build_feature_data(raw, length, pooling, task_type, num_outputs, name=str(path))
    sums = {f"{s}.npz": sha256(Path(path) / f"{s}.npz") for s in SPLITS}
    return FeatureData(data.splits, data.task, data.name, {"files_sha256": sums})


def export_generic_dir(data: FeatureData, path: str | Path) -> Path:
    """Write pooled features in the generic format: ``(N, C_in, L)`` maps, ``(N, C_in)`` vectors.

    Loading the export with the same L gives the same pooled features back.
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise DataError(f"--out {root} is a file; the export needs a directory (new or empty)")
    root.mkdir(parents=True, exist_ok=True)
    for split, sp in data.splits.items():
        arrays = {}
        for k, v in sp.features.items():
            arrays[k] = v[:, 0, :] if v.shape[1] == 1 else np.ascontiguousarray(v.transpose(0, 2, 1))
        # np.savez appends ".npz" to a name without it: the temp file gets a file object instead
        atomic_write(root / f"{split}.npz", lambda p, a=arrays, y=sp.labels: _savez(p, y, a))
    return root


def _savez(path: Path, labels: np.ndarray, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, label=labels, **arrays)
