"""How each method of an ablation finds the genotype it trains: one :data:`Strategy` per method name.

A strategy (NNI's word) is a function ``(job, context) -> Found``: the genotype to train, the
configuration to train it with and how it was found (search seconds, a selection phase the search
already ran, result-row fields). :data:`STRATEGIES` maps every method name to one:

* :func:`fixed_genotype` — a hand-made fusion (``unimodal:<m>``, ``late_fusion``, ``sum``, …) or
  sample ``k`` of the search space (``random``; drawn from ``default_rng([config seed, k])``, the
  same for every seed): no search, 0 search seconds;
* :func:`bilevel_search` — BM-NAS (:func:`bmnas.method.search.search`) with the ``searched*``
  method's settings (:func:`search_config`);
* :func:`smbo_search` — the best genotype of :func:`bmnas.studies.smbo.smbo`.

The linear probe trains no genotype: its row is :func:`probe_row`. Every strategy's genotype is
then trained the same way (:func:`bmnas.method.train.train`) by :func:`bmnas.studies.ablate.run_job`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..core.config import Config
from ..core.data import FeatureData
from ..core.genotype import Genotype
from ..engine.rundir import RunDir
from ..method.probe import fit_probe
from ..method.search import search
from ..method.train import Selection
from ..space.baselines import FIXED_CELLS, baseline
from ..space.ops import ZERO
from .smbo import SMBOConfig, sample, smbo

FIXED = tuple(FIXED_CELLS)
SEARCHED = ("searched", "searched_paper", "searched_shared", "searched_no_zero")
PROBE = "linear_probe"
VAL = "val"
"""The result rows' key of the val score: the selection phase's (the probe's: its choice of ``C``)."""


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


@dataclass(frozen=True)
class JobContext:
    """What a strategy works with besides its :class:`Job`."""

    data: FeatureData
    cfg: Config  # the ablation's configuration with the job's seed
    base: Config  # the ablation's configuration as given: its seed draws the random samples
    smbo: SMBOConfig  # the budget of ``smbo``
    run: RunDir  # the job's directory (search checkpoints, SMBO log)
    progress: bool


@dataclass(frozen=True)
class Found:
    """A strategy's answer: the genotype to train, the config to train it with, and how it was found."""

    genotype: Genotype
    cfg: Config
    search_seconds: float = 0.0  # the cost of finding it: 0 for a genotype that needs no search
    selection: Selection | None = None  # a selection phase the search already ran on this genotype
    extra: dict = field(default_factory=dict)  # result-row fields that describe the search


Strategy = Callable[[Job, JobContext], Found]
"""Job and context -> :class:`Found`: one signature for every way of choosing a genotype."""


def fixed_genotype(job: Job, ctx: JobContext) -> Found:
    """A hand-made fusion, a unimodal network or a random sample of the space (:func:`genotype_for`)."""
    return Found(genotype_for(job, ctx.data, ctx.base), ctx.cfg)  # random samples: the same for every seed


def bilevel_search(job: Job, ctx: JobContext) -> Found:
    """BM-NAS (:func:`bmnas.method.search.search`) with the method's settings (:func:`search_config`)."""
    cfg = search_config(job.method, ctx.cfg)
    found = search(ctx.data, cfg, ctx.run, progress=ctx.progress)
    extra = {
        "best_epoch": found.best_epoch,
        f"hypernet_val_{found.metric}": found.best_score,
        "candidates": [{k: c[k] for k in ("source", "val", "best_epoch")} for c in found.candidates],
    }
    selection = found.selection(cfg.train.epochs, cfg.train.select_folds)
    return Found(found.genotype, cfg, found.seconds, selection, extra)


def smbo_search(job: Job, ctx: JobContext) -> Found:
    """The best genotype of :func:`bmnas.studies.smbo.smbo`; its ``val`` is SMBO's own score of it."""
    found = smbo(ctx.data, ctx.cfg, ctx.smbo, log=ctx.run.path / "smbo.jsonl", progress=ctx.progress)
    extra = {"evaluated": len(found.history), VAL: found.score}  # replaces the selection phase's val
    return Found(found.genotype, ctx.cfg, found.seconds, extra=extra)


STRATEGIES: dict[str, Strategy] = {
    "unimodal": fixed_genotype,
    "late_fusion": fixed_genotype,
    **dict.fromkeys(FIXED, fixed_genotype),
    "random": fixed_genotype,
    **dict.fromkeys(SEARCHED, bilevel_search),
    "smbo": smbo_search,
}
"""Method name (``unimodal`` for every ``unimodal:<modality>``) -> its :data:`Strategy`: every method of
:data:`bmnas.studies.ablate.METHODS` but the linear probe, which trains no genotype (:func:`probe_row`)."""


def strategy_of(method: str) -> Strategy:
    """The :data:`Strategy` of ``method`` (``unimodal:<modality>`` included)."""
    try:
        return STRATEGIES[method.partition(":")[0]]
    except KeyError:
        raise ValueError(f"method {method!r} has no strategy; choose from {sorted(STRATEGIES)}") from None


def probe_row(job: Job, data: FeatureData, cfg: Config) -> tuple[dict, np.ndarray]:
    """The result row of the linear probe (:func:`bmnas.method.probe.linear_probe`) at the job's seed,
    and its test logits."""
    probe = fit_probe(data, job.seed, cfg.data.threshold, cfg.train.select_folds)
    r, logits = probe.row, probe.test_logits
    row = {
        "method": job.method,
        "seed": job.seed,
        "sample": job.sample,
        "test": r["test"],
        "params": r["params"],
        "search_seconds": 0.0,
        "train_seconds": r["train_seconds"],
        VAL: r["val"],
        "C": r["C"],
    }
    return row, logits
