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
    ablate/<method>/seed<s>/  per-run checkpoints (a killed training or search resumes), genotype
    ablation.md, ablation.csv one row per method: mean ± std over runs of the test primary metric,
    ablation.png              parameters, search and train seconds; bar chart with error bars

Std is the sample standard deviation (``ddof = 1``), 0 for a single run.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..core import locks
from ..core.config import Config
from ..core.data import FeatureData
from ..core.fileio import append_jsonl, atomic_write, read_json, read_jsonl, write_json, write_text_atomic
from ..core.genotype import Genotype
from ..engine import owned
from ..engine.metrics import primary_metric
from ..engine.rundir import RunDir, RunError
from ..method.probe import linear_probe
from ..method.search import search
from ..method.train import train
from ..space.baselines import FIXED_CELLS, baseline
from ..space.ops import ZERO
from .smbo import SMBOConfig, sample, smbo

log = logging.getLogger(__name__)

FIXED = tuple(FIXED_CELLS)
SEARCHED = ("searched", "searched_paper", "searched_shared", "searched_no_zero")
METHODS = ("unimodal", "late_fusion", "linear_probe", *FIXED, "random", *SEARCHED, "smbo")
"""Method names; ``unimodal`` stands for every ``unimodal:<modality>``."""


@dataclass(frozen=True)
class AblationOptions:
    """What to run: methods (names of :data:`METHODS` or ``unimodal:<modality>``), seeds, budgets."""

    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    random_samples: int = 5
    smbo: SMBOConfig = field(default_factory=SMBOConfig)


@dataclass(frozen=True)
class Job:
    """One training run: a method, a seed and, for ``random``, the sample index."""

    method: str
    seed: int
    sample: int | None = None

    @property
    def key(self) -> str:
        sample = f"/sample{self.sample}" if self.sample is not None else ""
        return f"{self.method.replace(':', '_')}{sample}/seed{self.seed}"


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


@dataclass
class AblationResult:
    rows: list[MethodSummary]
    results: list[dict]
    paths: dict[str, Path]
    cost_ratio: float | None


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


def _with_model(cfg: Config, **changes) -> Config:
    return cfg.replace(model=type(cfg.model)(**{**cfg.model.__dict__, **changes}))


def genotype_for(job: Job, data: FeatureData, cfg: Config) -> Genotype:
    """The fixed genotype of a baseline job (every method but the searched ones and ``smbo``)."""

    specs, m = data.specs(), cfg.model
    if job.method.startswith("unimodal:") or job.method in ("late_fusion", *FIXED):
        return baseline(job.method, specs, m.C, m.L, m.cells, m.multiplier)
    if job.method == "random":  # the genotypes SMBO draws, from the same search space
        return sample(data, cfg, np.random.default_rng([cfg.seed, job.sample or 0]))
    raise ValueError(f"method {job.method!r} has no fixed genotype")


def search_config(method: str, cfg: Config) -> Config:
    """The search config of a ``searched*`` method: ``input_mode`` separate unless ``_shared``."""
    if method not in SEARCHED:
        raise ValueError(f"{method!r} is not one of {SEARCHED}")
    if method == "searched_shared":
        return _with_model(cfg, input_mode="shared")
    if method == "searched_paper":  # the paper's relaxation and derivation, argmax genotype
        paper = {"distinct_steps": False, "zero_output": True, "warmup_epochs": 0, "rerank": 0}
        cfg = cfg.replace(search=type(cfg.search)(**{**cfg.search.__dict__, **paper}))
        return _with_model(cfg, input_mode="separate", relaxation="gate")
    if method == "searched_no_zero":
        return _with_model(cfg, input_mode="separate", ops=tuple(o for o in cfg.model.ops if o != ZERO))
    return _with_model(cfg, input_mode="separate")


def run_job(
    job: Job, data: FeatureData, cfg: Config, opts: AblationOptions, root: Path, progress: bool
) -> dict:
    """Search (if the method searches) and train one job; return its result row."""

    run = RunDir(root / job.key)
    if job.method == "linear_probe":
        r = linear_probe(data, job.seed, cfg.data.threshold)
        metric = primary_metric(data.task)
        return {
            "method": job.method,
            "seed": job.seed,
            "sample": job.sample,
            "test": r["test"],
            "params": r["params"],
            "search_seconds": 0.0,
            "train_seconds": r["train_seconds"],
            f"val_{metric}": r["val"],
            "C": r["C"],
        }
    base = cfg  # the random samples do not depend on the seed
    cfg = cfg.replace(seed=job.seed)
    search_seconds, extra, selection = 0.0, {}, None
    if job.method in SEARCHED:
        cfg = search_config(job.method, cfg)
        found = search(data, cfg, run, progress=progress)
        genotype, search_seconds = found.genotype, found.seconds
        selection = found.selection(cfg.train.epochs, cfg.train.select_folds)
        extra = {
            "best_epoch": found.best_epoch,
            f"hypernet_val_{found.metric}": found.best_score,
            "candidates": [{k: c[k] for k in ("source", "val", "best_epoch")} for c in found.candidates],
        }
    elif job.method == "smbo":
        found = smbo(data, cfg, opts.smbo, log=run.path / "smbo.jsonl", progress=progress)
        genotype, search_seconds = found.genotype, found.seconds
        extra = {"evaluated": len(found.history), f"val_{found.metric}": found.score}
    else:
        genotype = genotype_for(job, data, base)
    genotype.save(run.genotype_path)
    r = train(genotype, data, cfg, run, progress=progress, desc=f"train {job.key}", selection=selection)
    return {
        "method": job.method,
        "seed": job.seed,
        "sample": job.sample,
        "test": r.test,
        "params": r.params,
        "search_seconds": search_seconds,
        "train_seconds": r.seconds,
        f"val_{primary_metric(data.task)}": r.val,
        "epochs": r.epochs,
        **extra,
        "genotype": genotype.to_dict(),
    }


# ----------------------------------------------------------------------------------------------
# Results: resume, summary, table, plot
# ----------------------------------------------------------------------------------------------


def _job_of(row: dict) -> Job:
    return Job(row["method"], int(row["seed"]), row.get("sample"))


def summarize(results: Sequence[dict], methods: Sequence[str], metric: str) -> list[MethodSummary]:
    """One :class:`MethodSummary` per method with at least one result, in ``methods`` order."""
    out = []
    for m in methods:
        rows = [r for r in results if r["method"] == m]
        if not rows:
            continue
        v = np.array([r["test"][metric] for r in rows], dtype=np.float64)
        vals = [r[f"val_{metric}"] for r in rows if r.get(f"val_{metric}") is not None]
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


def markdown_table(rows: Sequence[MethodSummary], ratio: float | None = None) -> str:
    """The ablation table in Markdown, one row per method."""
    metric = rows[0].metric if rows else "metric"
    lines = [
        f"| method | test {metric} (mean ± std) | val {metric} | runs | params | fusion params | search s "
        "| train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        val = f"{r.val_mean:.4f}" if r.val_mean is not None else "–"
        lines.append(
            f"| {r.method} | {r.mean:.4f} ± {r.std:.4f} | {val} | {r.runs} | {r.params:,} "
            f"| {r.params_fusion:,} | {r.search_seconds:.1f} | {r.train_seconds:.1f} |"
        )
    if ratio is not None:
        lines.append("")
        lines.append(f"Search cost, SMBO / BM-NAS (mean wall seconds): {ratio:.2f}x")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[MethodSummary], path: Path) -> Path:
    names = list(asdict(rows[0])) if rows else list(MethodSummary.__dataclass_fields__)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=names)
    w.writeheader()
    for r in rows:
        w.writerow(asdict(r))
    return write_text_atomic(path, buf.getvalue())


def plot_table(rows: Sequence[MethodSummary], path: Path) -> Path:
    """Bar chart of the test metric per method, with ± std error bars.

    A bare :class:`~matplotlib.figure.Figure`: pyplot's backend is process-wide, not ours to set.
    """

    fig = Figure(figsize=(max(5.0, 0.7 * len(rows) + 1.5), 3.8))
    ax = fig.subplots()
    colors = [
        "tab:orange" if r.method in SEARCHED else "tab:purple" if r.method == "smbo" else "tab:blue"
        for r in rows
    ]
    x = np.arange(len(rows))
    ax.bar(x, [r.mean for r in rows], yerr=[r.std for r in rows], capsize=3, color=colors)
    lo = min((r.mean - r.std for r in rows), default=0.0)
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max((r.mean + r.std for r in rows), default=1.0) + 0.03))
    ax.set_xticks(x, [r.method for r in rows], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(f"test {rows[0].metric if rows else ''}")
    ax.set_title("baselines and ablations (mean ± std over runs)")
    fig.tight_layout()
    return atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))


def write_outputs(results: Sequence[dict], methods: Sequence[str], metric: str, out: Path, plot: bool = True):
    """Write ``ablation.md``, ``ablation.csv`` and (``plot``) ``ablation.png``; return rows, ratio, paths."""
    rows = summarize(results, methods, metric)
    ratio = cost_ratio(rows)
    md = write_text_atomic(out / "ablation.md", markdown_table(rows, ratio))
    paths = {"markdown": md, "csv": write_csv(rows, out / "ablation.csv")}
    if rows and plot:
        paths["plot"] = plot_table(rows, out / "ablation.png")
    return rows, ratio, paths


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
    results = read_jsonl(results_path)  # a last line cut by a kill is skipped: that job reruns
    done = {_job_of(r) for r in results}
    jobs = plan(methods, opts)
    todo = [j for j in jobs if j not in done]
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
    rows, ratio, paths = write_outputs(_selected(results, jobs), methods, metric, out)
    return AblationResult(rows, _selected(results, jobs), {**paths, "results": results_path}, ratio)


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
