"""Baselines and ablations (paper Tables 5–7) on one feature cache, recipe and set of seeds.

Methods (each trained by :func:`bmnas.method.train.train` on a :class:`~bmnas.core.genotype.Genotype`):

============================ ===================================================================
``unimodal:<modality>``      that modality's last feature + head (:func:`baselines.unimodal`)
``late_fusion``              concat of each modality's last feature + head
``sum`` ``concat_fc``        fixed-fusion Cells (paper Fig. 2, Table 7) on the fixed feature
``mha`` ``aoa``              selection of :func:`baselines.fixed_inputs`, N Cells as configured
``random``                   ``random_samples`` genotypes of the search space (paper Table 6)
``searched``                 :func:`bmnas.method.search.search`, config as given, ``input_mode = separate``
``searched_shared``          the same with ``model.input_mode = shared`` (the authors' inputs)
``searched_no_zero``         ``searched`` without ``zero`` in ``model.ops``
``smbo``                     the best genotype of :func:`bmnas.studies.smbo.smbo` (its cost: Table 5)
============================ ===================================================================

Every method runs once per seed (the seed of search, sampling and training); the ``random``
genotypes are the same ``random_samples`` architectures for every seed (sample ``k`` is drawn from
``default_rng([config seed, k])``), so its row pools ``random_samples × seeds`` runs.

Layout under the run directory::

    ablate/spec.json          the configuration the results belong to (a rerun must match it)
    ablate/lock               the pid of the running ablation (a second one in the same place stops)
    ablate/results.jsonl      one line per finished (method, seed[, sample]); a rerun skips them
                              (``test``, ``val``, ``params``, seconds, genotype; older ones: ``val_<metric>``)
    ablate/<method>/seed<s>/  per-run checkpoints (a killed training or search resumes), genotype,
                              test_predictions.npz (every test row's logits, decision and label:
                              :mod:`bmnas.engine.saved_predictions`)
    ablation.md, ablation.csv one row per method: mean ± std over runs of the test primary metric,
    ablation.png              parameters, search and train seconds; bar chart with error bars
    ablation_paired.csv       the paired differences below, one line per comparison

Std is the sample standard deviation (``ddof = 1``), 0 for a single run.

**Paired differences** (:func:`compare`): where a search (``searched*``, ``smbo``) and hand-made
fusions (:data:`HAND_MADE`) both ran, each search is compared on the test rows with the best
hand-made fusion **by the selection score** (the mean over seeds of ``val``: the score the
evaluation stage chose epochs by, never the test split), with the best by mean test score too
when that is another one, and with the linear probe: Δ is the mean over seeds of the per-seed
difference of the test primary metric, and its 95 % interval the paired bootstrap over test rows
resampled jointly for all seeds (:func:`bmnas.report.stats.paired_difference`). A comparison
pairs the seeds both methods have predictions of; ``better`` only when the interval excludes 0.

A finished run (not a random sample) whose ``test_predictions.npz`` is missing (an ablation written
before bmnas kept them) or damaged is run again when the ablation resumes: it resumes from its own
checkpoints, so only the final test pass is recomputed, and its result row stays as it was; a run
that cannot resume is reported (a warning) and left out of the comparisons.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..core import locks
from ..core.config import Config
from ..core.data import FeatureData
from ..core.fileio import FileFormatError, append_jsonl, read_json, write_json, write_text_atomic
from ..core.schema import load_rows
from ..core.schemas import ABLATE_ROW
from ..engine import owned, saved_predictions
from ..engine.device import on_device
from ..engine.loop import Context, forward_batches
from ..engine.metrics import primary_metric
from ..engine.rundir import RunDir, RunError
from ..engine.saved_predictions import SavedPredictions
from ..method.train import train
from ..report import tables
from ..report.stats import N_BOOT, PairedDifference, paired_difference
from ..report.study_plots import ablation_bars
from .smbo import SMBOConfig
from .strategies import FIXED, PROBE, SEARCHED, VAL, Job, JobContext, probe_row, strategy_of

log = logging.getLogger(__name__)

METHODS = ("unimodal", "late_fusion", PROBE, *FIXED, "random", *SEARCHED, "smbo")
"""Method names; ``unimodal`` stands for every ``unimodal:<modality>``."""
HAND_MADE = ("late_fusion", *FIXED)
"""The hand-made fusions a search is compared with (the best of them, :func:`compare`)."""
SEARCHES = (*SEARCHED, "smbo")
"""The methods that search for their genotype (compared with the hand-made ones and the probe)."""


@dataclass(frozen=True)
class AblationOptions:
    """What to run: methods (names of :data:`METHODS` or ``unimodal:<modality>``), seeds, budgets."""

    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    random_samples: int = 5
    smbo: SMBOConfig = field(default_factory=SMBOConfig)


@dataclass(frozen=True)
class MethodSummary:
    """One table row: mean ± std over the method's runs and mean costs."""

    method: str
    runs: int
    metric: str
    mean: float
    std: float
    params: int
    params_fusion: int
    search_seconds: float
    train_seconds: float
    val_mean: float | None = None  # mean val score of the selection phase (trained on train alone)


@dataclass(frozen=True)
class Comparison:
    """A search against another method on the test rows: the paired difference ``method − against``.

    ``chosen_by`` says how ``against`` was picked: ``val`` (the best hand-made fusion by mean
    selection score), ``test`` (by mean test score), ``val, test`` (both) or ``""`` (the probe).
    ``difference`` is None when no seed has predictions of both (``seeds`` is then empty).
    """

    method: str
    against: str
    chosen_by: str
    seeds: tuple[int, ...]
    difference: PairedDifference | None


@dataclass
class AblationResult:
    rows: list[MethodSummary]
    results: list[dict]
    paths: dict[str, Path]
    cost_ratio: float | None
    comparisons: list[Comparison] = field(default_factory=list)


def expand_methods(methods: Sequence[str], data: FeatureData) -> list[str]:
    """Method names in table order, ``unimodal`` expanded to ``unimodal:<modality>``."""
    mods = list(data.modalities)
    valid = [f"unimodal:{m}" for m in mods] + [m for m in METHODS if m != "unimodal"]
    wanted: set[str] = set()
    for name in methods:
        if name == "unimodal":
            wanted.update(f"unimodal:{m}" for m in mods)
        elif name in valid:
            wanted.add(name)
        else:
            raise ValueError(f"unknown method {name!r}; choose from {['unimodal', *valid]}")
    return [m for m in valid if m in wanted]


def plan(methods: Sequence[str], opts: AblationOptions) -> list[Job]:
    """All jobs, seed by seed (after the first seed the table has every row)."""
    jobs = []
    for seed in opts.seeds:
        for m in methods:
            if m == "random":
                jobs += [Job(m, seed, k) for k in range(opts.random_samples)]
            else:
                jobs.append(Job(m, seed))
    return jobs


def run_job(
    job: Job, data: FeatureData, cfg: Config, opts: AblationOptions, root: Path, progress: bool
) -> dict:
    """Find the job's genotype by its method's strategy (:mod:`bmnas.studies.strategies`), train it."""
    run = RunDir(root / job.key)
    split = data["test"]
    if job.method == PROBE:
        row, logits = probe_row(job, data, cfg)
        SavedPredictions.of(logits, split.labels, data.task, cfg.data.threshold).save(
            predictions_path(run.path)
        )
        return row
    ctx = JobContext(data, cfg.replace(seed=job.seed), cfg, opts.smbo, run, progress)
    found = strategy_of(job.method)(job, ctx)
    found.genotype.save(run.genotype_path)
    r = train(
        found.genotype,
        data,
        found.cfg,
        run,
        progress=progress,
        desc=f"train {job.key}",
        selection=found.selection,
    )
    logits = logits_on_test(r.model, data, found.cfg)
    SavedPredictions.of(logits, split.labels, data.task, cfg.data.threshold).save(predictions_path(run.path))
    return {
        "method": job.method,
        "seed": job.seed,
        "sample": job.sample,
        "test": r.test,
        "params": r.params,
        "search_seconds": found.search_seconds,
        "train_seconds": r.seconds,
        VAL: r.val,
        "epochs": r.epochs,
        **found.extra,
        "genotype": found.genotype.to_dict(),
    }


def logits_on_test(model, data: FeatureData, cfg: Config) -> np.ndarray:
    """The logits ``(N, K)`` of a trained network on the test rows in order, on ``cfg.device``: the
    forward passes of :func:`bmnas.engine.loop.evaluate`, so their metrics are the result row's."""
    ctx = Context.of(cfg)
    split = on_device(data["test"], ctx.device)
    model.to(ctx.device)
    try:
        outs = [
            o.cpu().numpy()
            for _, o in forward_batches(model, len(split), split.batch, cfg.train.eval_batch_size, ctx.amp)
        ]
    finally:
        model.cpu()
    return np.concatenate(outs) if outs else np.empty((0, data.task.num_outputs), np.float32)


def predictions_path(job_dir: Path) -> Path:
    """Where a job's test predictions are saved (:data:`bmnas.engine.saved_predictions.FILE`)."""
    return job_dir / saved_predictions.FILE


def load_predictions(job_dir: Path, data: FeatureData) -> SavedPredictions | None:
    """A job's saved test predictions, or None when missing, damaged (logged) or of other test rows."""
    path = predictions_path(job_dir)
    try:
        saved = saved_predictions.load(path)
    except FileNotFoundError:
        return None
    except FileFormatError as err:
        log.warning("%s", err)
        return None
    labels = data["test"].labels
    if (
        saved.split != "test"
        or saved.task != data.task
        or saved.labels.shape != labels.shape
        or not np.array_equal(saved.labels, labels)
    ):
        log.warning("%s: predictions of other test rows than this data's; computing them again", path)
        return None
    return saved


# ----------------------------------------------------------------------------------------------
# Results: resume, summary, table, plot
# ----------------------------------------------------------------------------------------------


def _job_of(row: dict) -> Job:
    return Job(row["method"], int(row["seed"]), row.get("sample"))


def val_of(row: dict, metric: str) -> float | None:
    """A result row's val score (:data:`VAL`); rows written before it had that name carry ``val_<metric>``."""
    return row[VAL] if VAL in row else row.get(f"val_{metric}")


def summarize(results: Sequence[dict], methods: Sequence[str], metric: str) -> list[MethodSummary]:
    """One :class:`MethodSummary` per method with at least one result, in ``methods`` order."""
    out = []
    for m in methods:
        rows = [r for r in results if r["method"] == m]
        if not rows:
            continue
        v = np.array([r["test"][metric] for r in rows], dtype=np.float64)
        vals = [x for r in rows if (x := val_of(r, metric)) is not None]
        out.append(
            MethodSummary(
                method=m,
                runs=len(rows),
                metric=metric,
                mean=float(v.mean()),
                std=float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                params=int(round(np.mean([r["params"]["total"] for r in rows]))),
                params_fusion=int(round(np.mean([r["params"]["fusion"] for r in rows]))),
                search_seconds=float(np.mean([r["search_seconds"] for r in rows])),
                train_seconds=float(np.mean([r["train_seconds"] for r in rows])),
                val_mean=float(np.mean(vals)) if vals else None,
            )
        )
    return out


def cost_ratio(rows: Sequence[MethodSummary]) -> float | None:
    """Mean search seconds of ``smbo`` over those of ``searched`` (paper Table 5), if both ran."""
    by = {r.method: r for r in rows}
    if "smbo" in by and "searched" in by and by["searched"].search_seconds > 0:
        return by["smbo"].search_seconds / by["searched"].search_seconds
    return None


def markdown_table(
    rows: Sequence[MethodSummary], ratio: float | None = None, comparisons: Sequence[Comparison] = ()
) -> str:
    """The ablation table in Markdown, one row per method (and the search cost ratio, when given),
    then the paired differences (:func:`paired_table`) when there are ``comparisons``."""
    metric = rows[0].metric if rows else "metric"
    header = ["method", f"test {metric} (mean ± std)", f"val {metric}", "runs", "params", "fusion params"]
    body = [
        [
            r.method,
            f"{r.mean:.4f} ± {r.std:.4f}",
            f"{r.val_mean:.4f}" if r.val_mean is not None else "–",
            r.runs,
            f"{r.params:,}",
            f"{r.params_fusion:,}",
            f"{r.search_seconds:.1f}",
            f"{r.train_seconds:.1f}",
        ]
        for r in rows
    ]
    text = tables.markdown([*header, "search s", "train s"], body)
    if ratio is not None:
        text += f"\n\nSearch cost, SMBO / BM-NAS (mean wall seconds): {ratio:.2f}x"
    if comparisons:
        text += "\n\n" + paired_table(comparisons, rows[0].metric)
    return text + "\n"


def write_csv(rows: Sequence[MethodSummary], path: Path) -> Path:
    """One line per :class:`MethodSummary`, its fields as columns (``val_mean`` empty when None)."""
    return tables.write_csv(path, [f.name for f in fields(MethodSummary)], [astuple(r) for r in rows])


def compare(
    rows: Sequence[MethodSummary],
    predictions: dict[tuple[str, int], SavedPredictions],
    metric: str,
    n_boot: int = N_BOOT,
) -> list[Comparison]:
    """Every search in ``rows`` against the best hand-made fusion and the linear probe (the module).

    Args:
        rows: the table's rows (:func:`summarize`): which methods ran, their mean val and test scores.
        predictions: ``(method, seed) -> `` its saved test predictions (seeds without them are left out).
        metric: the primary metric (``accuracy`` or ``f1_weighted``).
    """
    by = {r.method: r for r in rows}
    hand = [r for r in rows if r.method in HAND_MADE]
    against: list[tuple[str, str]] = []
    if hand:
        by_test = max(hand, key=lambda r: r.mean).method
        with_val = [r for r in hand if r.val_mean is not None]
        by_val = max(with_val, key=lambda r: r.val_mean).method if len(with_val) == len(hand) else None
        if by_val == by_test:
            against.append((by_val, "val, test"))
        else:
            against += [(m, k) for m, k in ((by_val, "val"), (by_test, "test")) if m is not None]
    if PROBE in by:
        against.append((PROBE, ""))
    out = []
    for a in (r.method for r in rows if r.method in SEARCHES):
        for b, chosen_by in against:
            seeds = tuple(
                sorted({s for m, s in predictions if m == a} & {s for m, s in predictions if m == b})
            )
            diff = None
            if seeds:
                pa, pb = [predictions[a, s] for s in seeds], [predictions[b, s] for s in seeds]
                diff = paired_difference(
                    metric, [p.predicted for p in pa], [p.predicted for p in pb], pa[0].labels, n_boot
                )
            out.append(Comparison(a, b, chosen_by, seeds, diff))
    return out


def paired_table(comparisons: Sequence[Comparison], metric: str) -> str:
    """The paired differences in Markdown (a heading line, how they were computed, the table)."""
    rows_n = next((c.difference.rows for c in comparisons if c.difference is not None), 0)
    n_boot = next((c.difference.n_boot for c in comparisons if c.difference is not None), N_BOOT)
    head = (
        f"Paired differences on the {rows_n} test rows: Δ = mean over seeds of (method − against) in test "
        f"{metric}; 95 % interval: paired bootstrap, {n_boot:,} resamples of the test rows, the same rows "
        "for every seed. The best hand-made fusion is chosen by its mean selection score (val), and by its "
        'mean test score where that picks another. "better" only where the interval excludes 0.'
    )
    body = []
    for c in comparisons:
        d = c.difference
        if d is None:
            body.append([c.method, c.against, c.chosen_by or "–", "–", "–", "–", 0, "no predictions"])
            continue
        body.append(
            [
                c.method,
                c.against,
                c.chosen_by or "–",
                f"{d.mean:+.4f}",
                f"[{d.lo:+.4f}, {d.hi:+.4f}]",
                " ".join(f"{x:+.4f}" for x in d.per_seed),
                len(c.seeds),
                d.verdict,
            ]
        )
    header = [
        "method",
        "against",
        "chosen by",
        f"Δ test {metric}",
        "95 % interval",
        "per-seed Δ",
        "seeds",
        "verdict",
    ]
    return head + "\n\n" + tables.markdown(header, body)


PAIRED_COLUMNS = ("method", "against", "chosen_by", "seeds", "mean", "lo", "hi", "per_seed", "verdict")


def write_paired_csv(comparisons: Sequence[Comparison], path: Path) -> Path:
    """One line per :class:`Comparison` (:data:`PAIRED_COLUMNS`; seeds and per-seed Δ joined by ``;``)."""
    body = []
    for c in comparisons:
        d = c.difference
        seeds = ";".join(map(str, c.seeds))
        if d is None:
            body.append([c.method, c.against, c.chosen_by, seeds, None, None, None, None, None])
        else:
            per_seed = ";".join(repr(x) for x in d.per_seed)
            body.append(
                [
                    c.method,
                    c.against,
                    c.chosen_by,
                    seeds,
                    repr(d.mean),
                    repr(d.lo),
                    repr(d.hi),
                    per_seed,
                    d.verdict,
                ]
            )
    return tables.write_csv(path, PAIRED_COLUMNS, body)


def plot_table(rows: Sequence[MethodSummary], path: Path) -> Path:
    """Bar chart of the test metric per method, with ± std error bars (searched orange, SMBO purple)."""
    colors = [
        "tab:orange" if r.method in SEARCHED else "tab:purple" if r.method == "smbo" else "tab:blue"
        for r in rows
    ]
    metric = rows[0].metric if rows else ""
    return ablation_bars(
        [r.method for r in rows], [r.mean for r in rows], [r.std for r in rows], colors, metric, path
    )


def write_outputs(
    results: Sequence[dict],
    methods: Sequence[str],
    metric: str,
    out: Path,
    plot: bool = True,
    predictions: dict[tuple[str, int], SavedPredictions] | None = None,
):
    """Write ``ablation.md``, ``ablation.csv``, (``plot``) ``ablation.png`` and, given ``predictions``
    and a search with something to compare it with, ``ablation_paired.csv``; return rows, ratio,
    comparisons and paths."""
    rows = summarize(results, methods, metric)
    ratio = cost_ratio(rows)
    comparisons = compare(rows, predictions, metric) if predictions is not None else []
    md = write_text_atomic(out / "ablation.md", markdown_table(rows, ratio, comparisons))
    paths = {"markdown": md, "csv": write_csv(rows, out / "ablation.csv")}
    if comparisons:
        paths["paired"] = write_paired_csv(comparisons, out / "ablation_paired.csv")
    if rows and plot:
        paths["plot"] = plot_table(rows, out / "ablation.png")
    return rows, ratio, comparisons, paths


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def _spec(cfg: Config, opts: AblationOptions) -> dict:
    """What the stored results depend on (not the seeds or methods: those may grow)."""
    c = cfg.to_dict()
    for key in ("seed", "threads", "device", "precision"):  # not part of what the results mean
        c.pop(key, None)
    return {"config": c, "smbo": asdict(opts.smbo), "random_seed": cfg.seed}


def ablate(
    data: FeatureData,
    cfg: Config,
    out: str | Path,
    opts: AblationOptions = AblationOptions(),  # noqa: B008 (frozen, immutable)
    progress: bool = True,
    fresh: bool = False,
    verbose: bool | None = None,
) -> AblationResult:
    """Run every (method, seed) job not yet in ``out/ablate/results.jsonl``; write the table and plot.

    ``progress`` shows progress bars; ``verbose`` (default: as ``progress``) prints one line per run.

    Raises:
        RunError: ``out`` holds results of another configuration (use ``fresh`` or another ``out``),
            or another ablation is running in it (``out/ablate/lock`` names its process).
    """
    out = Path(out)
    root = out / "ablate"
    root.mkdir(parents=True, exist_ok=True)
    lock = root / LOCK
    if not locks.try_lock(lock):
        raise RunError(
            f"{root} is in use by another ablation (process {locks.holder(lock)}); wait for it or use "
            f"another --out"
        )
    try:
        if fresh:
            owned.clear_folder(root, owned.OWNED_DIRS["ablate"], keep=(LOCK,))  # a user's files stay
        return _run(data, cfg, out, root, opts, progress, progress if verbose is None else verbose)
    finally:
        locks.release(lock)


LOCK = "lock"  # flock-ed by the running ablation (its pid inside), like a run directory's .lock


def _run(
    data: FeatureData,
    cfg: Config,
    out: Path,
    root: Path,
    opts: AblationOptions,
    progress: bool,
    verbose: bool,
) -> AblationResult:
    spec, spec_path = _spec(cfg, opts), root / "spec.json"
    if spec_path.exists() and read_json(spec_path) != spec:
        raise RunError(
            f"{root} holds results of another configuration; rerun with the same config, "
            f"use a new --out directory, or --fresh to discard them"
        )
    write_json(spec_path, spec)
    methods = expand_methods(opts.methods, data)
    metric = primary_metric(data.task)
    results_path = root / "results.jsonl"
    results = load_rows(  # a line cut by a kill, or damaged: that job reruns
        results_path,
        ABLATE_ROW,
        "running that job again",
        valid=lambda r: None if metric in r["test"] else f"test has no {metric!r} (the primary metric)",
    )
    done = {_job_of(r) for r in results}
    jobs = plan(methods, opts)
    todo = [j for j in jobs if j not in done]
    redo = [  # the comparisons' inputs (random samples are not compared)
        j for j in jobs if j in done and j.sample is None and load_predictions(root / j.key, data) is None
    ]
    say = log.info if verbose else (lambda s: None)  # shown by the CLI unless --quiet
    say(
        f"ablate: {len(jobs)} runs ({len(methods)} methods x {len(opts.seeds)} seeds), "
        f"{len(jobs) - len(todo)} already done -> {results_path}"
    )
    for i, job in enumerate(todo, len(jobs) - len(todo) + 1):
        row = run_job(job, data, cfg, opts, root, progress)
        append_jsonl(results_path, row)
        results.append(row)
        say(
            f"[{i}/{len(jobs)}] {job.key}: test {metric} {row['test'][metric]:.4f} | "
            f"params {row['params']['total']:,} | search {row['search_seconds']:.1f} s | "
            f"train {row['train_seconds']:.1f} s"
        )
        write_outputs(_selected(results, jobs), methods, metric, out, plot=False)  # partial table
    if redo:
        say(f"ablate: computing the test predictions of {len(redo)} finished runs again (they resume)")
    for job in redo:  # finished before bmnas kept predictions: the run resumes, its row stays
        try:
            run_job(job, data, cfg, opts, root, progress)
        except (RunError, FileFormatError) as err:
            log.warning(
                "%s: no test predictions (%s); its comparisons leave seed %d out", job.key, err, job.seed
            )
    selected = _selected(results, jobs)
    preds = {}
    for row in selected:
        job = _job_of(row)
        if job.sample is None and (saved := load_predictions(root / job.key, data)) is not None:
            preds[job.method, job.seed] = saved
            if abs(saved.metrics()[metric] - row["test"][metric]) > 1e-9:  # e.g. a nondeterministic GPU
                log.warning(
                    "%s: the test predictions score %s %.6f, its result row %.6f; the comparisons use the "
                    "predictions",
                    job.key,
                    metric,
                    saved.metrics()[metric],
                    row["test"][metric],
                )
    rows, ratio, comparisons, paths = write_outputs(selected, methods, metric, out, predictions=preds)
    return AblationResult(rows, selected, {**paths, "results": results_path}, ratio, comparisons)


def _selected(results: Sequence[dict], jobs: Sequence[Job]) -> list[dict]:
    """The results of this plan's jobs, one per job (rows of dropped seeds or methods stay on disk)."""
    wanted, seen, out = set(jobs), set(), []
    for r in results:
        job = _job_of(r)
        if job in wanted and job not in seen:  # the first result of a job counts
            seen.add(job)
            out.append(r)
    return out


# ----------------------------------------------------------------------------------------------
# Seeds
# ----------------------------------------------------------------------------------------------


def parse_seeds(text: str, base: int = 0) -> tuple[int, ...]:
    """``"3"`` → three seeds from ``base``; ``"0,5,7"`` → those seeds."""
    text = text.strip()
    try:
        if "," in text:
            seeds = tuple(int(s) for s in text.split(",") if s.strip())
        else:
            seeds = tuple(range(base, base + int(text)))
    except ValueError:
        raise ValueError(f"--seeds: expected a count (3) or a list (0,1,2), got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: need at least one seed and no repeats, got {text!r}")
    return seeds
