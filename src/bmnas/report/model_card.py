"""``RUN_DIR/README.md``: the run's model card, in Markdown, from the values the run wrote.

What the data were (name, sizes, task, class names when known), the architecture found (the
``plots/genotype.png`` drawing and one line per Cell in words), the result table with the
recommended network and why, and the environment (versions, machine, device, command line, start
and end times, also kept in ``metrics.json``). The card starts with :data:`MARK`: a ``README.md``
without it is the user's, and bmnas neither overwrites nor deletes it
(:data:`bmnas.engine.owned.MARKED_FILES`).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata

from .._version import __version__
from ..core.genotype import Genotype
from .summary import report_from_metrics, score_name
from .tables import markdown

MARK = "<!-- bmnas model card"
MAX_CLASS_NAMES = 50  # more are summarised by their count


def now() -> str:
    """The time of the moment as ISO 8601 with the local offset, to the second."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def environment(device: str, argv: Sequence[str], started: str, ended: str | None = None) -> dict:
    """Versions (bmnas, torch, Python), the platform, the device the run used, its command line and
    its start and end times (ISO 8601), as ``metrics.json`` records them. torch is not imported."""
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    env = {
        "bmnas": __version__,
        "torch": torch,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "command": " ".join(["bmnas", *argv]),
        "started": started,
    }
    return {**env, "ended": ended} if ended else env


def model_card(title: str, metrics: Mapping, genotype: Genotype | None, has_figure: bool) -> str:
    """The card of a run whose ``metrics.json`` holds ``metrics`` (``bmnas run``'s, or ``bmnas
    train``'s result row); ``genotype``: the trained architecture; ``has_figure``: link
    ``plots/genotype.png``."""
    parts = [f"{MARK}: written by bmnas {__version__}; rewritten by each run in this directory -->"]
    parts.append(f"# {title}\n")
    parts += _data_section(metrics.get("data") or {})
    parts += ["## Architecture\n"]
    if has_figure:
        parts.append("![the genotype as a graph](plots/genotype.png)\n")
    if genotype is not None:
        parts += ["```text", genotype.describe(), "```\n"]
    parts += _results_section(metrics)
    parts += _environment_section(metrics.get("environment") or {})
    return "\n".join(parts).rstrip() + "\n"


def _data_section(data: Mapping) -> list[str]:
    if not data:
        return []
    task = data.get("task") or {}
    lines = ["## Data\n", f"- name: {data.get('name', 'unknown')}"]
    if task:
        lines.append(f"- task: {task.get('type', '?')} with {task.get('num_outputs', '?')} outputs")
    sizes = data.get("sizes") or {}
    if sizes:
        lines.append("- samples: " + ", ".join(f"{s} {n:,}" for s, n in sizes.items()))
    names = (data.get("info") or {}).get("class_names")
    if names:
        shown = ", ".join(map(str, names[:MAX_CLASS_NAMES]))
        more = f" and {len(names) - MAX_CLASS_NAMES} more" if len(names) > MAX_CLASS_NAMES else ""
        lines.append(f"- classes: {shown}{more}")
    return [*lines, ""]


def _results_section(metrics: Mapping) -> list[str]:
    if "test" not in metrics:
        return []
    report = report_from_metrics(dict(metrics))
    m, score = report.metric, str(metrics.get("val_scored_by") or score_name(report.folds))
    rows = []
    for name, r in report.rows.items():
        val = f"{r['val']:.4f}" if r.get("val") is not None else "–"
        label = f"**{name}** (recommended)" if name == report.recommended else name
        params = (r.get("params") or {}).get("total")
        rows.append([label, val, f"{r['test'][m]:.4f}", f"{params:,}" if params is not None else "–"])
    table = markdown(["network", f"{score} {m}", f"test {m}", "parameters"], rows, "lrrr")
    lines = ["## Results\n", table, ""]
    if metrics.get("recommended"):
        lines.append(f"Recommended: **{report.recommended}**, {report.reason}.\n")
    return lines


def _environment_section(env: Mapping) -> list[str]:
    if not env:
        return []
    rows = [[k, f"`{v}`" if k == "command" else v] for k, v in env.items()]
    return ["## Environment\n", markdown(["", ""], rows, "ll"), ""]
