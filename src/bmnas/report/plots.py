"""Plots of a search: loss and metric curves, α/β/γ over epochs, and the found genotype as a graph.

Figures are made and saved by :mod:`bmnas.report.figures` (matplotlib's object API on an Agg
canvas: importing or calling this module never selects a backend or touches pyplot's global state).
A panel with a line per predecessor or op shows the :data:`~bmnas.report.figures.TOP_K` largest by
their final weight and one ``others (N)`` line (their mean); the genotype graph draws the features
the network reads and, of many others, one box that counts them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch

from ..core.genotype import Genotype
from .figures import OTHERS_COLOR, TOP_K, figure, last, others_label, save, top_k

LEGEND = {"fontsize": 8}
MAX_FEATURE_NODES = 2 * TOP_K  # the genotype graph draws every feature up to this many
X_COLOR, Y_COLOR, OUT_COLOR, HEAD_COLOR, LINEAR_COLOR = (
    "tab:blue",
    "tab:green",
    "darkorange",
    "grey",
    "tab:purple",
)


def plot_history(history: list[dict], out_dir: str | Path) -> list[Path]:
    """Write ``search_curves.png``, ``arch_weights.png``, ``search_diagnostics.png`` (when the history
    has them) and ``genotype.png`` into ``out_dir``."""
    if not history:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [_curves(history, out / "search_curves.png"), _arch(history, out / "arch_weights.png")]
    if "entropy" in history[-1]:
        paths.append(_diagnostics(history, out / "search_diagnostics.png"))
    paths.append(plot_genotype(Genotype.from_dict(history[-1]["genotype"]), out / "genotype.png"))
    return paths


def _diagnostics(history: list[dict], path: Path) -> Path:
    """Collapse diagnostics per epoch: normalised entropy of α, β, γ and each op's share of γ."""
    epochs = [h["epoch"] for h in history]
    ax1, ax2 = figure(10, 3.8).subplots(1, 2)
    for k, label in (("alpha", "α (Cell inputs)"), ("beta", "β (step inputs)"), ("gamma", "γ (ops)")):
        ax1.plot(epochs, [h["entropy"][k] for h in history], label=label)
    ax1.set(xlabel="epoch", ylabel="normalised entropy", ylim=(0, 1.05))
    ax1.set_title("how undecided the search is (1 = uniform, 0 = one choice)", fontsize=9)
    ax1.legend(**LEGEND)
    shares = {op: [h["op_share"].get(op, 0.0) for h in history] for op in history[-1]["op_share"]}
    _lines(ax2, epochs, shares)
    ax2.set(xlabel="epoch", ylabel="mean softmax(γ)", title="op share over all steps")
    ax2.legend(**LEGEND)
    return save(ax1.figure, path)


def _curves(history: list[dict], path: Path) -> Path:
    epochs = [h["epoch"] for h in history]
    metrics = [k for k in history[0]["val"] if k != "loss"]
    ax1, ax2 = figure(10, 3.8).subplots(1, 2)
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train (weight steps)")
    ax1.plot(epochs, [h["arch_loss"] for h in history], label="val (architecture steps)")
    ax1.plot(epochs, [h["val"]["loss"] for h in history], label="val, eval mode")
    ax1.set(xlabel="epoch", ylabel="loss", title="search losses")
    ax1.legend(**LEGEND)
    for m in metrics:
        ax2.plot(epochs, [h["val"][m] for h in history], label=m)
    best = [h["epoch"] for h in history if h.get("best")]
    for b in best[-1:]:
        ax2.axvline(b, color="grey", ls=":", label=f"best epoch {b}")
    ax2.set(xlabel="epoch", title="validation metrics (hypernet, eval mode)")
    ax2.legend(**LEGEND)
    return save(ax1.figure, path)


def _lines(
    ax: Axes, epochs: list, series: Mapping[str, Sequence[float]], styles: Mapping[str, str] | None = None
) -> None:
    """One line per series, at most :data:`TOP_K` of them by final value and a grey ``others (N)``."""
    for label, values in top_k(series, last).items():
        if label.startswith("others (") and label not in series:
            ax.plot(epochs, values, color=OTHERS_COLOR, ls=":", label=label)
        else:
            ax.plot(epochs, values, ls=(styles or {}).get(label, "-"), label=label)


def _arch(history: list[dict], path: Path) -> Path:
    return save(arch_figure(history), path)


def arch_figure(history: list[dict]) -> Figure:
    """Per Cell: α of its x and y inputs over the predecessors, and softmax(γ) of its steps, every
    panel on a fixed 0..1 axis (weights), so that a flat line reads as undecided."""
    g = history[-1]["genotype"]
    names = [f["name"] for f in g["features"]]
    arch = [h["arch"] for h in history]
    epochs = [h["epoch"] for h in history]
    n_cells = len(arch[0]["alpha"])
    ops = _ops_from(history)
    cols = 3
    fig = figure(5.0 * cols, 3.6 * n_cells + 0.8)
    axes = fig.subplots(n_cells, cols, squeeze=False)
    fig.suptitle(
        "α identity weight: how much of each state an edge passes into a Cell input "
        "(1: all of it, 0: the edge is zero); each input keeps the state with the largest weight",
        fontsize=10,
    )
    for n in range(n_cells):
        preds = names + [f"cell{j + 1}" for j in range(n)]
        slots = len(arch[0]["alpha"][n])
        for s in range(min(slots, 2)):
            ax = axes[n][s]
            _lines(ax, epochs, {p: [a["alpha"][n][s][i] for a in arch] for i, p in enumerate(preds)})
            slot = "x = y (shared)" if slots == 1 else "xy"[s]
            ax.set(title=f"cell{n + 1} input {slot}: α per predecessor", xlabel="epoch", ylim=(0, 1))
            ax.set_ylabel("identity weight\n(share of the state passed on)")
            ax.legend(**LEGEND, ncol=2)
        if slots == 1:
            axes[n][1].axis("off")
        ax = axes[n][2]
        weights, styles = {}, {}
        for m, row in enumerate(arch[0]["gamma"][n]):
            for f in range(len(row)):
                label = f"step{m + 1} {ops[f] if ops else f'op{f}'}"
                weights[label] = [a["gamma"][n][m][f] for a in arch]
                styles[label] = ["-", "--", ":", "-."][m % 4]
        _lines(ax, epochs, weights, styles)
        # fixed 0..1, as α's: auto-scaling would blow noise of ±0.001 around 1/|ops| up to a decision
        ax.set(title=f"cell{n + 1}: softmax(γ) per step", xlabel="epoch", ylabel="op weight", ylim=(0, 1))
        ax.legend(**LEGEND, ncol=2)
    return fig


def _ops_from(history: list[dict]) -> list[str]:
    return list(history[-1].get("ops", []))


def plot_genotype(genotype: Genotype, path: str | Path) -> Path:
    """Draw the genotype as a graph.

    Features on the left (blue: read by the network). Each Cell is a box listing its steps, fed
    by its inputs x and y, and an output node ``LayerNorm(steps + x)``: x also reaches the output
    directly (the dashed "residual" edge). The head on the right reads ``output`` and, when the
    genotype has one, the linear path from its ``linear`` features (dashed).
    """
    used = set(genotype.used_features())
    feats = [f.name for f in genotype.features]
    if len(feats) > MAX_FEATURE_NODES:  # the ones the network reads, and a box counting the rest
        feats = [f for f in feats if f in used] + [others_label(len(feats) - len(used))]
    n_cells = len(genotype.cells)
    span = max(len(feats) - 1, 1)
    head_x = 2.6 + 2.8 * n_cells if n_cells else 2.2
    fig = figure(5.0 + 2.6 * n_cells, max(len(feats), 2 * n_cells + 1, 3) * 0.6 + 1.6)
    ax = fig.subplots()
    nodes: dict = {}

    def node(key: str, xy: tuple[float, float], text: str, fc: str, ec: str, size: int = 8) -> None:
        bbox = {"boxstyle": "round,pad=0.35", "fc": fc, "ec": ec}
        nodes[key] = ax.text(*xy, text, ha="center", va="center", fontsize=size, bbox=bbox, zorder=3)

    edges = []  # (source, target, color, style, curvature, label)
    for i, name in enumerate(feats):
        node(name, (0.0, -i), name, "#cfe3ff" if name in used else "#eeeeee", "grey")
    for n, cell in enumerate(genotype.cells, 1):
        x, y = 1.5 + 2.8 * (n - 1), -span * n / (n_cells + 1)
        steps = "\n".join(f"step{m}: {s.op}({', '.join(s.inputs)})" for m, s in enumerate(cell.steps, 1))
        node(f"cell{n}.steps", (x, y), f"cell{n}\n{steps}", "#ffe9c7", OUT_COLOR, 7)
        body = cell.concat[0] if len(cell.concat) == 1 else f"conv1x1[{'; '.join(cell.concat)}]"
        node(f"cell{n}", (x + 1.35, y - 0.45), f"cell{n} out\nLN({body} + x)", "#fff6e8", OUT_COLOR, 7)
        src_x, src_y = cell.inputs
        edges += [
            (src_x, f"cell{n}.steps", X_COLOR, "-", 0.0, None),
            (src_y, f"cell{n}.steps", Y_COLOR, "-", 0.12 if src_y == src_x else 0.0, None),
            (f"cell{n}.steps", f"cell{n}", OUT_COLOR, "-", 0.0, None),
            (src_x, f"cell{n}", X_COLOR, "--", 0.3, "residual"),
        ]
    node("head", (head_x, -span / 2), "head", "#d9f2d9", "green")
    edges += [(name, "head", HEAD_COLOR, "-", 0.0, None) for name in genotype.output]
    if genotype.linear:  # wide & deep: a linear map of these features is added to the logits
        node("linear", (head_x, -span), "linear path\n(to the logits)", "#efe3f7", LINEAR_COLOR, 7)
        edges += [(name, "linear", LINEAR_COLOR, "--", 0.0, None) for name in genotype.linear]
        edges.append(("linear", "head", LINEAR_COLOR, "--", 0.0, None))

    ax.set_xlim(-0.9, head_x + 0.7)
    ax.set_ylim(-span - 0.9, 0.8)
    ax.axis("off")
    ax.set_title("found architecture", fontsize=10)
    legend = [Line2D([], [], color=HEAD_COLOR, label="state read by the head")]
    if n_cells:
        legend[:0] = [
            Line2D([], [], color=X_COLOR, label="input x"),
            Line2D([], [], color=Y_COLOR, label="input y"),
            Line2D([], [], color=X_COLOR, ls="--", label="residual: x to the Cell output"),
        ]
    if genotype.linear:
        legend.append(Line2D([], [], color=LINEAR_COLOR, ls="--", label="linear path to the logits"))
    ax.legend(
        handles=legend, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(legend)), fontsize=8
    )
    fig.tight_layout()
    fig.canvas.draw()  # places the node boxes, which the arrows below are clipped to
    for src, dst, color, style, rad, label in edges:
        _arrow(ax, nodes[src], nodes[dst], color, style, rad, label)
    return save(fig, path, tight=False)  # laid out above, before the arrows were clipped to the boxes


def _arrow(ax, src, dst, color: str, style: str, rad: float, label: str | None) -> None:
    """An arrow from box ``src`` to box ``dst`` that starts and ends at their borders, with an
    optional label at its middle."""
    a, b = src.get_position(), dst.get_position()
    ax.add_patch(
        FancyArrowPatch(
            a,
            b,
            arrowstyle="-|>",
            mutation_scale=10,
            color=color,
            ls=style,
            lw=1.1,
            connectionstyle=f"arc3,rad={rad}",
            patchA=src.get_bbox_patch(),
            patchB=dst.get_bbox_patch(),
            shrinkA=1,
            shrinkB=1,
            zorder=2,
        )
    )
    if label:
        # the middle of arc3's quadratic Bézier, computed where arc3 computes it: in display space
        (x1, y1), (x2, y2) = ax.transData.transform([a, b])
        mid = ((x1 + x2) / 2 + rad * (y2 - y1) / 2, (y1 + y2) / 2 - rad * (x2 - x1) / 2)
        at = ax.transData.inverted().transform(mid)
        box = {"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8}
        ax.text(*at, label, color=color, fontsize=7, ha="center", va="center", bbox=box, zorder=2.5)
