"""The ``bmnas run`` workflow as a function: search, evaluate, compare with baselines, recommend.

:func:`run` searches (re-ranking its candidates when ``search.rerank`` > 0), trains the found
network and the baselines with the same recipe (:func:`bmnas.method.train.train`: score and
epoch count from 3-fold cross-validation over train + val — or from val with
``train.select_folds=0`` —, refit on train + val, tested once), fits the linear probe, and names
the **recommended** network: the highest such score among the searched network and the hand-made
fusions (:data:`FUSIONS`). The test split never takes part in a choice; since late fusion is
always a contender, the recommended network is never worse than late fusion on that score.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

from ..core.config import Config
from ..core.data import FeatureData
from ..core.genotype import Genotype, modalities
from ..engine.metrics import primary_metric
from ..engine.rundir import RunDir
from ..serve.predict import save_model
from ..space.baselines import baseline
from .probe import linear_probe
from .search import search
from .train import train

log = logging.getLogger(__name__)

SEARCHED = "searched"
FUSIONS = (SEARCHED, "late_fusion", "sum", "concat_fc")
"""Networks the recommendation chooses among: the searched one and the hand-made fusions."""


@dataclass
class RunReport:
    """Every method's result row (``test``, ``val``, ``params``, ``epochs``, seconds) and the choice."""

    rows: dict[str, dict]
    metric: str
    recommended: str
    reason: str
    genotypes: dict[str, Genotype] = field(default_factory=dict)
    folds: int = 0  # the val column: 0 = the val split, k = k-fold CV over train + val


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


VAL_FITTED_NOTE = (
    " (its architecture was chosen on val, so its val score is optimistic: by 1-3 points on AV-MNIST "
    "and emoji, see docs/DESIGN.md; compare on a split the search never saw before relying on a small margin)"
)


def recommend(
    rows: dict[str, dict], metric: str, searched_saw_val: bool = False, scored_by: str = "val"
) -> tuple[str, str]:
    """The best row of :data:`FUSIONS` by its ``val`` score (ties: the searched one, then table
    order), and why.

    ``scored_by`` names that score in the reason (``val``, or e.g. ``3-fold CV``).
    ``searched_saw_val``: the score is on the val split the search's architecture steps used
    (``arch_split = 0``, ``train.select_folds = 0``); if the searched network wins, the reason says
    that its score is optimistic.
    """
    eligible = [n for n in rows if n in FUSIONS and rows[n].get("val") is not None]
    if not eligible:
        return SEARCHED, "no val score to compare (train.select_epochs is off): the searched network"
    best = max(eligible, key=lambda n: (rows[n]["val"], n == SEARCHED, -eligible.index(n)))
    others = ", ".join(f"{n} {rows[n]['val']:.4f}" for n in eligible if n != best)
    reason = f"highest {scored_by} {metric} ({rows[best]['val']:.4f})" + (f"; {others}" if others else "")
    if best == SEARCHED and searched_saw_val:
        reason += VAL_FITTED_NOTE
    return best, reason


def run(
    data: FeatureData,
    cfg: Config,
    run_dir: RunDir | str,
    baselines: bool = True,
    progress: bool = True,
    on_search=None,
    data_seconds: float = 0.0,
) -> RunReport:
    """Search, train and compare on ``data``; write ``metrics.json`` and the genotypes to ``run_dir``.

    Args:
        baselines: also train the unimodal, late-fusion and fixed-fusion networks and the probe.
        on_search: called with the :class:`~bmnas.method.search.SearchResult` before training (the CLI
            prints the genotype there).
    """

    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
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
    scored_by = f"{folds}-fold CV (train + val)" if folds else "val"
    best, reason = recommend(rows, metric, searched_saw_val=saw_val, scored_by=scored_by)
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
            "info": data.info,
        },
    }
    run_dir.write_json("metrics.json", metrics)
    order = [n for n in rows if n != SEARCHED] + [SEARCHED]
    return RunReport({n: rows[n] for n in order}, metric, best, reason, genotypes, folds)


def report_from_metrics(metrics: dict) -> RunReport:
    """The :class:`RunReport` of a finished run, rebuilt from its ``metrics.json`` (``bmnas show``)."""
    test = metrics.get("test", {})
    metric = metrics.get("metric") or ("accuracy" if "accuracy" in test else "f1_weighted")
    rows = {n: r for n, r in metrics.get("baselines", {}).items()}
    rows[SEARCHED] = {
        k: metrics[k] for k in ("test", "val", "params", "epochs", "train_seconds") if k in metrics
    }
    rows[SEARCHED]["search_seconds"] = metrics.get("search_seconds", 0.0)
    rec = metrics.get("recommended") or {"method": SEARCHED, "reason": "the only network of this run"}
    return RunReport(rows, metric, rec["method"], rec["reason"], folds=metrics.get("val_folds", 0))


def format_table(report: RunReport) -> str:
    """Plain-text table: selection score (``cv`` or ``val``) and test score, size, epochs and seconds
    per method; ``*`` = recommended."""
    m = report.metric
    score = ("cv " if report.folds else "val ") + m
    head = (
        f"  {'method':<20} {score:>13} {'test ' + m:>14} {'params':>9} {'epochs':>6} "
        f"{'search s':>8} {'train s':>7}"
    )
    lines = [head, "-" * len(head)]
    for name, r in report.rows.items():
        val = f"{r['val']:.4f}" if r.get("val") is not None else "–"
        mark = "*" if name == report.recommended else " "
        lines.append(
            f"{mark} {name:<20} {val:>13} {r['test'][m]:>14.4f} {r['params']['total']:>9,} "
            f"{r.get('epochs', 0):>6} {r.get('search_seconds', 0.0):>8.1f} {r['train_seconds']:>7.1f}"
        )
    lines.append(f"\n* recommended: {report.recommended} — {report.reason}")
    return "\n".join(lines)
