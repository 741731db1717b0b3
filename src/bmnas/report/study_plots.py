"""Figures of the studies over the method: the ablation's bars, robustness per condition, a sweep's trials.

Each function takes plain values (names, scores), draws one figure with :mod:`bmnas.report.figures`
and returns the path it wrote; the studies decide what the values are.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .figures import figure, save


def ablation_bars(
    methods: Sequence[str],
    means: Sequence[float],
    stds: Sequence[float],
    colors: Sequence[str],
    metric: str,
    path: str | Path,
) -> Path:
    """Bar chart of the test ``metric`` per method, with ± std error bars.

    The y axis spans ``[max(0, min(mean − std) − 0.05), min(1, max(mean + std) + 0.03)]``.
    """
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


def condition_bars(
    methods: Sequence[str],
    conditions: Sequence[str],
    value: Mapping[tuple[str, str], float],
    metric: str,
    path: str | Path,
) -> Path:
    """Grouped bars: one group per condition, one bar per network (``value[method, condition]``)."""
    fig = figure(max(6.0, 1.3 * len(conditions)), 4.5)
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(conditions))
    for i, m in enumerate(methods):
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, [value[m, c] for c in conditions], width, label=m)
    ax.set_xticks(x, conditions, rotation=30, ha="right")
    ax.set_ylabel(f"test {metric}")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small", ncols=min(4, len(methods)), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return save(fig, path)


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
