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
import torch

from ..core.config import Config
from ..core.data import SPLITS, FeatureData
from ..core.errors import DataError
from ..core.fileio import write_json
from ..features import table as tb
from ..features.backbones.base import Backbone
from ..features.generic import read_npz
from ..features.pipeline import load_data, prepare_backbones
from ..features.pooling import pool_feature
from ..features.validate import check_feature, check_labels, check_samples
from ..report.summary import read_metrics
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
    "predict_table",
    "read_input",
    "run_backbones",
    "run_data",
    "run_features",
    "run_info",
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
    if d.get("table") or run_info(model.source.parent).get("modalities"):
        raise DataError("--raw: this run read a table; predict new rows of a table with --table FILE")
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
    table: str | Path | None = None,
) -> tuple[Predictions, np.ndarray | None, str]:
    """Predictions of one input, its labels (None when it has none) and its name.

    The input: ``raw`` (one ``.npz`` of raw inputs per modality, through the run's backbones from
    the cache root ``cache``), ``data`` (features: a generic directory's ``split`` or one ``.npz``),
    ``table`` (new rows of a table run's table, :func:`predict_table`) or, with none, ``split`` of
    the run's own data. Labels are checked against the run's task.
    """
    if data and raw:
        raise DataError("give --data (features) or --raw (raw inputs), not both")
    if table and (data or raw):
        raise DataError("give one of --data (features), --raw (raw inputs) and --table (a table's rows)")
    if table:
        return predict_table(model, table, batch_size=batch_size, progress=progress)
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


def run_info(run_dir: str | Path) -> dict:
    """``metrics.json``'s ``data.info`` of a run ({} without one): class names, a table's modalities…"""
    metrics = read_metrics(Path(run_dir) / "metrics.json") or {}
    info = (metrics.get("data") or {}).get("info") if isinstance(metrics, Mapping) else None
    return dict(info) if isinstance(info, Mapping) else {}


def predict_table(
    model: LoadedModel,
    table,
    backbones: Mapping[str, tb.BackboneFactory] | None = None,
    batch_size: int = 1024,
    progress: bool = False,
) -> tuple[Predictions, np.ndarray | None, str]:
    """Predictions for new rows of a table run's table (a CSV/Parquet path or a DataFrame), their
    labels (None without the run's label column) and the table's name.

    The table needs the columns of every modality the network reads (others are ignored); image
    and text columns go through the run's backbones (:func:`bmnas.features.table.run_backbone`, or
    ``backbones``: kind -> ``factory(modality)`` as given to :func:`bmnas.load_data`) and are pooled
    as in training; vector columns are pooled as they are. Labels, when the column is there, must be
    classes of the run (by name). Every check runs before any backbone does.
    """
    info = run_info(model.source.parent)
    mods = info.get("modalities")
    if not isinstance(mods, Mapping) or not mods:
        raise DataError(
            "--table: this run did not read a table (bmnas run --table FILE); predict with --data or --raw"
        )
    df, base = tb.read_table(table)
    where = str(table) if not hasattr(table, "columns") else "the DataFrame"
    needed = []
    for m, mi in mods.items():
        if not any(n.split(".", 1)[0] == m for n in model.inputs):
            continue
        cols = [str(c) for c in mi.get("columns") or []]
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise DataError(
                f"{where}: no column {missing[0]!r} (the run's modality {m!r} reads {cols}); "
                f"columns: {list(map(str, df.columns))}"
            )
        needed.append(tb.Modality(m, str(mi.get("kind")), tuple(cols)))
    tb.check_columns(df, needed, base, where)
    d = (model.config or {}).get("data") or {}
    label = d.get("label")
    labels = None
    if label and label in df.columns:
        labels = encode_known_labels(df[label], model, d.get("label_sep"), where)
    size, max_length = tb.backbone_options(info)
    pooled: dict[str, np.ndarray] = {}
    nets, inputs = [], {}
    for m in needed:
        if m.kind == "vector":
            name = f"{m.name}.{tb.VECTOR_LAYER}"
            arr = df[list(m.columns)].to_numpy(dtype=np.float64)
            check_feature(where, name, arr)
            pooled[name] = pool_feature(torch.from_numpy(np.array(arr)), model.L, model.pooling).numpy()
            continue
        factory = (backbones or {}).get(m.kind)
        mi = mods[m.name]
        nets.append(factory(m.name) if factory else tb.run_backbone(mi, m.name, size, max_length))
        inputs[m.name] = tb.modality_inputs(df, m, base, size)
    if nets:
        pooled.update(model.extract(nets, inputs, progress))
    return model.predict_pooled(pooled, batch_size), labels, where


def encode_known_labels(series, model: LoadedModel, sep: str | None, where: str) -> np.ndarray:
    """A label column as the run's class indices ``(N,)`` (or multi-hot ``(N, K)``), by class name."""
    names = list(model.class_names)
    index = {n: k for k, n in enumerate(names)}
    values = series.to_numpy(dtype=object)
    numeric = series.dtype.kind in "iuf"
    empty = np.flatnonzero(series.isna().to_numpy())
    if empty.size:
        raise DataError(
            f"{where}: label column {series.name!r} is empty at row {int(empty[0])}; label every row or "
            f"drop the column"
        )

    def name_of(v) -> str:
        return str(int(v)) if numeric and float(v).is_integer() else str(v).strip()

    def known(name: str, row: int) -> int:
        if name not in index:
            shown = ", ".join(names[:10]) + (" …" if len(names) > 10 else "")
            raise DataError(
                f"{where}: label {name!r} at row {row} is not a class of this run (classes: {shown})"
            )
        return index[name]

    if model.task.type == "multiclass":
        return np.array([known(name_of(v), i) for i, v in enumerate(values)], dtype=np.int64)
    y = np.zeros((len(values), len(names)), dtype=np.float32)
    for i, v in enumerate(values):
        tags = v if isinstance(v, (list, tuple, np.ndarray)) else name_of(v).split(sep or "|")
        for t in (str(t).strip() for t in tags):
            if t:
                y[i, known(t, i)] = 1.0
    return y
