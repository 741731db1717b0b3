"""The raw-dataset contract and registry: each dataset yields per-split raw inputs and labels.

A dataset builder is a function ``(root: Path, **options) -> RawDataset`` registered by name with
:func:`register_dataset`. ``root`` is a directory the builder may use to prepare and cache files.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import importlib
import inspect
import pkgutil
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core import locks
from ...core.data import Labelled
from ...core.errors import BmnasError
from ...core.registry import import_quietly


@dataclass(frozen=True)
class RawSplit(Labelled):
    """One split of raw inputs: ``modality -> (N, ...)`` arrays and labels ``(N,)`` or ``(N, K)``.

    ``groups`` ``(N,)`` (optional): the item each row comes from, kept together by cross-validation
    (:attr:`bmnas.core.data.FeatureSplit.groups`). ``modality_labels`` (optional): a modality's own
    label per row, which its backbone is pre-trained on when it differs from the task's label (a
    task about how the modalities relate): :meth:`labels_of`.
    """

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray
    groups: np.ndarray | None = None
    modality_labels: Mapping[str, np.ndarray] = field(default_factory=dict)

    def labels_of(self, modality: str) -> np.ndarray:
        """The labels ``modality``'s backbone is pre-trained on (the task's labels by default)."""
        return self.modality_labels.get(modality, self.labels)


@dataclass(frozen=True)
class RawDataset:
    """A named dataset with train/val/test raw splits and its provenance (sources, licences)."""

    name: str
    splits: Mapping[str, RawSplit]
    provenance: Mapping[str, str] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.splits["train"].inputs)


DatasetBuilder = Callable[..., RawDataset]
_DATASETS: dict[str, DatasetBuilder] = {}


class OptionError(BmnasError, ValueError):
    """A --dataset-option whose value the dataset cannot use."""


class DatasetError(BmnasError, KeyError):
    """An unknown dataset name or dataset option."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator: register a dataset builder under ``name``."""

    def wrap(fn: DatasetBuilder) -> DatasetBuilder:
        _DATASETS[name] = fn
        return fn

    return wrap


def _import_all() -> None:
    """Import every module of :mod:`bmnas.features.datasets`, so that all builders are registered."""
    package = importlib.import_module("bmnas.features.datasets")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name != "base":
            import_quietly(f"bmnas.features.datasets.{module.name}")


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching a glob pattern (every dataset module is imported first)."""
    _import_all()
    return sorted(n for n in _DATASETS if fnmatch.fnmatch(n, pattern))


def dataset_options(name: str) -> list[str] | None:
    """The options builder ``name`` accepts, or None when they cannot be listed.

    A builder's keyword parameters, plus, for a builder taking ``**options``, the fields of the
    options dataclass its docstring names (``options: see :class:`AVMNISTOptions```).
    """
    fn = _DATASETS[name]
    params = list(inspect.signature(fn).parameters.values())[1:]  # after root
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        return names
    found = re.search(r":class:`~?(?:[\w.]+\.)?(\w+Options)`", fn.__doc__ or "")
    cls = getattr(inspect.getmodule(fn), found.group(1), None) if found else None
    if cls is None or not dataclasses.is_dataclass(cls):
        return None
    return names + [f.name for f in dataclasses.fields(cls)]


def create_dataset(name: str, root: str | Path, **options) -> RawDataset:
    """Build (preparing on first use) the dataset ``name`` under ``root``."""
    if name not in _DATASETS:
        import_quietly(f"bmnas.features.datasets.{name}")
    if name not in _DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; registered datasets: {list_datasets()}")
    valid = dataset_options(name)
    unknown = sorted(set(options) - set(valid)) if valid is not None else []
    if unknown:
        raise DatasetError(
            f"unknown --dataset-option {', '.join(unknown)} for dataset {name!r}; valid options: {valid}"
        )
    params = list(inspect.signature(_DATASETS[name]).parameters.values())[1:]  # after root
    missing = [
        p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in options
    ]
    if missing:
        example = " ".join(f"--dataset-option {m}=..." for m in missing)
        raise DatasetError(f"dataset {name!r} needs {example} (where its files are)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with locks.locked(root / f".{name}.prepare.lock"):  # one process prepares, the others wait
        _remove_leftovers(root / name)
        return _DATASETS[name](root, **options)


def _remove_leftovers(directory: Path) -> None:
    """Delete the staging folders killed preparations left in ``directory`` (its top level only).

    Call with the dataset's prepare lock held: only a preparation, which holds that lock, stages
    folders there. (Backbone weights are written a level deeper, outside the lock, and stay.)
    """
    for pattern in (".*.tmp", ".*.old"):
        for path in directory.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def sha256_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    """Hex SHA-256 of named arrays (names, dtypes, shapes and bytes, in the mapping's order)."""
    h = hashlib.sha256()
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def dataset_checksum(raw: RawDataset) -> str:
    """SHA-256 identifying a :class:`RawDataset`'s contents (what backbone weights are trained on).

    A builder that already checksums its prepared files publishes the result as
    ``raw.provenance["sha256"]`` (cheap); otherwise every split's inputs and labels are hashed.
    """
    known = raw.provenance.get("sha256") if raw.provenance else None
    if known:
        return str(known)
    h = hashlib.sha256(raw.name.encode())
    for split, sp in raw.splits.items():
        arrays = {f"{split}/{m}": np.asarray(x) for m, x in sp.inputs.items()}
        arrays[f"{split}/label"] = np.asarray(sp.labels)
        h.update(sha256_arrays(arrays).encode())
    return h.hexdigest()
