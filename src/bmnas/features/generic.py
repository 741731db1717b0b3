"""The generic ``--data DIR`` format (docs/DESIGN.md §12): one ``<split>.npz`` per split, or a
directory per split of ``.npy`` files for data larger than memory.

This module holds the format's one reader (:func:`read_npz`) and one writer (:func:`write_npz`);
:func:`load_generic_dir` reads, validates and pools a directory, :func:`export_generic_dir` writes
pooled features back in the format (:func:`generic_layout`). An optional ``class_names`` array (in
``train.npz``, or ``train/class_names.npy``) names the classes (or the multilabel columns).

The ``.npy`` layout, ``DIR/<split>/<modality>.<layer>.npy`` plus ``label.npy`` (and an optional
``group.npy``), is memory-mapped (:func:`read_npy_split`) and pooled chunk by chunk
(:func:`~bmnas.features.pooling.pool_chunks`) into the feature cache, its values checked chunk by
chunk: peak memory is one chunk, not the data. Its cache key is each file's name, size,
modification time and array header (hashing every byte would read the data a second time).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..core.data import SPLITS, FeatureData, FeatureSplit, group_codes
from ..core.errors import DataError
from ..core.fileio import atomic_write, sha256
from .cache import CacheKey, FeatureCache
from .pooling import pool_chunks, pooled_shape
from .validate import (
    MIN_ROWS,
    build_feature_data,
    check_groups,
    check_like_train,
    check_values,
    infer_task,
    native,
    validate_split,
)

CLASS_NAMES = "class_names"
RAW_SHAPES = "raw_shapes"
"""``info`` key (and ``metrics.json``'s ``data.info``): feature -> per-sample raw shape, as read."""
NPY_RESERVED = ("label", "group", CLASS_NAMES)

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
    arrays.pop(CLASS_NAMES, None)  # read by read_class_names
    return arrays, arrays.pop("label", None), arrays.pop("group", None)


def read_class_names(path: str | Path) -> list[str]:
    """The optional ``class_names`` array of a generic ``.npz`` or ``.npy`` file ([] without one)."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        if path.suffix == ".npy":
            names = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                if CLASS_NAMES not in z.files:
                    return []
                names = z[CLASS_NAMES]
    except _NPZ_ERRORS as err:
        raise DataError(
            f"{path}: 'class_names' cannot be read ({_cause(err)}); store it as an array of str"
        ) from None
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(
            f"{path}: 'class_names' has shape {names.shape} and dtype {names.dtype}; store a 1-D array of "
            f"strings, e.g. numpy.array(['cat', 'dog'])"
        )
    return [str(n) for n in names.tolist()]


def _with_class_names(data: FeatureData, names: list[str], where: Path, info: dict) -> FeatureData:
    if names and len(names) != data.task.num_outputs:
        raise DataError(
            f"{where}: 'class_names' has {len(names)} names but the labels have {data.task.num_outputs} "
            f"{'classes' if data.task.type == 'multiclass' else 'columns'}; give one name per class"
        )
    if len(set(names)) != len(names):
        raise DataError(f"{where}: 'class_names' repeats a name; every class needs its own name")
    return FeatureData(data.splits, data.task, data.name, {**info, **({CLASS_NAMES: names} if names else {})})


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


def is_npy_dir(path: str | Path) -> bool:
    """True when ``path`` holds the ``.npy`` layout (``train/``, ``val/``, ``test/``), not ``.npz`` files."""
    root = Path(path)
    dirs = [s for s in SPLITS if (root / s).is_dir()]
    if dirs and any((root / f"{s}.npz").exists() for s in SPLITS):
        raise DataError(
            f"--data {root}: holds both .npz files and split folders {dirs}; keep one layout of the format"
        )
    return bool(dirs)


def read_npy_split(
    path: str | Path,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
    """``(features, labels, groups)`` of one split folder: features memory-mapped read-only, in name order.

    ``<modality>.<layer>.npy`` are the features, ``label.npy`` the labels, ``group.npy`` (optional,
    ``(N,)``) sample groups; never unpickles.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: missing; the .npy layout needs a folder per split {list(SPLITS)}")
    labels_file = folder / "label.npy"
    if not labels_file.is_file():
        raise DataError(f"{labels_file}: missing; add labels of shape (N,) or (N, K) as label.npy")
    feats = {}
    for file in sorted(folder.glob("*.npy")):
        if file.stem in NPY_RESERVED:
            continue
        feats[file.stem] = _load_npy(file, mmap=True)
    labels = native(_load_npy(labels_file, mmap=False))
    group_file = folder / "group.npy"
    groups = _load_npy(group_file, mmap=False) if group_file.is_file() else None
    if groups is not None and (groups.ndim != 1 or groups.shape[0] != labels.shape[0]):
        raise DataError(
            f"{group_file}: shape {groups.shape}; groups must be (N,) with N = {labels.shape[0]} rows"
        )
    return feats, labels, groups


def _load_npy(file: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except _NPZ_ERRORS as err:
        raise DataError(f"{file}: cannot be read as .npy ({_cause(err)}); write it with numpy.save") from None


def _files_digest(folder: Path, feats: dict[str, np.ndarray]) -> str:
    """Identity of a split folder without reading it: each file's name, size, mtime and array header."""
    h = hashlib.sha256()
    for file in sorted(folder.glob("*.npy")):
        st = os.stat(file)
        head = feats.get(file.stem)
        header = f"{head.shape}|{head.dtype.str}" if head is not None else ""
        h.update(f"{file.name}|{st.st_size}|{st.st_mtime_ns}|{header}\n".encode())
    return h.hexdigest()


def load_npy_dir(
    path: str | Path,
    length: int,
    pooling: str = "max",
    task_type: str | None = None,
    num_outputs: int | None = None,
    cache: str | Path | None = None,
) -> FeatureData:
    """Read, validate and pool the ``.npy`` layout chunk by chunk (the same checks as ``.npz``).

    With a cache root (``cache``), the pooled features are written in place into
    ``<cache>/features/generic-npy/`` and come back memory-mapped; without, they are pooled into memory.
    """
    root = Path(path)
    raw = {s: read_npy_split(root / s) for s in SPLITS}
    for split in SPLITS:
        feats, labels, groups = raw[split]
        validate_split(f"{root}/{split}", feats, labels, MIN_ROWS[split], values=False)
        check_like_train(f"{root}/{split}", feats, raw["train"][0])
        if groups is not None:
            check_groups(f"{root}/{split}", groups, len(labels))
    codes = group_codes({s: raw[s][2] for s in SPLITS})
    task = infer_task({s: raw[s][1] for s in SPLITS}, task_type, num_outputs)
    store = FeatureCache(Path(cache) / "features") if cache is not None else None
    splits, dirs = {}, []
    for split in SPLITS:
        feats, labels, _ = raw[split]
        shapes = {k: pooled_shape(tuple(v.shape), length) for k, v in feats.items()}

        def fill(out, feats=feats, split=split) -> None:
            for k, v in feats.items():
                where = f"{root}/{split}/{k}.npy"

                def check(chunk: np.ndarray, first: int, k: str = k, where: str = where) -> None:
                    check_values(where, k, chunk, first)

                pool_chunks(v, length, pooling, out=out[k], on_chunk=check)

        if store is None:
            pooled = {k: np.empty(sh, dtype=np.float32) for k, sh in shapes.items()}
            fill(pooled)
        else:
            key = CacheKey(
                "generic-npy",
                _files_digest(root / split, feats),
                split,
                "all",
                "none",
                tuple((k, f"{k}.npy") for k in feats),
                length,
                pooling,
            )
            pooled, _ = store.get_or_fill(key, shapes, fill)
            dirs.append(str(store.entry_dir(key)))
        y = labels.astype(np.int64) if task.type == "multiclass" else labels.astype(np.float32)
        splits[split] = FeatureSplit(pooled, y, codes[split])
    data = FeatureData(splits, task, str(path))
    names = read_class_names(root / "train" / f"{CLASS_NAMES}.npy")
    info = {"layout": "npy", "cache_dirs": dirs, RAW_SHAPES: raw_shapes(raw["train"][0])}
    return _with_class_names(data, names, root / "train", info)


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
    cache: str | Path | None = None,
) -> FeatureData:
    """Read, validate and pool the generic format (docs/DESIGN.md §2, §12); ``info`` holds its SHA-256s
    (and ``class_names`` when ``train.npz`` has them). The ``.npy`` layout goes to :func:`load_npy_dir`."""
    if Path(path).is_dir() and is_npy_dir(path):
        return load_npy_dir(path, length, pooling, task_type, num_outputs, cache)
    raw = read_generic_dir(path)
    features = {s: (feats, labels) for s, (feats, labels, _) in raw.items()}
    groups = {s: g for s, (_, _, g) in raw.items()}
    data = build_feature_data(features, length, pooling, task_type, num_outputs, str(path), groups)
    sums = {f"{s}.npz": sha256(Path(path) / f"{s}.npz") for s in SPLITS}
    names = read_class_names(Path(path) / "train.npz")
    info = {"files_sha256": sums, RAW_SHAPES: raw_shapes(raw["train"][0])}
    return _with_class_names(data, names, Path(path) / "train.npz", info)


def raw_shapes(features: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    """Each feature's per-sample shape before pooling (``(C_in,)``, ``(C_in, T)``, ``(C_in, H, W)`` …)."""
    return {k: [int(d) for d in np.shape(v)[1:]] for k, v in features.items()}


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
    """Write pooled features in the generic format: ``(N, C_in, L)`` maps, ``(N, C_in)`` vectors,
    each split's ``group`` codes (when it has them) and the class names (``info["class_names"]``) in
    ``train.npz``.

    Loading the export with the same L gives the same pooled features back.
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise DataError(f"--out {root} is a file; the export needs a directory (new or empty)")
    root.mkdir(parents=True, exist_ok=True)
    names = [str(c) for c in (data.info or {}).get(CLASS_NAMES, [])]
    named = {CLASS_NAMES: np.array(names)} if names and len(names) == data.task.num_outputs else {}
    for split, sp in data.splits.items():
        extra = named if split == "train" else {}
        write_npz(root / f"{split}.npz", sp.labels, {**generic_layout(sp.features), **extra}, sp.groups)
    return root
