"""The summary of a ``bmnas run``: every method's result row, the recommended network and the table.

The **recommended** network (:func:`recommend`) is the row of :data:`CONTENDERS` (the searched
network, the hand-made fusions and the linear probe) with the highest selection score ``val``: the
val split's score, or with ``train.select_folds = k`` the mean over the k folds of train + val. The
test split never takes part in the choice; since late fusion is always a contender, the recommended
network is never worse than late fusion on that score. Each method's trained network is a *stage*
of the run directory (:func:`stage_of`), which ``bmnas predict``/``export-model`` and
:func:`bmnas.load` read. Pure functions of the rows: the same summary is rebuilt from a finished
run's ``metrics.json`` (:func:`report_from_metrics`, ``bmnas show``).

A row: ``test`` (every test metric), ``val`` (the selection score, None without one), ``params``
(``total``, ...), ``epochs``, ``train_seconds`` and, for the searched network, ``search_seconds``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.fileio import FileFormatError
from ..core.genotype import Genotype
from ..core.schema import load_json
from ..core.schemas import METRICS

SEARCHED = "searched"
PROBE = "linear_probe"
FUSIONS = (SEARCHED, "late_fusion", "sum", "concat_fc")
"""The searched network and the hand-made fusions."""
CONTENDERS = (*FUSIONS, PROBE)
"""Networks the recommendation chooses among: the fusions and the linear probe."""
FOUND_STAGE = "train"
"""The stage of the searched network (``model.pt``, else ``train.ckpt.pt``)."""


def stage_of(method: str) -> str:
    """The stage name of a method's trained network in a run directory: ``searched`` → ``train``,
    ``linear_probe`` → ``linear_probe``, any other (a baseline such as ``late_fusion`` or
    ``unimodal:image``) → ``baseline_<name>`` with ``:`` as ``_``."""
    if method == SEARCHED:
        return FOUND_STAGE
    if method == PROBE:
        return PROBE
    return "baseline_" + method.replace(":", "_")


VAL_FITTED_NOTE = (
    " (its architecture was chosen on val, so its val score is optimistic: by 1-3 points on AV-MNIST "
    "and emoji, see docs/DESIGN.md; compare on a split the search never saw before relying on a small margin)"
)


@dataclass
class RunReport:
    """Every method's result row (``test``, ``val``, ``params``, ``epochs``, seconds) and the choice."""

    rows: dict[str, dict]
    metric: str
    recommended: str
    reason: str
    genotypes: dict[str, Genotype] = field(default_factory=dict)
    folds: int = 0  # the val column: 0 = the val split, k = k-fold CV over train + val


def score_name(folds: int, val_only: bool = False) -> str:
    """What the ``val`` score is, in words: ``val``, ``k-fold CV (train + val)``, or with ``val_only``
    (:func:`bmnas.engine.folds.scores_val_only`) ``k-fold CV (val rows scored)``."""
    if not folds:
        return "val"
    return f"{folds}-fold CV ({'val rows scored' if val_only else 'train + val'})"


def recommend(
    rows: dict[str, dict], metric: str, searched_saw_val: bool = False, scored_by: str = "val"
) -> tuple[str, str]:
    """The best row of :data:`CONTENDERS` by its ``val`` score (ties: the searched one, then table
    order), and why.

    ``scored_by`` names that score in the reason (``val``, or e.g. ``3-fold CV``).
    ``searched_saw_val``: the score is on the val split the search's architecture steps used
    (``arch_split = 0``, ``train.select_folds = 0``); if the searched network wins, the reason says
    that its score is optimistic.
    """
    eligible = [n for n in rows if n in CONTENDERS and rows[n].get("val") is not None]
    if not eligible:
        return SEARCHED, "no val score to compare (train.select_epochs is off): the searched network"
    best = max(eligible, key=lambda n: (rows[n]["val"], n == SEARCHED, -eligible.index(n)))
    others = ", ".join(f"{n} {rows[n]['val']:.4f}" for n in eligible if n != best)
    reason = f"highest {scored_by} {metric} ({rows[best]['val']:.4f})" + (f"; {others}" if others else "")
    if best == SEARCHED and searched_saw_val:
        reason += VAL_FITTED_NOTE
    return best, reason


METRICS_FIX = (
    "restore the file, or rerun the bmnas run or train command that wrote it (finished stages are not redone)"
)


def read_metrics(path: str | Path, default: object = None) -> dict | None:
    """A run's ``metrics.json`` checked against :data:`~bmnas.core.schemas.METRICS` (``default``
    when there is none), and every result row holding the run's metric.

    Raises :class:`~bmnas.core.fileio.FileFormatError` naming the file and the field.
    """
    metrics = load_json(path, METRICS, METRICS_FIX, default=default)
    if metrics is None:
        return None
    metric = metric_of(metrics)
    rows = {SEARCHED: metrics, **metrics.get("baselines", {})}
    for name, row in rows.items():
        if metric not in row["test"]:
            where = "test" if name == SEARCHED else f"baselines.{name}.test"
            raise FileFormatError(f"{path}: {where} has no {metric!r} (the run's metric); {METRICS_FIX}")
    method = (metrics.get("recommended") or {}).get("method")
    if method is not None and method not in rows:
        raise FileFormatError(f"{path}: recommended.method {method!r} is none of its rows; {METRICS_FIX}")
    return metrics


def metric_of(metrics: dict) -> str:
    """The primary metric of a ``metrics.json``: its ``metric``, else read off its test scores."""
    return metrics.get("metric") or ("accuracy" if "accuracy" in metrics.get("test", {}) else "f1_weighted")


def report_from_metrics(metrics: dict) -> RunReport:
    """The :class:`RunReport` of a finished run, rebuilt from its ``metrics.json`` (``bmnas show``)."""
    metric = metric_of(metrics)
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
