"""Predict with a trained run: its inputs (features, raw inputs, its own data) and the written outputs.

``bmnas predict`` and the API's front door: :func:`load` (:mod:`bmnas.serve.model`) gives the
run's trained network, :func:`predict_input` its :class:`Predictions` of one input
(:mod:`bmnas.serve.predictions`), :func:`write_predictions` the per-sample CSV/JSONL and metrics.
The names of those modules are importable from here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..core.config import Config
from ..core.data import SPLITS, FeatureData
from ..core.errors import DataError
from ..core.fileio import write_json
from ..features.backbones.base import Backbone
from ..features.generic import read_npz
from ..features.pipeline import load_data, prepare_backbones
from ..features.validate import check_labels, check_samples
from .model import FOUND_STAGE, MODEL_FILE, RECOMMENDED, LoadedModel, ModelError, load, save_model
from .predictions import Predictions, output_kind

__all__ = [
    "FOUND_STAGE",
    "MODEL_FILE",
    "RECOMMENDED",
    "LoadedModel",
    "ModelError",
    "Predictions",
    "load",
    "output_kind",
    "predict_input",
    "read_input",
    "run_backbones",
    "run_data",
    "run_features",
    "save_model",
    "write_predictions",
]


def read_input(data: str | Path, split: str = "test") -> tuple[dict[str, np.ndarray], np.ndarray | None, str]:
    """``--data DIR`` (its ``<split>.npz``) or ``--data FILE.npz`` -> (raw features, labels, name)."""
    path = Path(data)
    if path.is_dir():
        if split not in SPLITS:
            raise DataError(f"--split {split!r}: choose one of {list(SPLITS)}")
        path = path / f"{split}.npz"
    feats, labels = read_npz(path)
    return feats, labels, str(path)


def run_features(model: LoadedModel, cache: str | Path, split: str, progress: bool = False):
    """Pooled features and labels of ``split`` of the run's own data (from its ``config.yaml``)."""
    if split not in SPLITS:
        raise DataError(f"--split {split!r}: choose one of {list(SPLITS)}")
    data = run_data(model.config, model.L, cache, progress)
    sp = data[split]
    return sp.features, sp.labels, f"{data.name}/{split}"


def run_data(
    config: Mapping, L: int, cache: str | Path, progress: bool = False, data_dir: str | Path | None = None
) -> FeatureData:
    """The run's data as its ``config.yaml`` describes it, loaded as :func:`load_data` loads it.

    ``data_dir``: a generic directory to use instead (e.g. the run's data, moved).
    """
    d = (config or {}).get("data") or {}
    if not (data_dir or d.get("dir") or d.get("dataset") or d.get("table")):
        raise DataError(
            "the run's config.yaml names no data (data.dir, data.table or data.dataset); pass --data"
        )
    cfg = Config.from_dict(dict(config), "config.yaml")
    if data_dir:
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, dir=str(data_dir), dataset=None, table=None))
    return load_data(cfg.replace(model=dataclasses.replace(cfg.model, L=L)), cache, progress)


def run_backbones(model: LoadedModel, cache: str | Path, progress: bool = False) -> list[Backbone]:
    """The frozen backbones of a run on a registered dataset (loaded from the cache root)."""
    d = (model.config or {}).get("data") or {}
    if not d.get("dataset"):
        raise DataError(
            "--raw needs a run on a registered dataset (bmnas run --dataset NAME); this run read "
            "pre-extracted features: predict from features with --data"
        )

    _, backbones = prepare_backbones(
        d["dataset"], root=Path(cache), seed=int(model.config.get("seed", 0)), progress=progress
    )
    return backbones


def predict_input(
    model: LoadedModel,
    cache: str | Path,
    data: str | Path | None = None,
    raw: str | Path | None = None,
    split: str = "test",
    batch_size: int = 1024,
    progress: bool = False,
) -> tuple[Predictions, np.ndarray | None, str]:
    """Predictions of one input, its labels (None when it has none) and its name.

    The input: ``raw`` (one ``.npz`` of raw inputs per modality, through the run's backbones from
    the cache root ``cache``), ``data`` (features: a generic directory's ``split`` or one ``.npz``)
    or, with neither, ``split`` of the run's own data. Labels are checked against the run's task.
    """
    if data and raw:
        raise DataError("give --data (features) or --raw (raw inputs), not both")
    if raw:
        inputs, labels = read_npz(raw)
        check_samples(str(raw), inputs)
        pooled = model.extract(run_backbones(model, cache, progress), inputs, progress)
        preds, name = model.predict_pooled(pooled, batch_size), str(raw)
    elif data:
        features, labels, name = read_input(data, split)
        if not features:
            raise DataError(f"{name}: no feature arrays")
        check_samples(name, features)
        preds = model.predict(features, batch_size)
    else:
        pooled, labels, name = run_features(model, cache, split, progress=progress)
        return model.predict_pooled(pooled, batch_size), labels, name
    if labels is not None:
        check_labels(labels, model.task, len(preds), name)
    return preds, labels, name


def write_predictions(preds: Predictions, out: str | Path, labels: np.ndarray | None = None) -> dict | None:
    """Write ``out`` (:meth:`Predictions.write`) and, given labels, their metrics to
    ``<out stem>.metrics.json`` beside it; returns those metrics (None without labels)."""
    out = Path(out)
    preds.write(out, labels)
    if labels is None:
        return None
    metrics = preds.metrics(labels)
    write_json(out.with_name(out.stem + ".metrics.json"), metrics)
    return metrics
