"""Figures of the studies over the method: the ablation's bars, robustness per condition, a sweep's trials.

Each function takes plain values (names, scores), draws one figure with :mod:`bmnas.report.figures`
and returns the path it wrote; the studies decide what the values are. Of many methods or
conditions a figure shows :data:`~bmnas.report.figures.TOP_K` and one ``others (N)``
(:func:`~bmnas.report.figures.top_k`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .figures import OTHERS_COLOR, TOP_K, figure, others_label, save, top_k


def ablation_bars(
    methods: Sequence[str],
    means: Sequence[float],
    stds: Sequence[float],
    colors: Sequence[str],
    metric: str,
    path: str | Path,
) -> Path:
    """Bar chart of the test ``metric`` per method, with ± std error bars.

    The y axis spans ``[max(0, min(mean − std) − 0.05), min(1, max(mean + std) + 0.03)]``. Of more
    than ``TOP_K + 1`` methods: the :data:`TOP_K` best by mean and one grey ``others (N)`` bar (the
    mean of their means ± the std of their means).
    """
    if len(methods) > TOP_K + 1:
        methods, means, stds, colors = _top_bars(methods, means, stds, colors)
    fig = figure(max(5.0, 0.7 * len(methods) + 1.5), 3.8)
    ax = fig.subplots()
    x = np.arange(len(methods))
    ax.bar(x, means, yerr=stds, capsize=3, color=colors)
    lo = min((m - s for m, s in zip(means, stds, strict=True)), default=0.0)
    hi = max((m + s for m, s in zip(means, stds, strict=True)), default=1.0)
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, hi + 0.03))
    ax.set_xticks(x, methods, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(f"test {metric}")
    ax.set_title("baselines and ablations (mean ± std over runs)")
    return save(fig, path)


def _top_bars(methods, means, stds, colors) -> tuple[list, list, list, list]:
    best = sorted(sorted(range(len(methods)), key=lambda i: (-means[i], i))[:TOP_K])
    rest = [means[i] for i in range(len(methods)) if i not in set(best)]
    return (
        [methods[i] for i in best] + [others_label(len(rest))],
        [means[i] for i in best] + [float(np.mean(rest))],
        [stds[i] for i in best] + [float(np.std(rest))],
        [colors[i] for i in best] + [OTHERS_COLOR],
    )


def condition_bars(
    methods: Sequence[str],
    conditions: Sequence[str],
    value: Mapping[tuple[str, str], float],
    metric: str,
    path: str | Path,
    **marks,
) -> Path:
    """:func:`condition_figure`, saved to ``path``."""
    return save(condition_figure(methods, conditions, value, metric, **marks), path)


def condition_figure(
    methods: Sequence[str],
    conditions: Sequence[str],
    value: Mapping[tuple[str, str], float],
    metric: str,
    title: str | None = None,
    chance: tuple[float, str] | None = None,
    probe: tuple[float, str] | None = None,
) -> Figure:
    """Grouped bars: one group per condition, one bar per network (``value[method, condition]``).

    Of more than ``TOP_K + 1`` conditions: the first (the reference, e.g. ``clean``) and the ones
    with the lowest mean score (where the networks fail most), then ``others (N)``; of more than
    ``TOP_K + 1`` networks: the best by mean score, then ``others (N)`` (means of the rest).

    Args:
        title: the figure's title.
        chance: ``(score, what it is)``: a dashed line across every condition at the score that a
            predictor without information gets.
        probe: ``(score, what it is)``: a marker over the first condition only, where a reference
            (e.g. the linear probe on the clean test split) was measured.
    """
    by_condition = top_k({c: [value[m, c] for m in methods] for c in conditions}, lambda v: -v.mean(), keep=1)
    conditions = list(by_condition)
    by_method = top_k(
        {m: [by_condition[c][i] for c in conditions] for i, m in enumerate(methods)}, lambda v: v.mean()
    )
    methods = list(by_method)
    value = {(m, c): by_method[m][j] for m in methods for j, c in enumerate(conditions)}
    fig = figure(max(6.0, 1.3 * len(conditions)), 4.5)
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(conditions))
    for i, m in enumerate(methods):
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, [value[m, c] for c in conditions], width, label=m)
    ax.set_xticks(x, conditions, rotation=30, ha="right")
    ax.set_ylabel(f"test {metric}")
    ax.set_ylim(0, 1)
    if chance is not None:
        ax.axhline(chance[0], color="black", linestyle="--", linewidth=1, label=chance[1])
    if probe is not None:
        ax.hlines(probe[0], -0.45, 0.45, color="tab:red", linewidth=2, label=probe[1])  # over the first group
    ax.legend(fontsize="small", ncols=min(3, len(methods) + 2), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def trials_chart(numbers: Sequence[int], values: Sequence[float], metric: str, path: str | Path) -> Path:
    """Objective per complete trial (dots) and the best so far (step line)."""
    fig = figure(6, 3.6)
    ax = fig.subplots()
    ax.plot(numbers, values, "o", color="tab:blue", label="trial")
    best = list(itertools.accumulate(values, max))
    ax.step(numbers, best, where="post", color="tab:orange", label="best so far")
    ax.set(xlabel="trial", ylabel=f"val {metric} of the search's genotype", title="bmnas sweep")
    ax.legend(fontsize=8)
    return save(fig, path)
