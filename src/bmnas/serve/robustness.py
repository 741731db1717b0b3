"""How a run's networks fail without a modality or under noise (the test split, perturbed).

Conditions, applied to the pooled ``(N, L_k, C_in)`` test features every network reads:

* ``clean``: unchanged.
* ``missing:<m>:zeros``: every feature of modality ``m`` replaced by zeros (what
  :func:`bmnas.engine.augment.drop_modalities` trains for).
* ``missing:<m>:mean``: every feature of ``m`` replaced by its train mean ``μ = mean_n f_n``
  (per position and channel), i.e. the prediction a constant, uninformative input gets.
* ``noise:<σ>``: ``f + σ · s ⊙ ε`` on every feature, ``ε ~ N(0, 1)``, ``s`` the feature's per-channel
  train std over samples and positions (so σ is relative); drawn with a fixed seed, the same
  draw for every network.

Networks: the run's found network, each baseline it trained (``baseline_*.ckpt.pt``) and the linear
probe (``linear_probe.pt``); the recommended one (:func:`bmnas.serve.model.load`'s default) is
named in the report. The table holds the primary test metric (accuracy or weighted F1) per network
and condition.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.data import FeatureData, FeatureSplit
from ..core.fileio import write_json, write_text_atomic
from ..engine.augment import modality_of
from ..engine.metrics import primary_metric
from ..report import tables
from ..report.study_plots import condition_bars
from ..report.summary import read_metrics
from .model import FOUND_STAGE, PROBE_FILE, LoadedModel, ModelError, load
from .predict import run_data

log = logging.getLogger(__name__)

NOISE_LEVELS = (0.1, 0.5, 1.0)
FOUND_NAME = "searched"


def conditions(modalities: Sequence[str], noise: Sequence[float] = NOISE_LEVELS) -> list[str]:
    """``clean``, then per modality ``missing:<m>:zeros`` and ``missing:<m>:mean``, then ``noise:<σ>``."""
    out = ["clean"]
    for m in modalities:
        out += [f"missing:{m}:zeros", f"missing:{m}:mean"]
    return out + [f"noise:{s:g}" for s in noise]


def train_stats(train: FeatureSplit) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per feature: train mean ``(L_k, C_in)`` over samples and std ``(C_in,)`` over samples and positions."""
    return {
        k: (
            v.mean(axis=0, dtype=np.float64).astype(np.float32),
            v.std(axis=(0, 1), dtype=np.float64).astype(np.float32),
        )
        for k, v in train.features.items()
    }


def perturb(
    features: Mapping[str, np.ndarray],
    condition: str,
    stats: Mapping[str, tuple[np.ndarray, np.ndarray]],
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """``features`` under ``condition`` (see the module docstring); a new dict, inputs untouched."""
    if condition == "clean":
        return dict(features)
    kind, _, rest = condition.partition(":")
    if kind == "missing":
        modality, _, fill = rest.rpartition(":")
        if fill not in ("zeros", "mean"):
            raise ValueError(f"unknown fill {fill!r} in {condition!r}; use zeros or mean")
        out = dict(features)
        for k, v in features.items():
            if modality_of(k) == modality:
                out[k] = np.zeros_like(v) if fill == "zeros" else np.broadcast_to(stats[k][0], v.shape).copy()
        return out
    if kind == "noise":
        sigma = float(rest)
        rng = np.random.default_rng(seed)
        return {
            k: (v + sigma * stats[k][1] * rng.standard_normal(v.shape, dtype=np.float32)).astype(np.float32)
            for k, v in features.items()
        }
    raise ValueError(f"unknown condition {condition!r}")


def run_models(run_dir: str | Path) -> dict[str, LoadedModel]:
    """The found network (``searched``), every baseline the run trained and the linear probe, by
    display name."""
    run = Path(run_dir)
    models = {FOUND_NAME: load(run, FOUND_STAGE)}
    names = list(((read_metrics(run / "metrics.json") or {}).get("baselines")) or {})
    stages = {"baseline_" + n.replace(":", "_"): n for n in names}
    for path in sorted(run.glob("baseline_*.ckpt.pt")):
        stage = path.name.removesuffix(".ckpt.pt")
        try:
            models[stages.get(stage, stage.removeprefix("baseline_"))] = load(run, stage)
        except ModelError as err:  # e.g. a baseline whose training was interrupted
            log.warning("skipping %s: %s", stage, err)
    if (run / PROBE_FILE).is_file():
        probe = load(run, "linear_probe")
        models[probe.method] = probe
    return models


def evaluate_robustness(
    models: Mapping[str, LoadedModel],
    data: FeatureData,
    noise: Sequence[float] = NOISE_LEVELS,
    seed: int = 0,
    split: str = "test",
) -> list[dict]:
    """Rows ``{"method", "condition", <metric>: value}`` for every network and condition."""
    metric = primary_metric(data.task)
    stats = train_stats(data["train"])
    test = data[split]
    rows = []
    for cond in conditions(data.modalities, noise):
        feats = perturb(test.features, cond, stats, seed)
        for name, model in models.items():
            value = model.predict_pooled(feats).metrics(test.labels)[metric]
            rows.append({"method": name, "condition": cond, metric: value})
    return rows


def pivot(rows: Sequence[dict], metric: str) -> tuple[list[str], list[str], dict[tuple[str, str], float]]:
    """Methods and conditions in first-seen order, and ``{(method, condition): metric value}``."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    return methods, conds, {(r["method"], r["condition"]): r[metric] for r in rows}


def markdown_table(rows: Sequence[dict], metric: str) -> str:
    """Methods as rows, conditions as columns (right-aligned), the metric to 4 decimals."""
    methods, conds, value = pivot(rows, metric)
    body = [[m, *(f"{value[m, c]:.4f}" for c in conds)] for m in methods]
    return tables.markdown([f"method ({metric})", *conds], body, align="-" + "r" * len(conds))


def write_csv(rows: Sequence[dict], metric: str, path: Path) -> Path:
    """The table as CSV, each value in full (``repr`` of the float)."""
    methods, conds, value = pivot(rows, metric)
    body = [[m, *(repr(float(value[m, c])) for c in conds)] for m in methods]
    return tables.write_csv(path, ["method", *conds], body)


def chance_level(data: FeatureData, split: str = "test") -> tuple[float, str]:
    """The primary metric of a predictor without information, and what that predictor is.

    Multiclass: ``1/K`` (a uniform guess). Multilabel (weighted F1): the expected score of guessing
    each label ``k`` positive at random at its train rate ``p_k``; with test rate ``q_k`` its
    precision is ``q_k`` and its recall ``p_k``, so ``F1_k = 2 p_k q_k / (p_k + q_k)``, weighted by
    the test support ``q_k / Σ q``. (Predicting every label negative scores 0.)
    """
    if data.task.type == "multiclass":
        k = data.task.num_outputs
        return 1.0 / k, f"chance: 1/K = 1/{k}"
    p = np.asarray(data["train"].labels, dtype=np.float64).mean(axis=0)
    q = np.asarray(data[split].labels, dtype=np.float64).mean(axis=0)
    f1 = np.divide(2 * p * q, p + q, out=np.zeros_like(p), where=(p + q) > 0)
    score = float((f1 * q).sum() / q.sum()) if q.sum() > 0 else 0.0
    return score, "chance: each label guessed at its train rate (expected weighted F1)"


def probe_score(run_dir: str | Path, metric: str) -> float | None:
    """The linear probe's test ``metric`` on the clean test split, as ``bmnas run`` recorded it."""
    metrics = read_metrics(Path(run_dir) / "metrics.json") or {}
    probe = (metrics.get("baselines") or {}).get("linear_probe") or {}
    value = (probe.get("test") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def plot(
    rows: Sequence[dict],
    metric: str,
    path: Path,
    title: str | None = None,
    chance: tuple[float, str] | None = None,
    probe: float | None = None,
) -> Path:
    """Grouped bars: one group per condition, one bar per network; the chance line across them, the
    linear probe over ``clean`` (where it was measured)."""
    mark = (probe, "linear probe (clean test, metrics.json)") if probe is not None else None
    return condition_bars(*pivot(rows, metric), metric, path, title=title, chance=chance, probe=mark)


@dataclass(frozen=True)
class RobustnessReport:
    """The rows of :func:`evaluate_robustness`, their primary metric, the Markdown table and the
    files written (``markdown``, ``json``, ``csv``, ``plot``)."""

    rows: list[dict]
    metric: str
    table: str
    paths: dict[str, Path]
    chance: tuple[float, str] | None = None  # chance_level: score and what it is
    probe: float | None = None  # the linear probe's clean test score, if the run has one
    recommended: str = FOUND_NAME


def robustness_report(
    run_dir: str | Path,
    cache: str | Path | None = None,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    noise: Sequence[float] = NOISE_LEVELS,
    seed: int = 0,
    progress: bool = False,
) -> RobustnessReport:
    """Evaluate a run's networks (:func:`run_models`) on its test split under every condition and
    write ``robustness.{md,json,csv,png}`` into ``out`` (default: the run directory).

    ``data_dir``: a generic directory to read instead of the run's own data; ``cache``: the cache
    root, for a run on a registered dataset.
    """
    models = run_models(run_dir)
    recommended = load(run_dir)  # the default network: the recommended one, else the found one
    data = run_data(recommended.config, recommended.L, cache, progress=progress, data_dir=data_dir)
    metric = primary_metric(data.task)
    rows = evaluate_robustness(models, data, noise, seed)
    out = Path(out or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, metric)
    chance = chance_level(data)
    probe = probe_score(run_dir, metric)
    title = (
        f"{Path(run_dir).resolve().name}: test {metric} without a modality and under noise (σ × train std)"
    )
    paths = {
        "markdown": write_text_atomic(out / "robustness.md", table + "\n"),
        "json": write_json(out / "robustness.json", rows),
        "csv": write_csv(rows, metric, out / "robustness.csv"),
        "plot": plot(rows, metric, out / "robustness.png", title, chance, probe),
    }
    return RobustnessReport(rows, metric, table, paths, chance, probe, recommended.method)
