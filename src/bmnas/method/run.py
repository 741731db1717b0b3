"""The ``bmnas run`` workflow as a function: search, evaluate, compare with baselines, recommend.

:func:`run` searches (re-ranking its candidates when ``search.rerank`` > 0), trains the found
network and the baselines with the same recipe (:func:`bmnas.method.train.train`: score and
epoch count from 3-fold cross-validation over train + val — or from val with
``train.select_folds=0`` —, refit on train + val, tested once), fits the linear probe, and names
the **recommended** network: the highest such score among the searched network and the hand-made
fusions (:func:`bmnas.report.summary.recommend`, which also holds the result table). The test split
never takes part in a choice.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from ..core.config import Config
from ..core.data import FeatureData
from ..core.genotype import modalities
from ..engine.metrics import primary_metric
from ..engine.rundir import RunDir
from ..features.pipeline import load_data
from ..features.table import public_info, write_split_file
from ..report.summary import SEARCHED, RunReport, recommend, score_name
from ..serve.model import save_model
from ..space.baselines import baseline
from .probe import linear_probe
from .search import search
from .train import train

log = logging.getLogger(__name__)


def fit_config_to_data(cfg: Config, data: FeatureData) -> Config:
    """Settings that follow from the data: with vector features only, ``model.L = 1``.

    A vector is one position broadcast to L; when every feature is a vector the L positions of
    every fused tensor are copies, so L > 1 only multiplies the head's parameters (docs/DESIGN.md §2
    has the measurement).
    """
    if data.feature_lengths and all(n == 1 for n in data.feature_lengths.values()) and cfg.model.L != 1:
        log.info("every feature is a vector: model.L %d -> 1", cfg.model.L)
        return cfg.replace(model=dataclasses.replace(cfg.model, L=1))
    return cfg


def run(
    data: FeatureData | object,
    cfg: Config,
    run_dir: RunDir | str,
    baselines: bool = True,
    progress: bool = True,
    on_search=None,
    data_seconds: float = 0.0,
) -> RunReport:
    """Search, train and compare on ``data``; write ``metrics.json`` and the genotypes to ``run_dir``.

    Args:
        data: the features, or a table (a pandas DataFrame or a CSV/Parquet path) that
            ``cfg.data.label`` names the label column of (read by :func:`bmnas.load_data`).
        baselines: also train the unimodal, late-fusion and fixed-fusion networks and the probe.
        on_search: called with the :class:`~bmnas.method.search.SearchResult` before training (the CLI
            prints the genotype there).
    """

    if not isinstance(data, FeatureData):
        data = load_data(cfg, table=data, progress=progress)
        cfg = fit_config_to_data(cfg, data)
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    write_split_file(run_dir.path, data.info)
    metric = primary_metric(data.task)
    found = search(data, cfg, run_dir, progress=progress)
    if on_search is not None:
        on_search(found)
    r = train(
        found.genotype,
        data,
        cfg,
        run_dir,
        progress=progress,
        stage="train",
        desc="train found net",
        selection=found.selection(cfg.train.epochs, cfg.train.select_folds),
    )
    save_model(run_dir.path, r.model, data, cfg.to_dict())
    rows = {SEARCHED: {**r.row(), "search_seconds": found.seconds}}
    genotypes = {SEARCHED: r.model.genotype}  # as trained: with its linear path (model.linear_skip)
    if baselines:
        specs, m = found.genotype.features, cfg.model
        names = [f"unimodal:{mod}" for mod in modalities(specs)] + ["late_fusion", "sum", "concat_fc"]
        for name in names:
            g = baseline(name, specs, m.C, m.L, m.cells, m.multiplier)
            stage = "baseline_" + name.replace(":", "_")
            b = train(g, data, cfg, run_dir, progress=progress, stage=stage, desc=f"train {name}")
            rows[name] = b.row()
            genotypes[name] = b.model.genotype
        t0 = time.perf_counter()
        probe = linear_probe(data, cfg.seed, cfg.data.threshold)
        rows["linear_probe"] = {**probe, "epochs": 0, "train_seconds": time.perf_counter() - t0}
    saw_val = (
        cfg.search.arch_split == 0 and cfg.train.select_folds == 0
    )  # scored on the split α was fitted on
    folds = cfg.train.select_folds
    best, reason = recommend(rows, metric, searched_saw_val=saw_val, scored_by=score_name(folds))
    genotypes[best].save(run_dir.path / "recommended_genotype.json")
    metrics = {
        **rows[SEARCHED],
        "metric": metric,
        "data_seconds": data_seconds,
        "best_epoch": found.best_epoch,
        f"hypernet_val_{metric}": found.best_score,
        "genotype": found.genotype.to_dict(),
        "candidates": [
            {k: c[k] for k in ("source", "val", "best_epoch", "seconds")} for c in found.candidates
        ],
        "recommended": {"method": best, "reason": reason, "genotype": genotypes[best].to_dict()},
        "val_folds": folds,
        "baselines": {n: v for n, v in rows.items() if n != SEARCHED},
        "data": {
            "name": data.name,
            "sizes": {s: len(sp) for s, sp in data.splits.items()},
            "task": data.task.__dict__,
            "info": public_info(data.info),
        },
    }
    run_dir.write_json("metrics.json", metrics)
    order = [n for n in rows if n != SEARCHED] + [SEARCHED]
    return RunReport({n: rows[n] for n in order}, metric, best, reason, genotypes, folds)
