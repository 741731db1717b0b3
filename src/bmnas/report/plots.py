"""Plots of a search: loss and metric curves, α/β/γ over epochs, and the found genotype as a graph.

Figures are made and saved by :mod:`bmnas.report.figures` (matplotlib's object API on an Agg
canvas: importing or calling this module never selects a backend or touches pyplot's global state).
A panel with a line per predecessor or op shows the :data:`~bmnas.report.figures.TOP_K` largest by
their final weight and one ``others (N)`` line (their mean); the genotype graph draws the features
the network reads and, of many others, one box that counts them; the file keeps the drawn genotype
(:func:`drawn_genotype`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch
from PIL import Image

from ..core.genotype import Genotype, GenotypeError
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


def plot_history(history: list[dict], out_dir: str | Path, genotype: Genotype | None = None) -> list[Path]:
    """Write ``search_curves.png``, ``arch_weights.png``, ``search_diagnostics.png`` (when the history
    has them) and ``genotype.png`` into ``out_dir``.

    ``genotype``: the one the search returns (``genotype.json``: after re-ranking, not necessarily
    the last epoch's argmax); without it, the last epoch's.
    """
    if not history:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [_curves(history, out / "search_curves.png"), _arch(history, out / "arch_weights.png")]
    if "entropy" in history[-1]:
        paths.append(_diagnostics(history, out / "search_diagnostics.png"))
    if genotype is None:
        genotype, title = Genotype.from_dict(history[-1]["genotype"]), "last search epoch's architecture"
    else:
        title = "searched architecture (genotype.json)"
    paths.append(plot_genotype(genotype, out / "genotype.png", title))
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


GENOTYPE_KEY = "bmnas.genotype"
"""The PNG text chunk of ``genotype.png`` that holds the drawn genotype's JSON (:func:`drawn_genotype`)."""


def plot_genotype(genotype: Genotype, path: str | Path, title: str = "found architecture") -> Path:
    """Draw the genotype as a graph (:func:`genotype_figure`) and write it to ``path``.

    The PNG keeps the drawn genotype's JSON in its ``bmnas.genotype`` text chunk, so a picture
    says which network it shows (:func:`drawn_genotype`).
    """
    fig = genotype_figure(genotype, title)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save(fig, path, tight=False, metadata={GENOTYPE_KEY: genotype.to_json(indent=None)})


def drawn_genotype(path: str | Path) -> Genotype:
    """The genotype a picture of :func:`plot_genotype` shows (its ``bmnas.genotype`` text chunk)."""
    with Image.open(path) as img:
        text = img.text.get(GENOTYPE_KEY) if hasattr(img, "text") else None
    if text is None:
        raise GenotypeError(f"{path}: not a genotype picture of bmnas (no {GENOTYPE_KEY} text chunk)")
    return Genotype.from_json(text, where=f"{path}: {GENOTYPE_KEY}")


def genotype_figure(genotype: Genotype, title: str = "found architecture") -> Figure:
    """The genotype as a graph, laid out and with its edges drawn.

    Features on the left (blue: read by the network). Each Cell is a box listing its steps, fed
    by its inputs x and y, and an output node ``LayerNorm(steps + x)``: x also reaches the output
    directly (the dashed "residual" edge, named in the legend). The head on the right reads
    ``output`` and, when the genotype has one, the linear path from its ``linear`` features: a
    dashed line that leaves each of them on the left and runs along the bottom, under the Cells,
    to the ``linear path`` box and up into the head. A genotype without Cells or head states is
    the linear probe: the head is its linear path alone.
    """
    used = set(genotype.used_features())
    feats = [f.name for f in genotype.features]
    if len(feats) > MAX_FEATURE_NODES:  # the ones the network reads, and a box counting the rest
        feats = [f for f in feats if f in used] + [others_label(len(feats) - len(used))]
    n_cells = len(genotype.cells)
    span = max(len(feats) - 1, 1)
    head_x = 2.6 + 2.8 * n_cells if n_cells else 2.2
    cell_y = [-span * n / (n_cells + 1) for n in range(1, n_cells + 1)]
    lowest = min([-span, *(y - 0.45 for y in cell_y), *_residual_lows(genotype, feats, cell_y)])
    bottom = lowest - (0.7 if genotype.linear else 0.0)
    rows = max(len(feats), 2 * n_cells + 1, 3) + (1 if genotype.linear else 0)
    fig = figure(5.0 + 2.6 * n_cells, rows * 0.6 + 1.6)
    ax = fig.subplots()
    nodes: dict = {}

    def node(key: str, xy: tuple[float, float], text: str, fc: str, ec: str, size: int = 8) -> None:
        bbox = {"boxstyle": "round,pad=0.35", "fc": fc, "ec": ec}
        nodes[key] = ax.text(*xy, text, ha="center", va="center", fontsize=size, bbox=bbox, zorder=3)

    edges = []  # (source, target, color, style, curvature)
    for i, name in enumerate(feats):
        node(name, (0.0, -i), name, "#cfe3ff" if name in used else "#eeeeee", "grey")
    for n, (cell, y) in enumerate(zip(genotype.cells, cell_y, strict=True), 1):
        x = 1.5 + 2.8 * (n - 1)
        steps = "\n".join(f"step{m}: {s.op}({', '.join(s.inputs)})" for m, s in enumerate(cell.steps, 1))
        node(f"cell{n}.steps", (x, y), f"cell{n}\n{steps}", "#ffe9c7", OUT_COLOR, 7)
        body = cell.concat[0] if len(cell.concat) == 1 else f"conv1x1[{'; '.join(cell.concat)}]"
        node(f"cell{n}", (x + 1.35, y - 0.45), f"cell{n} out\nLN({body} + x)", "#fff6e8", OUT_COLOR, 7)
        src_x, src_y = cell.inputs
        edges += [
            (src_x, f"cell{n}.steps", X_COLOR, "-", 0.0),
            (src_y, f"cell{n}.steps", Y_COLOR, "-", 0.12 if src_y == src_x else 0.0),
            (f"cell{n}.steps", f"cell{n}", OUT_COLOR, "-", 0.0),
            (src_x, f"cell{n}", X_COLOR, "--", RESIDUAL_RAD),
        ]
    head_text = "head" if genotype.output else "logits\n(linear probe)"
    node("head", (head_x, -span / 2), head_text, "#d9f2d9", "green")
    edges += [(name, "head", HEAD_COLOR, "-", 0.0) for name in genotype.output]
    if genotype.linear:  # wide & deep: a linear map of these features is added to the logits
        text = "linear path\n(to the logits)" if genotype.output else "linear map\nW·BN(x) + b"
        node("linear", (head_x, bottom), text, "#efe3f7", LINEAR_COLOR, 7)
        edges.append(("linear", "head", LINEAR_COLOR, "--", 0.0))

    left = -1.4 if genotype.linear else -0.9
    ax.set_xlim(left, head_x + 0.7)
    ax.set_ylim(bottom - 0.5, 0.8)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    legend = [Line2D([], [], color=HEAD_COLOR, label="state read by the head")] if genotype.output else []
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
    for src, dst, color, style, rad in edges:
        _arrow(ax, nodes[src], nodes[dst], color, style, rad)
    if genotype.linear:
        _linear_bus(
            ax, [nodes[n] for n in genotype.linear], [nodes[f] for f in feats], nodes["linear"], bottom, left
        )
    return fig


RESIDUAL_RAD = 0.3
"""Curvature of the residual edges (arc3's ``rad``): they bend below the straight x edges."""


def _residual_lows(genotype: Genotype, feats: list[str], cell_y: list[float]) -> list[float]:
    """About the lowest point (data units) of each residual arc, so that the linear path runs under
    them: an arc3 edge's middle lies ``rad · Δx / 2`` below its chord in display units, and a unit of
    x is drawn about 1.5 times as long as one of y in these figures."""
    y_of = {name: -float(i) for i, name in enumerate(feats)}
    x_of = dict.fromkeys(feats, 0.0)
    lows = []
    for n, (cell, y) in enumerate(zip(genotype.cells, cell_y, strict=True), 1):
        src = cell.inputs[0]
        x0, y0 = x_of.get(src, 0.0), y_of.get(src, y)
        x1, y1 = 1.5 + 2.8 * (n - 1) + 1.35, y - 0.45
        lows.append(min(y0, y1, (y0 + y1) / 2 - RESIDUAL_RAD * 1.5 * (x1 - x0) / 2))
        x_of[f"cell{n}"], y_of[f"cell{n}"] = x1, y1
    return lows


def _box(ax: Axes, text) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` of a node's box in data coordinates (after a draw)."""
    ext = text.get_bbox_patch().get_window_extent()
    (x0, y0), (x1, y1) = ax.transData.inverted().transform([(ext.x0, ext.y0), (ext.x1, ext.y1)])
    return x0, y0, x1, y1


def _linear_bus(ax: Axes, sources: list, features: list, target, bottom: float, left: float) -> None:
    """The linear path's edges: from the left side of each source box to a vertical line left of all
    ``features``, down it to ``bottom`` and along the bottom into ``target``'s box, crossing no other
    edge."""
    boxes = [_box(ax, s) for s in sources]
    bus = max(min(_box(ax, f)[0] for f in features) - 0.15, left + 0.05)
    style = {"color": LINEAR_COLOR, "ls": "--", "lw": 1.1, "zorder": 2}
    for x0, y0, _, y1 in boxes:
        ax.add_line(Line2D([bus, x0], [(y0 + y1) / 2] * 2, **style))
    top = max((y0 + y1) / 2 for _, y0, _, y1 in boxes)
    ax.add_line(Line2D([bus, bus], [top, bottom], **style))
    ax.add_patch(
        FancyArrowPatch(
            (bus, bottom),
            target.get_position(),
            arrowstyle="-|>",
            mutation_scale=10,
            color=LINEAR_COLOR,
            ls="--",
            lw=1.1,
            patchB=target.get_bbox_patch(),
            shrinkA=0,
            shrinkB=1,
            zorder=2,
        )
    )


def _arrow(ax, src, dst, color: str, style: str, rad: float) -> None:
    """An arrow from box ``src`` to box ``dst`` that starts and ends at their borders."""
    ax.add_patch(
        FancyArrowPatch(
            src.get_position(),
            dst.get_position(),
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
