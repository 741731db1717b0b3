"""The generic ``--data DIR`` format (docs/DESIGN.md §12): one ``<split>.npz`` per split.

This module holds the format's one reader (:func:`read_npz`) and one writer (:func:`write_npz`);
:func:`load_generic_dir` reads, validates and pools a directory, :func:`export_generic_dir` writes
pooled features back in the format (:func:`generic_layout`).
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..core.data import SPLITS, FeatureData
from ..core.errors import DataError
from ..core.fileio import atomic_write, sha256
from .validate import build_feature_data, native

NPZ_FIX = "write it again with numpy.savez(file, label=..., **features)"

_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, KeyError)


def read_npz(path: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Raw features and labels (None when the file has no ``label`` array) of one generic ``.npz``.

    A ``group`` array is read and dropped (:func:`read_npz_grouped` keeps it).
    """
    arrays, labels, _ = read_npz_grouped(path)
    return arrays, labels


def read_npz_grouped(path: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray | None]:
    """``(features, labels, groups)`` of one generic ``.npz``; labels and groups are None when absent.

    ``group`` (optional) holds one id per row, integers or strings: rows of the same item (an
    utterance, a subject, a picture used twice) share an id and stay in one cross-validation fold.
    Never unpickles; arrays come in this machine's byte order (:func:`~bmnas.features.validate.native`).
    A missing, foreign or damaged file is a :class:`DataError` naming the file, the cause and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if path.suffix.lower() != ".npz":
        raise DataError(f"{path}: expected a .npz file of the generic format (or a directory of them)")
    try:
        z = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as err:
        raise DataError(f"{path}: cannot be read as .npz ({_cause(err)}); {NPZ_FIX}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not an .npz archive of named arrays; {NPZ_FIX}")
    with z:
        try:
            arrays = {k: native(z[k]) for k in z.files}  # big-endian arrays in this machine's order
        except _NPZ_ERRORS as err:  # a flipped byte shows as a CRC error only when the array is read
            raise DataError(f"{path}: damaged .npz ({_cause(err)}); {NPZ_FIX}") from None
    return arrays, arrays.pop("label", None), arrays.pop("group", None)


def _cause(err: BaseException) -> str:
    """``Type: first line of the message`` (error messages stay one line)."""
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def write_npz(
    path: str | Path,
    labels: np.ndarray,
    features: Mapping[str, np.ndarray],
    groups: np.ndarray | None = None,
) -> Path:
    """Write one split atomically: ``label`` first, then the feature arrays (and ``group``, if given).

    Through a file object: given a file name, ``np.savez`` would append ``.npz`` to the temporary one.
    """

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, label=labels, **features, **({} if groups is None else {"group": groups}))

    return atomic_write(path, write)


def read_generic_dir(
    path: str | Path,
) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]]:
    """Read ``DIR/{train,val,test}.npz`` (raw shapes) without pooling: ``split -> (features, labels,
    groups)`` (groups None where a split has no ``group`` array)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"--data {root}: not a directory; it must hold train.npz, val.npz, test.npz")
    raw = {}
    for split in SPLITS:
        file = root / f"{split}.npz"
        if not file.exists():
            raise DataError(f"{file}: missing; the generic format needs {[s + '.npz' for s in SPLITS]}")
        arrays, labels, groups = read_npz_grouped(file)
        if labels is None:
            raise DataError(f"{file}: no 'label' array; add labels of shape (N,) or (N, K)")
        raw[split] = (arrays, labels, groups)
    return raw


def load_generic_dir(
    path: str | Path,
    length: int,
    pooling: str = "max",
    task_type: str | None = None,
    num_outputs: int | None = None,
) -> FeatureData:
    """Read, validate and pool the generic format (docs/DESIGN.md §2, §12); ``info`` holds its SHA-256s."""
    raw = read_generic_dir(path)
    features = {s: (feats, labels) for s, (feats, labels, _) in raw.items()}
    groups = {s: g for s, (_, _, g) in raw.items()}
    data = build_feature_data(features, length, pooling, task_type, num_outputs, str(path), groups)
    sums = {f"{s}.npz": sha256(Path(path) / f"{s}.npz") for s in SPLITS}
    return FeatureData(data.splits, data.task, data.name, {"files_sha256": sums})


def generic_layout(pooled: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pooled ``(N, L_k, C_in)`` features as the format stores them: ``(N, C_in, L)`` or ``(N, C_in)``.

    A vector (``L_k = 1``) is stored as ``(N, C_in)``; loading the arrays with the same L pools them
    to the same ``(N, L_k, C_in)`` features.
    """
    return {
        k: v[:, 0, :] if v.shape[1] == 1 else np.ascontiguousarray(v.transpose(0, 2, 1))
        for k, v in pooled.items()
    }


def export_generic_dir(data: FeatureData, path: str | Path) -> Path:
    """Write pooled features in the generic format: ``(N, C_in, L)`` maps, ``(N, C_in)`` vectors
    (and each split's ``group`` codes, when it has them).

    Loading the export with the same L gives the same pooled features back.
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise DataError(f"--out {root} is a file; the export needs a directory (new or empty)")
    root.mkdir(parents=True, exist_ok=True)
    for split, sp in data.splits.items():
        write_npz(root / f"{split}.npz", sp.labels, generic_layout(sp.features), sp.groups)
    return root
