"""The ``bmnas run`` workflow as a function: search, evaluate, compare with baselines, recommend.

:func:`run` searches (re-ranking its candidates when ``search.rerank`` > 0), trains the found
network and the baselines with the same recipe (:func:`bmnas.method.train.train`: score and
epoch count from 3-fold cross-validation over train + val — or from val with
``train.select_folds=0`` —, refit on train + val, tested once), fits the linear probe (``C`` chosen
by the same score, saved as ``linear_probe.pt``), and names the **recommended** network: the
highest such score among the searched network, the hand-made fusions and the probe
(:func:`bmnas.report.summary.recommend`, which also holds the result table). The test split never
takes part in a choice. ``plots/genotype.png`` and ``plots/recommended_genotype.png`` draw the found
and the recommended network as trained.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..core.config import Config
from ..core.data import FeatureData
from ..core.genotype import FeatureSpec, Genotype, modalities
from ..core.progress import bar as progress_bar
from ..core.progress import label
from ..engine.distributed import current
from ..engine.folds import scores_val_only
from ..engine.metrics import primary_metric
from ..engine.rundir import RunDir
from ..engine.workers import Handle, Job, Pool, resolve_workers
from ..features.pipeline import load_data
from ..features.table import public_info
from ..features.validate import check_searchable
from ..report.plots import plot_genotype
from ..report.summary import PROBE, SEARCHED, RunReport, recommend, score_name, stage_of
from ..serve.model import PROBE_FILE, save_model
from ..space.baselines import baseline
from .placement import place
from .probe import ProbeResult, fit_probe
from .record import as_run, entry
from .search import placed_search
from .train import (
    Selection,
    TrainResult,
    fold_work,
    gather,
    open_pool,
    saved_selection,
    selection_file,
    submit_selections,
    train,
    with_recipe,
)

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


def data_summary(data: FeatureData) -> dict:
    """``metrics.json``'s ``data``: name, split sizes, task, info (class names)."""
    sizes = {s: len(sp) for s, sp in data.splits.items()}
    return {"name": data.name, "sizes": sizes, "task": data.task.__dict__, "info": public_info(data.info)}


@entry
def train_found(
    genotype: Genotype,
    data: FeatureData,
    cfg: Config,
    run: RunDir | str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """``bmnas train`` as a function: the evaluation stage of ``genotype`` (:func:`.train.train`),
    then, into ``run``, the trained network ``model.pt`` and ``metrics.json`` (test metrics, val
    score, epochs, parameters, the genotype): a run directory ``bmnas show``, ``predict``,
    ``export-model`` and ``robustness`` accept. A path is opened as ``--out`` is
    (:func:`bmnas.method.record.open_run`).
    """
    run = as_run(run, cfg, data)
    k = max(1, cfg.train.select_folds)
    workers = lambda: resolve_workers(cfg.workers, k, fold_work(data, cfg, None, k))  # noqa: E731
    placement = place(data, cfg, workers, ("evaluation",), genotype, run)
    cfg = placement.config(cfg, "evaluation")
    r = train(genotype, data, cfg, run, progress=progress, stop_after=stop_after, desc="train found net")
    finished = len(r.history) == r.epochs  # not cut short by stop_after
    if run is not None and finished and current().main:
        save_model(run.path, r.model, data, cfg.to_dict())
        plot_genotype(r.model.genotype, run.plots_path / "genotype.png", "trained network")
        metrics = {**r.row(), "genotype": genotype.to_dict(), "data": data_summary(data)}
        metrics["devices"] = {"setting": placement.setting, "evaluation": placement.evaluation.to_dict()}
        run.write_json("metrics.json", metrics)
    return r


def _baselines(specs: tuple[FeatureSpec, ...], cfg: Config) -> list[tuple[str, Genotype]]:
    """The hand-made networks ``bmnas run`` trains beside the found one, by table name."""
    m = cfg.model
    names = [f"unimodal:{mod}" for mod in modalities(specs)] + ["late_fusion", "sum", "concat_fc"]
    return [(n, baseline(n, specs, m.C, m.L, m.cells, m.multiplier)) for n in names]


def _saved(run_dir: RunDir, name: str, g: Genotype, cfg: Config) -> Selection | None:
    """The baseline ``name``'s selection saved in ``run_dir`` by this recipe, or None."""
    t = cfg.train
    path = run_dir.path / f"{stage_of(name)}_selection.json"
    return saved_selection(path, with_recipe(g, cfg), t.epochs, t.select_folds)


def _run_work(data: FeatureData, cfg: Config, baselines: bool) -> tuple[int, float]:
    """Jobs of ``bmnas run`` that can train side by side (re-ranking's and the baselines' folds,
    the refits) and their row-epochs, for ``workers: 0``."""
    k = max(1, cfg.train.select_folds)
    jobs = cfg.search.rerank * k + (1 + (len(data.modalities) + 3) * (k + 1) if baselines else 1)
    return jobs, fold_work(data, cfg, None, jobs)


def refit(
    data: FeatureData,
    genotype: Genotype,
    cfg: Config,
    run_path: str,
    stage: str,
    desc: str,
    selection: dict | None,
) -> TrainResult:
    """A job of :func:`run`'s worker pool: :func:`.train.train` of ``genotype`` as ``stage`` in the run
    directory ``run_path`` (which the parent holds locked) with the selection measured already."""
    sel = Selection.from_dict(selection) if selection is not None else None
    return train(
        genotype,
        data,
        cfg,
        RunDir(run_path, create=False),
        progress=False,
        stage=stage,
        desc=desc,
        selection=sel,
    )


def _train_parallel(
    pool: Pool,
    genotype: Genotype,
    selection: Selection | None,
    early: dict[str, list[Handle]],
    data: FeatureData,
    cfg: Config,
    run_dir: RunDir,
    baselines: bool,
    progress: bool,
) -> tuple[TrainResult, dict[str, TrainResult], ProbeResult | None]:
    """The found network's refit and the baselines (selection folds, then refits) side by side in
    ``pool``; each baseline's ``<stage>_selection.json`` is written here as its last fold finishes,
    and each network's history once more when it is back (for the ``--logger``s: the workers
    write the run's files, not its observers). The probe is fitted here meanwhile."""
    path = str(run_dir.path)
    jobs = {SEARCHED: pool.submit(_refit_job(SEARCHED, genotype, cfg, path, selection))}
    probe = None
    if baselines:
        t = cfg.train
        todo = {}
        for name, g in _baselines(genotype.features, cfg):
            saved = _saved(run_dir, name, g, cfg) if t.select_epochs else None
            if saved is not None or not t.select_epochs:
                jobs[name] = pool.submit(_refit_job(name, g, cfg, path, saved))
            else:
                todo[name] = g
        handles = {n: hs for n, hs in early.items() if n in todo and hs[0].job.args[0] == todo[n]}
        handles.update(
            submit_selections(
                pool, [(n, g) for n, g in todo.items() if n not in handles], cfg, None, "select epochs"
            )
        )
        for name, measured in gather(pool, handles, progress, "baselines · select epochs"):
            g = with_recipe(todo[name], cfg)
            run_dir.write_json(f"{stage_of(name)}_selection.json", selection_file(g, measured))
            jobs[name] = pool.submit(_refit_job(name, todo[name], cfg, path, measured))
        probe = fit_probe(data, cfg.seed, cfg.data.threshold, t.select_folds, cfg.model.C, cfg.model.L)
    trained = {}
    with progress_bar(
        total=len(jobs), desc=label("refit on train + val", f"{pool.workers} workers"), enabled=progress
    ) as bar:
        for h in pool.results(list(jobs.values())):
            bar.update(1)
            name = next(n for n, x in jobs.items() if x is h)
            run_dir.write_jsonl(f"{_refit_stage(name)}_history.jsonl", h.result.history)
            trained[name] = h.result
    return trained.pop(SEARCHED), trained, probe


def _refit_stage(name: str) -> str:
    """The run-directory stage of a table row's refit: ``train`` for the found network."""
    return "train" if name == SEARCHED else stage_of(name)


def _refit_job(name: str, g: Genotype, cfg: Config, path: str, selection: Selection | None) -> Job:
    sel = selection.to_dict() if selection is not None else None
    desc = "train found net" if name == SEARCHED else f"train {name}"
    return Job(desc, refit, (g, cfg, path, _refit_stage(name), desc, sel))


@entry
def run(
    data: FeatureData | object,
    cfg: Config,
    run_dir: RunDir | str | Path,
    baselines: bool = True,
    progress: bool = True,
    on_search=None,
    data_seconds: float = 0.0,
) -> RunReport:
    """Search, train and compare on ``data``; write ``metrics.json``, ``model.pt``, the genotypes and
    the plots to ``run_dir``.

    Does what ``bmnas run`` does: the data must have two features or more, and the config is fitted
    to it (:func:`fit_config_to_data`); a path ``run_dir`` is opened as ``--out`` is
    (:func:`bmnas.method.record.open_run`: locked, checked, ``config.yaml`` and the data's fingerprint).

    Args:
        data: the features, or a table (a pandas DataFrame or a CSV/Parquet path) that
            ``cfg.data.label`` names the label column of (read by :func:`bmnas.load_data`).
        baselines: also train the unimodal, late-fusion and fixed-fusion networks and the probe.
        on_search: called with the :class:`~bmnas.method.search.SearchResult` before training (the CLI
            prints the genotype there).
    """
    if not isinstance(data, FeatureData):  # a pandas DataFrame: a table (features/table.py)
        data = load_data(cfg, table=data, progress=progress)
    check_searchable(data)
    cfg = fit_config_to_data(cfg, data)
    run_dir = as_run(run_dir, cfg, data)
    metric = primary_metric(data.task)
    work = _run_work(data, cfg, baselines)
    placement = place(data, cfg, lambda: resolve_workers(cfg.workers, *work), run=run_dir)
    run_cfg, cfg = cfg, placement.config(cfg, "evaluation")  # the search's device: placement's
    with open_pool(data, cfg, *work) as pool:
        parallel = pool.workers > 1
        # the baselines' selections need no search: they begin while the search runs
        early: dict[str, list[Handle]] = {}
        if parallel and baselines and cfg.train.select_epochs:
            todo = [(n, g) for n, g in _baselines(data.specs(), cfg) if _saved(run_dir, n, g, cfg) is None]
            early = submit_selections(pool, todo, cfg, None, "select epochs")
        found = placed_search(data, run_cfg, run_dir, progress, placement=placement)
        if on_search is not None:
            on_search(found)
        sel = found.selection(cfg.train.epochs, cfg.train.select_folds)
        if parallel:
            r, trained, probe = _train_parallel(
                pool, found.genotype, sel, early, data, cfg, run_dir, baselines, progress
            )
        else:
            r = train(
                found.genotype,
                data,
                cfg,
                run_dir,
                progress=progress,
                stage="train",
                desc="train found net",
                selection=sel,
            )
    save_model(run_dir.path, r.model, data, cfg.to_dict())
    plot_genotype(r.model.genotype, run_dir.plots_path / "genotype.png", "found network as trained")
    rows = {SEARCHED: {**r.row(), "search_seconds": found.seconds}}
    genotypes = {SEARCHED: r.model.genotype}  # as trained: with its linear path (model.linear_skip)
    if baselines:
        m = cfg.model
        for name, g in _baselines(found.genotype.features, cfg):
            if parallel:
                b = trained[name]
            else:
                stage = stage_of(name)
                b = train(g, data, cfg, run_dir, progress=progress, stage=stage, desc=f"train {name}")
            rows[name] = b.row()
            genotypes[name] = b.model.genotype
        if not parallel:
            probe = fit_probe(data, cfg.seed, cfg.data.threshold, cfg.train.select_folds, m.C, m.L)
        save_model(run_dir.path, probe.model, data, cfg.to_dict(), name=PROBE_FILE)
        rows[PROBE] = probe.row
        genotypes[PROBE] = probe.model.genotype
    saw_val = (
        cfg.search.arch_split == 0 and cfg.train.select_folds == 0
    )  # scored on the split α was fitted on
    folds = cfg.train.select_folds
    scored_by = score_name(folds, scores_val_only(data))
    best, reason = recommend(rows, metric, searched_saw_val=saw_val, scored_by=scored_by)
    genotypes[best].save(run_dir.path / "recommended_genotype.json")
    plot_genotype(genotypes[best], run_dir.plots_path / "recommended_genotype.png", f"recommended: {best}")
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
        "recommended": {
            "method": best,
            "stage": stage_of(best),
            "reason": reason,
            "genotype": genotypes[best].to_dict(),
        },
        "val_folds": folds,
        "val_scored_by": scored_by,
        "baselines": {n: v for n, v in rows.items() if n != SEARCHED},
        "data": data_summary(data),
        "devices": placement.to_dict(),
    }
    run_dir.write_json("metrics.json", metrics)
    order = [n for n in rows if n != SEARCHED] + [SEARCHED]
    return RunReport({n: rows[n] for n in order}, metric, best, reason, genotypes, folds)
