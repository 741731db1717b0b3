"""MM-IMDB (Arevalo et al., 2017) read from the GMU ``multimodal_imdb.hdf5`` file.

The file, as written by ``make_dataset.py`` of github.com/johnarevalo/gmu-mmimdb (Fuel format):

* ``images``       ``(N, 3, 256, 160)`` int32, axes labelled ``batch, channel, height, width``. Each
  poster was resized/cropped to 160×256 (W×H) and stored **caffe style**: BGR channel order with the
  ImageNet means ``(103.939, 116.779, 123.68)`` subtracted, then cast to int32 (so values lie in
  about -124..152). Third-party loaders of this file add the means back before use.
* ``features``     ``(N, 300)`` float32: mean word2vec (GoogleNews) vector of the plot.
* ``genres``       ``(N, 23)`` int32 multi-hot; ``genres.attrs['target_names']`` is a JSON list.
* ``imdb_ids`` ``(N,)`` S7, ``sequences`` (vlen int32), ``three_grams``, ``word_grams``,
  ``vgg_features`` ``(N, 4096)``: present, not used here.
* The split is the root attribute ``split``: Fuel's structured array with one row per (split, source)
  and fields ``split`` (``train``/``dev``/``test``), ``source``, ``start``, ``stop`` (a row range),
  ``indices``, ``available``, ``comment``. Rows are ordered train, dev, test: 15,552 / 2,608 / 7,799
  = 25,959 (the BM-NAS authors hard-code these lengths, and so do other loaders of the file).

Posters are read lazily (:class:`HDF5Rows`): indexing reads only the rows asked for. The poster
encoding is detected from a few rows (``image_encoding="auto"``: negative values → caffe BGR,
otherwise RGB 0..255) and every poster is returned as RGB ``uint8`` ``(3, H, W)``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...core.errors import DataError
from ...core.fileio import sha256 as sha256_file
from ...core.fileio import write_json_sorted
from ...core.registry import optional
from .base import RawDataset, RawSplit, register_dataset

SPLIT_SIZES = {"train": 15552, "val": 2608, "test": 7799}
REQUIRED_KEYS = ("images", "features", "genres")
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
IMAGE_ENCODINGS = ("auto", "caffe_bgr", "rgb")
_FUEL_SPLIT_NAMES = {
    "train": "train",
    "dev": "val",
    "valid": "val",
    "val": "val",
    "validation": "val",
    "test": "test",
}


def _h5py():
    return optional("h5py", "reading MM-IMDB", "pip install 'bmnas[mmimdb]'")


def caffe_bgr_to_rgb(x: np.ndarray) -> np.ndarray:
    """Caffe-style posters ``(N, 3, H, W)`` (BGR, ImageNet means subtracted, int) → RGB ``uint8``.

    The GMU file holds ``trunc(v - mean)`` of integer pixels ``v`` (the float → int32 cast truncates
    toward zero), so ``v = stored + ceil(mean)`` for positive values and ``stored + floor(mean)`` for
    negative ones: the exact inverse, except that 0 could be either (``round(mean)`` is taken).
    """
    mean = np.asarray(CAFFE_BGR_MEAN, dtype=np.float64).reshape(1, 3, 1, 1)
    offset = np.where(x > 0, np.ceil(mean), np.where(x < 0, np.floor(mean), np.round(mean)))
    rgb = (x + offset)[:, ::-1]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def rgb_to_uint8(x: np.ndarray) -> np.ndarray:
    """RGB posters ``(N, 3, H, W)`` with values 0..255 → ``uint8``."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class HDF5Rows:
    """Rows ``[start, stop)`` of one HDF5 dataset, as a lazy ``(N, *row_shape)`` array.

    Indexing with an int, a slice, an integer array or a boolean mask reads only those rows (in
    one contiguous read when they are consecutive); ``transform`` maps the rows read to the result.
    The file is opened on first access in each process, so the object pickles (DataLoader workers).
    """

    def __init__(
        self,
        path: str | Path,
        key: str,
        start: int,
        stop: int,
        dtype: np.dtype | str,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.path, self.key = Path(path), key
        self.start, self.stop = int(start), int(stop)
        self.dtype = np.dtype(dtype)
        self.transform = transform
        with _h5py().File(self.path, "r") as f:
            self.row_shape = tuple(f[key].shape[1:])
        self._file = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.stop - self.start, *self.row_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        return f"HDF5Rows({str(self.path)!r}, {self.key!r}, rows {self.start}:{self.stop}, {self.dtype})"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def _dataset(self):
        if self._file is None:
            self._file = _h5py().File(self.path, "r")
        return self._file[self.key]

    def __getitem__(self, index) -> np.ndarray:
        rest = ()
        if isinstance(index, tuple):
            index, rest = index[0], index[1:]
        rows = np.arange(len(self))[index]
        scalar = rows.ndim == 0
        rows = np.atleast_1d(rows) + self.start
        ds = self._dataset()
        if rows.size == 0:
            data = np.empty((0, *self.row_shape), dtype=ds.dtype)
        elif rows[-1] - rows[0] + 1 == rows.size and np.all(np.diff(rows) == 1):
            data = ds[int(rows[0]) : int(rows[-1]) + 1]
        else:  # h5py wants increasing, unique indices
            uniq, inverse = np.unique(rows, return_inverse=True)
            data = ds[uniq][inverse]
        data = self.transform(data) if self.transform else data.astype(self.dtype, copy=False)
        out = data[0] if scalar else data
        return out[rest] if rest else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def detect_image_encoding(images, probe: int = 16) -> str:
    """``"caffe_bgr"`` if a few posters spread over the file hold negative values, else ``"rgb"``."""
    n = images.shape[0]
    rows = np.unique(np.linspace(0, max(n - 1, 0), min(n, probe)).astype(int))
    sample = images[rows] if n else np.zeros((0,))
    if sample.size and sample.min() < 0:
        return "caffe_bgr"
    if sample.size and sample.max() > 255:
        raise DataError(
            f"'images' values reach {sample.max()}; expected RGB 0..255 or caffe BGR with the means "
            f"subtracted; pass image_encoding= explicitly"
        )
    return "rgb"


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes | np.bytes_) else str(value)


def read_split_ranges(f, path: Path) -> dict[str, tuple[int, int]] | None:
    """The ``train``/``val``/``test`` row ranges of Fuel's ``split`` attribute, or None if absent."""
    if "split" not in f.attrs:
        return None
    table = f.attrs["split"]
    fields = table.dtype.names or ()
    if not {"split", "source", "start", "stop"} <= set(fields):
        raise DataError(
            f"{path}: root attribute 'split' has fields {fields}; expected Fuel's split array with "
            f"'split', 'source', 'start', 'stop'"
        )
    ranges: dict[str, dict[str, tuple[int, int]]] = {}
    for row in table:
        if "available" in fields and not bool(row["available"]):
            continue
        split, source = _text(row["split"]), _text(row["source"])
        if source in REQUIRED_KEYS and split in _FUEL_SPLIT_NAMES:
            ranges.setdefault(_FUEL_SPLIT_NAMES[split], {})[source] = (int(row["start"]), int(row["stop"]))
    out = {}
    for split in SPLIT_SIZES:
        per_source = ranges.get(split, {})
        if set(per_source) != set(REQUIRED_KEYS) or len(set(per_source.values())) != 1:
            raise DataError(
                f"{path}: the 'split' attribute gives {split!r} ranges {per_source}; every split needs "
                f"one common (start, stop) for {list(REQUIRED_KEYS)} (Fuel names: train, dev, test)"
            )
        out[split] = next(iter(per_source.values()))
    return out


def _ranges_from_sizes(sizes: tuple[int, int, int]) -> dict[str, tuple[int, int]]:
    bounds = np.cumsum([0, *sizes])
    return {s: (int(bounds[i]), int(bounds[i + 1])) for i, s in enumerate(SPLIT_SIZES)}


def _open(path: Path):
    if not path.exists():
        raise DataError(f"{path}: no such file; download multimodal_imdb.hdf5 (GMU MM-IMDB) first")
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: cannot be read as HDF5 ({err})") from err


def _check_layout(f, path: Path) -> int:
    missing = [k for k in REQUIRED_KEYS if k not in f]
    if missing:
        raise DataError(
            f"{path}: missing dataset(s) {missing} (found {sorted(f.keys())}); the GMU "
            f"multimodal_imdb.hdf5 holds 'images' (N, 3, H, W), 'features' (N, 300), 'genres' (N, 23)"
        )
    images, features, genres = (f[k] for k in REQUIRED_KEYS)
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"{path}: 'images' has shape {images.shape}; expected (N, 3, H, W)")
    if features.ndim != 2 or genres.ndim != 2:
        raise DataError(
            f"{path}: 'features' {features.shape} and 'genres' {genres.shape} must be (N, D) and (N, K)"
        )
    n = images.shape[0]
    if features.shape[0] != n or genres.shape[0] != n:
        raise DataError(
            f"{path}: sample counts differ: images {n}, features {features.shape[0]}, "
            f"genres {genres.shape[0]}"
        )
    return n


def _read_text(f, path: Path, start: int, stop: int) -> np.ndarray:
    text = np.asarray(f["features"][start:stop], dtype=np.float32)
    bad = ~np.isfinite(text).all(axis=1)
    if bad.any():
        rows = (np.flatnonzero(bad)[:5] + start).tolist()
        warnings.warn(
            f"{path}: {int(bad.sum())} plot vectors in rows {start}:{stop} are NaN/inf (plots without a "
            f"word2vec word; first rows {rows}); they are set to zeros",
            stacklevel=3,
        )
        text[bad] = 0.0
    return text


def _read_genres(f, path: Path, start: int, stop: int) -> np.ndarray:
    genres = np.asarray(f["genres"][start:stop])
    bad = np.argwhere((genres != 0) & (genres != 1))
    if bad.size:
        r, c = bad[0]
        raise DataError(f"{path}: genres[{r + start}, {c}] = {genres[r, c]}; genres must be multi-hot 0/1")
    return genres.astype(np.float32)


def file_checksum(path: Path, root: Path) -> str:
    """SHA-256 of ``path``, computed once and remembered under ``root/mmimdb/`` by (name, size, mtime)."""
    stat = path.stat()
    memo = root / "mmimdb" / "checksums" / f"{path.name}-{stat.st_size}-{stat.st_mtime_ns}.json"
    try:
        return json.loads(memo.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_json_sorted(memo, {"path": str(path), "sha256": digest})
    return digest


@register_dataset("mmimdb")
def mmimdb(
    root: Path,
    *,
    path: str | Path,
    image_encoding: str = "auto",
    split_sizes: tuple[int, int, int] | None = None,
    limit: int | None = None,
    image_weights: str | None = None,
    text_weights: str | None = None,
    pretrain_epochs: int | None = None,
) -> RawDataset:
    """MM-IMDB from ``multimodal_imdb.hdf5``: ``image`` posters and ``text`` plot vectors, 23 genres.

    Args:
        root: cache directory; the file is read in place, its SHA-256 is remembered under
            ``root/mmimdb/checksums/``, so the 12.7 GB file is hashed once.
        path: the GMU ``multimodal_imdb.hdf5``.
        image_encoding: ``auto`` (detect), ``caffe_bgr`` (the GMU file) or ``rgb`` (values 0..255).
        split_sizes: ``(train, val, test)`` consecutive row counts, for files without Fuel's ``split``
            attribute (default: the attribute, else the GMU sizes 15,552 / 2,608 / 7,799).
        limit: keep only the first ``limit`` samples of each split (quick trials).
        image_weights, text_weights, pretrain_epochs: passed on to the backbones (see
            :mod:`bmnas.features.backbones.mmimdb`) through the provenance.

    Returns:
        A :class:`RawDataset` whose splits hold ``image`` (lazy :class:`HDF5Rows`, ``(N, 3, H, W)``
        RGB uint8), ``text`` ``(N, 300)`` float32 and multi-hot labels ``(N, 23)`` float32.
    """
    if image_encoding not in IMAGE_ENCODINGS:
        raise DataError(f"image_encoding must be one of {IMAGE_ENCODINGS}, got {image_encoding!r}")
    path = Path(path).expanduser()
    with _open(path) as f:
        n = _check_layout(f, path)
        if split_sizes is not None:
            ranges, split_source = _ranges_from_sizes(tuple(split_sizes)), f"split_sizes={tuple(split_sizes)}"
        else:
            ranges, split_source = read_split_ranges(f, path), "Fuel 'split' attribute"
            if ranges is None:
                if n != sum(SPLIT_SIZES.values()):
                    raise DataError(
                        f"{path}: no Fuel 'split' attribute and {n} samples (the GMU file has "
                        f"{sum(SPLIT_SIZES.values())}); pass split_sizes=(train, val, test)"
                    )
                ranges = _ranges_from_sizes(tuple(SPLIT_SIZES.values()))
                split_source = "GMU sizes 15552/2608/7799"
        for split, (start, stop) in ranges.items():
            if not 0 <= start <= stop <= n:
                raise DataError(f"{path}: {split} rows {start}:{stop} fall outside the {n} samples")
        encoding = detect_image_encoding(f["images"]) if image_encoding == "auto" else image_encoding
        transform = caffe_bgr_to_rgb if encoding == "caffe_bgr" else rgb_to_uint8
        target_names = f["genres"].attrs.get("target_names")
        class_names = tuple(json.loads(_text(target_names))) if target_names is not None else ()
        splits = {}
        for split, (start, stop) in ranges.items():
            if limit is not None:
                stop = min(stop, start + int(limit))
            images = HDF5Rows(path, "images", start, stop, np.uint8, transform)
            splits[split] = RawSplit(
                {"image": images, "text": _read_text(f, path, start, stop)},
                _read_genres(f, path, start, stop),
            )
    checksum = hashlib.sha256(
        json.dumps(
            {"file": file_checksum(path, Path(root)), "ranges": ranges, "limit": limit, "encoding": encoding},
            sort_keys=True,
        ).encode()
    ).hexdigest()
    provenance = {
        "source": "MM-IMDB (Arevalo et al., ICLR-W 2017), GMU multimodal_imdb.hdf5",
        "url": "http://lisi1.unal.edu.co/mmimdb/",
        "licence": "IMDb-derived data for research; see the dataset page for the terms",
        "path": str(path),
        "sha256": checksum,
        "split": split_source,
        "image_encoding": encoding,
    }
    options = {
        "image_weights": image_weights,
        "text_weights": text_weights,
        "pretrain_epochs": pretrain_epochs,
    }
    provenance.update({f"backbone.{k}": str(v) for k, v in options.items() if v is not None})
    return RawDataset("mmimdb", splits, provenance, class_names)
