"""The raw-dataset contract and registry: each dataset yields per-split raw inputs and labels.

A dataset builder is a function ``(root: Path, **options) -> RawDataset`` registered by name with
:func:`register_dataset`. ``root`` is a directory the builder may use to prepare and cache files.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RawSplit:
    """One split of raw inputs: ``modality -> (N, ...)`` arrays and labels ``(N,)`` or ``(N, K)``."""

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


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


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator: register a dataset builder under ``name``."""

    def wrap(fn: DatasetBuilder) -> DatasetBuilder:
        _DATASETS[name] = fn
        return fn

    return wrap


def _import_quietly(module: str) -> None:
    """Import ``module`` so that its ``@register_*`` decorators run; a missing module is fine."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching a glob pattern."""
    return sorted(n for n in _DATASETS if fnmatch.fnmatch(n, pattern))


def create_dataset(name: str, root: str | Path, **options) -> RawDataset:
    """Build (preparing on first use) the dataset ``name`` under ``root``."""
    if name not in _DATASETS:
        _import_quietly(f"bmnas.datasets.{name}")
    if name not in _DATASETS:
        raise KeyError(f"unknown dataset {name!r}; registered datasets: {list_datasets()}")
    return _DATASETS[name](Path(root), **options)
