"""Every figure bmnas draws is made and saved here: one canvas rule, one resolution, one atomic write.

A figure is a bare :class:`~matplotlib.figure.Figure` on its own Agg canvas (matplotlib's object
API): making, drawing or saving one never selects a backend or touches pyplot's global state, so a
notebook or GUI keeps its own. Saving goes through :func:`bmnas.core.fileio.atomic_write`, so a
killed process leaves the old picture or the new one, never half of one. Every figure is drawn and
saved at :data:`DPI` dots per inch: its size in pixels is ``(width · DPI, height · DPI)``.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..core.fileio import atomic_write

DPI = 110
"""Dots per inch of every figure, on screen (layout, text extents) and in the file."""


def figure(width: float, height: float) -> Figure:
    """A ``width × height`` inch figure at :data:`DPI` on its own Agg canvas (no pyplot, no backend)."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` atomically at :data:`DPI`; the format follows the suffix (png when none).

    ``tight``: fit the subplots to the figure first (:meth:`~matplotlib.figure.Figure.tight_layout`);
    off for a figure whose artists were placed after its layout (the genotype graph's arrows).
    """
    if tight:
        fig.tight_layout()
    fmt = Path(path).suffix.lstrip(".") or "png"  # the temporary file's name ends in .tmp
    return atomic_write(path, lambda p: fig.savefig(p, dpi=DPI, format=fmt))
