"""Dataset name -> pooled features: raw dataset -> frozen backbones -> extraction -> cache -> FeatureData.

Dataset-agnostic: any dataset registered with :func:`~bmnas.features.datasets.base.register_dataset` and
:func:`~bmnas.features.backbones.base.register_backbones` works. Everything is cached under one root
(``$BMNAS_CACHE`` or ``~/.cache/bmnas``): prepared datasets and pre-trained weights by their
builders, pooled features in ``<root>/features`` (:mod:`bmnas.features.cache`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..core.config import Config, ConfigError
from ..core.data import SPLITS, FeatureData, FeatureSplit, group_codes
from ..core.errors import DataError
from ..core.fileio import default_root
from ..engine.device import resolve_device
from .backbones.base import Backbone, backbones_for
from .cache import CacheKey, FeatureCache
from .datasets.base import RawDataset, create_dataset, dataset_checksum, list_datasets
from .datasets.base import dataset_options as dataset_options_of
from .extract import extract_features
from .generic import load_generic_dir
from .table import table_features
from .validate import check_like_train, infer_task, validate_split


def prepare_backbones(
    name: str,
    *,
    root: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    backbone_options: Mapping[str, object] | None = None,
    **dataset_options,
) -> tuple[RawDataset, list[Backbone]]:
    """Prepare dataset ``name`` and its frozen backbones (pre-training them on first use).

    What ``bmnas pretrain`` needs; :func:`dataset_features` does the same, then extracts.
    """
    root = Path(root) if root is not None else default_root()
    raw = create_dataset(name, root, **dataset_options)
    return raw, backbones_for(name, raw, root, seed=seed, progress=progress, **(backbone_options or {}))


def _builder_options(name: str) -> list[str]:
    """The options of dataset ``name``'s builder ([] when it is unknown: create_dataset says so)."""
    return (dataset_options_of(name) or []) if name in list_datasets() else []


def cache_key(
    dataset: str, checksum: str, split: str, backbone: Backbone, weights: str, length: int, pooling: str
) -> CacheKey:
    """The cache key of ``backbone``'s features on ``split`` (``weights``: its weights hash)."""
    layers = tuple(zip(backbone.feature_names(), backbone.layers.values(), strict=True))
    return CacheKey(dataset, checksum, split, backbone.modality, weights, layers, length, pooling)


def dataset_features(
    name: str,
    *,
    root: str | Path | None = None,
    length: int,
    pooling: str = "max",
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 256,
    threads: int | None = 1,
    device: str | torch.device | None = None,
    backbone_options: Mapping[str, object] | None = None,
    **dataset_options,
) -> FeatureData:
    """Pooled features of every split of dataset ``name``, extracted once and cached.

    Args:
        name: a registered dataset (e.g. ``"avmnist"``).
        root: cache root (default :func:`default_root`).
        length: L, the number of positions of pooled sequence/map features.
        pooling: ``"max"`` or ``"avg"``.
        seed: seed of the backbones' pre-training (part of the weights' cache key).
        progress: tqdm progress bars.
        batch_size: extraction batch size.
        threads: intra-op torch threads during extraction (1 by default: the small default
            backbones run fastest on one thread; None leaves torch's setting).
        device: where the backbones run (default: where their weights are, the CPU); the
            features are cached on the CPU either way.
        backbone_options: extra keyword arguments for the dataset's backbone factory.
        dataset_options: passed to the dataset builder.

    Returns:
        :class:`~bmnas.core.data.FeatureData` with features ``"<modality>.<layer>" -> (N, L_k, C_in)``
        float32 (read-only memory maps), ordered modality by modality and layer by layer in
        backbone order, and ``info`` holding ``provenance``, ``dataset_sha256``, ``weights``
        (backbone name -> weights hash), ``prepare_seconds``, ``pretrain_seconds``, ``extract_seconds``,
        ``cache_hit`` (True when no feature had to be extracted) and ``cache_dirs``.
    """
    root = Path(root) if root is not None else default_root()
    t0 = time.perf_counter()
    if "progress" in _builder_options(name):  # the builder's own progress bars follow ours
        dataset_options = {"progress": progress, **dataset_options}
    raw = create_dataset(name, root, **dataset_options)
    t1 = time.perf_counter()
    backbones = backbones_for(name, raw, root, seed=seed, progress=progress, **(backbone_options or {}))
    t2 = time.perf_counter()
    checksum = dataset_checksum(raw)
    weights = [b.weights_hash() for b in backbones]
    names = [n for b in backbones for n in b.feature_names()]
    if len(set(names)) != len(names):
        raise DataError(f"{name}: backbones produce duplicate feature names {names}")

    cache = FeatureCache(root / "features")
    splits: dict[str, FeatureSplit] = {}
    hits: list[bool] = []
    dirs: list[str] = []
    for split in SPLITS:
        part = raw.splits[split]
        features: dict[str, np.ndarray] = {}
        for backbone, digest in zip(backbones, weights, strict=True):
            key = cache_key(name, checksum, split, backbone, digest, length, pooling)

            def compute(backbone: Backbone = backbone, split: str = split) -> dict[str, np.ndarray]:
                return extract_features(
                    backbone,
                    raw.splits[split].inputs[backbone.modality],
                    length=length,
                    pooling=pooling,
                    batch_size=batch_size,
                    progress=progress,
                    threads=threads,
                    device=device,
                    desc=f"extract {name}/{split}/{backbone.modality}",
                )

            arrays, hit = cache.get_or_compute(key, compute)
            features.update(arrays)
            hits.append(hit)
            dirs.append(str(cache.entry_dir(key)))
        labels = np.asarray(part.labels)
        validate_split(f"{name}/{split}", features, labels)
        splits[split] = FeatureSplit(features, labels)
    t3 = time.perf_counter()

    for split in SPLITS[1:]:
        check_like_train(f"{name}/{split}", splits[split].features, splits["train"].features)
    task = infer_task({s: sp.labels for s, sp in splits.items()})
    dtype = np.int64 if task.type == "multiclass" else np.float32
    groups = group_codes({s: raw.splits[s].groups for s in SPLITS})  # one coding: equal ids, one item
    splits = {
        s: FeatureSplit(sp.features, sp.labels.astype(dtype, copy=False), groups[s])
        for s, sp in splits.items()
    }
    info = {
        "provenance": dict(raw.provenance),
        "dataset_sha256": checksum,
        "weights": {b.name or b.modality: w for b, w in zip(backbones, weights, strict=True)},
        "backbones_fit_on_train": [b.name or b.modality for b in backbones if b.fit_on_train],
        "class_names": list(raw.class_names),
        "prepare_seconds": t1 - t0,
        "pretrain_seconds": t2 - t1,
        "extract_seconds": t3 - t2,
        "cache_hit": all(hits),
        "cache_dirs": dirs,
        "root": str(root),
    }
    return FeatureData(splits, task, name, info)


def load_data(
    cfg: Config,
    cache: str | Path | None = None,
    progress: bool = True,
    dataset_options: dict | None = None,
    backbone_options: dict | None = None,
    table=None,
) -> FeatureData:
    """Features for ``cfg.data``: the generic directory, a table, or a registered dataset.

    ``cache``: the cache root (default :func:`default_root`); ``progress``: bars while preparing;
    ``dataset_options``/``backbone_options``: a registered dataset's builder and backbone options
    (for a table: ``image_size``, ``max_length``, ``batch_size``); ``table``: a pandas DataFrame (or a
    file) to read instead of ``cfg.data.table``, with ``cfg.data.label`` its label column.
    """
    d = cfg.data
    root = Path(cache) if cache is not None else default_root()
    if table is not None or d.table:
        if dataset_options:
            raise ConfigError("--dataset-option applies to --dataset, not to --table")
        options = dict(backbone_options or {})
        unknown = sorted(set(options) - {"image_size", "max_length", "batch_size", "backbones"})
        if unknown:
            raise ConfigError(
                f"--backbone-option {unknown[0]!r}: a table's backbones take image_size, max_length, "
                "batch_size"
            )
        data = table_features(
            table if table is not None else d.table,
            d.label or "",
            label_sep=d.label_sep,
            modalities=d.modalities,
            split_column=d.split_column,
            length=cfg.model.L,
            pooling=d.pooling,
            seed=cfg.seed,
            shares=d.split_shares,
            root=root,
            progress=progress,
            device=resolve_device(cfg.device),
            task_type=d.task,
            num_outputs=d.num_outputs,
            backbone_specs=d.backbones,
            **options,
        )
    elif d.backbones:
        raise ConfigError(
            f"data.backbones {dict(d.backbones)} (--backbone) names backbones for a --table; "
            "--dataset and --data DIR bring their own"
        )
    elif d.dir:
        if dataset_options or backbone_options:
            raise ConfigError("--dataset-option and --backbone-option apply to --dataset, not to --data DIR")
        data = load_generic_dir(d.dir, cfg.model.L, d.pooling, d.task, d.num_outputs, cache=root)
    else:
        dataset_options = dict(dataset_options or {})
        progress = bool(dataset_options.pop("progress", progress)) and progress  # the builder's bars too
        data = dataset_features(
            d.dataset,
            root=root,
            device=resolve_device(cfg.device),
            length=cfg.model.L,
            pooling=d.pooling,
            seed=cfg.seed,
            progress=progress,
            backbone_options=backbone_options,
            **dataset_options,
        )
        if d.task or d.num_outputs:
            task = infer_task({s: sp.labels for s, sp in data.splits.items()}, d.task, d.num_outputs)
            data = FeatureData(data.splits, task, data.name, data.info)
    return data.select(list(d.features)) if d.features else data
