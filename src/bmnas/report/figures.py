"""Every figure bmnas draws is made and saved here: one canvas rule, one resolution, one atomic write.

A figure is a bare :class:`~matplotlib.figure.Figure` on its own Agg canvas (matplotlib's object
API): making, drawing or saving one never selects a backend or touches pyplot's global state, so a
notebook or GUI keeps its own. Saving goes through :func:`bmnas.core.fileio.atomic_write`, so a
killed process leaves the old picture or the new one, never half of one. Every figure is drawn and
saved at :data:`DPI` dots per inch: its size in pixels is ``(width · DPI, height · DPI)``.

A figure with one line or bar per feature, method or condition shows at most :data:`TOP_K` of them
and one ``others (N)`` summary (:func:`top_k`): data with 10,000 features would otherwise draw a
10,000-entry legend for minutes and gigabytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..core.fileio import atomic_write

DPI = 110
"""Dots per inch of every figure, on screen (layout, text extents) and in the file."""
TOP_K = 12
"""Most lines or bars of one kind a figure shows by name; the rest become one ``others (N)``."""
OTHERS_COLOR = "grey"


def others_label(n: int) -> str:
    """The name of the summary of ``n`` series left out (:func:`top_k`)."""
    return f"others ({n})"


def top_k(
    series: Mapping[str, Sequence[float]],
    score: Callable[[np.ndarray], float],
    k: int = TOP_K,
    keep: int = 0,
) -> dict[str, list[float]]:
    """At most ``k + 1`` of ``series`` (name -> values at the same points), in their given order.

    With more than ``k + 1``: the first ``keep`` (a reference such as ``clean``), then the
    ``k - keep`` with the highest ``score(values)`` (ties: the first given), and last one
    ``others (N)`` series: the mean of the N left out at each point.
    """
    if len(series) <= k + 1:
        return {name: list(v) for name, v in series.items()}
    names = list(series)
    values = [np.asarray(series[n], dtype=float) for n in names]
    rest = range(keep, len(names))
    best = sorted(rest, key=lambda i: (-score(values[i]), i))[: max(k - keep, 0)]
    shown = sorted([*range(keep), *best])
    left = [i for i in range(len(names)) if i not in set(shown)]
    out = {names[i]: values[i].tolist() for i in shown}
    out[others_label(len(left))] = np.mean([values[i] for i in left], axis=0).tolist()
    return out


def last(values: np.ndarray) -> float:
    """A line's final value: what :func:`top_k` ranks weights over epochs by."""
    return float(values[-1]) if len(values) else 0.0


def figure(width: float, height: float) -> Figure:
    """A ``width × height`` inch figure at :data:`DPI` on its own Agg canvas (no pyplot, no backend)."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save(
    fig: Figure, path: str | Path, tight: bool = True, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``fig`` to ``path`` atomically at :data:`DPI`; the format follows the suffix (png when none).

    ``tight``: fit the subplots to the figure first (:meth:`~matplotlib.figure.Figure.tight_layout`);
    off for a figure whose artists were placed after its layout (the genotype graph's arrows).
    ``metadata``: text stored in the file (PNG ``tEXt`` chunks), e.g. what the figure shows.
    """
    if tight:
        fig.tight_layout()
    fmt = Path(path).suffix.lstrip(".") or "png"  # the temporary file's name ends in .tmp
    extra = {"metadata": dict(metadata)} if metadata else {}
    return atomic_write(path, lambda p: fig.savefig(p, dpi=DPI, format=fmt, **extra))
