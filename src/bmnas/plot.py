"""Plots of a search: loss and metric curves, α/β/γ over epochs, and the found genotype as a graph."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .genotype import Genotype  # noqa: E402


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
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, label in (("alpha", "α (Cell inputs)"), ("beta", "β (step inputs)"), ("gamma", "γ (ops)")):
        ax1.plot(epochs, [h["entropy"][k] for h in history], label=label)
    ax1.set(
        xlabel="epoch",
        ylabel="normalised entropy",
        ylim=(0, 1.05),
        title="how undecided the search is (1 = uniform, 0 = one choice)",
    )
    ax1.title.set_fontsize(9)
    ax1.legend(fontsize=8)
    for op in history[-1]["op_share"]:
        ax2.plot(epochs, [h["op_share"].get(op, 0.0) for h in history], label=op)
    ax2.set(xlabel="epoch", ylabel="mean softmax(γ)", title="op share over all steps")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curves(history: list[dict], path: Path) -> Path:
    epochs = [h["epoch"] for h in history]
    metrics = [k for k in history[0]["val"] if k != "loss"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train (weight steps)")
    ax1.plot(epochs, [h["arch_loss"] for h in history], label="val (architecture steps)")
    ax1.plot(epochs, [h["val"]["loss"] for h in history], label="val, eval mode")
    ax1.set(xlabel="epoch", ylabel="loss", title="search losses")
    ax1.legend(fontsize=8)
    for m in metrics:
        ax2.plot(epochs, [h["val"][m] for h in history], label=m)
    best = [h["epoch"] for h in history if h.get("best")]
    for b in best[-1:]:
        ax2.axvline(b, color="grey", ls=":", label=f"best epoch {b}")
    ax2.set(xlabel="epoch", title="validation metrics (hypernet, eval mode)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _arch(history: list[dict], path: Path) -> Path:
    g = history[-1]["genotype"]
    names = [f["name"] for f in g["features"]]
    arch = [h["arch"] for h in history]
    epochs = [h["epoch"] for h in history]
    n_cells = len(arch[0]["alpha"])
    ops = _ops_from(history)
    cols = 3
    fig, axes = plt.subplots(n_cells, cols, figsize=(4.2 * cols, 3.0 * n_cells), squeeze=False)
    for n in range(n_cells):
        preds = names + [f"cell{j + 1}" for j in range(n)]
        slots = len(arch[0]["alpha"][n])
        for s in range(min(slots, 2)):
            ax = axes[n][s]
            for i, p in enumerate(preds):
                ax.plot(epochs, [a["alpha"][n][s][i] for a in arch], label=p)
            slot = "x = y (shared)" if slots == 1 else "xy"[s]
            ax.set(title=f"cell{n + 1} slot {slot}: α identity weight", xlabel="epoch", ylim=(0, 1))
            ax.legend(fontsize=6, ncol=2)
        if slots == 1:
            axes[n][1].axis("off")
        ax = axes[n][2]
        for m, row in enumerate(arch[0]["gamma"][n]):
            for f in range(len(row)):
                label = ops[f] if ops else f"op{f}"
                ax.plot(
                    epochs,
                    [a["gamma"][n][m][f] for a in arch],
                    ls=["-", "--", ":", "-."][m % 4],
                    label=f"step{m + 1} {label}",
                )
        ax.set(title=f"cell{n + 1}: softmax(γ)", xlabel="epoch")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _ops_from(history: list[dict]) -> list[str]:
    return list(history[-1].get("ops", []))


def plot_genotype(genotype: Genotype, path: str | Path) -> Path:
    """Draw the genotype: features on the left, Cells to the right with their steps listed."""
    path = Path(path)
    used = set(genotype.used_features())
    feats = [f.name for f in genotype.features]
    n_cells = len(genotype.cells)
    height = max(len(feats), 2 * n_cells + 1) * 0.55 + 1
    fig, ax = plt.subplots(figsize=(9, height))
    pos = {}
    for i, name in enumerate(feats):
        pos[name] = (0.0, -i)
        ax.text(
            0.0,
            -i,
            name,
            ha="center",
            va="center",
            fontsize=8,
            bbox={"boxstyle": "round", "fc": "#cfe3ff" if name in used else "#eeeeee", "ec": "grey"},
        )
    span = max(len(feats) - 1, 1)
    for n, cell in enumerate(genotype.cells, 1):
        y = -span * n / (n_cells + 1)
        pos[f"cell{n}"] = (1.0 + 0.9 * (n - 1), y)
        steps = "\n".join(f"step{m}: {s.op}({', '.join(s.inputs)})" for m, s in enumerate(cell.steps, 1))
        ax.text(
            *pos[f"cell{n}"],
            f"cell{n}\n{steps}",
            ha="center",
            va="center",
            fontsize=7,
            bbox={"boxstyle": "round", "fc": "#ffe9c7", "ec": "darkorange"},
        )
        for slot, src in zip("xy", cell.inputs, strict=True):
            ax.annotate(
                "",
                xy=pos[f"cell{n}"],
                xytext=pos[src],
                arrowprops={"arrowstyle": "->", "color": "tab:blue" if slot == "x" else "tab:green"},
            )
    head = (1.0 + 0.9 * max(n_cells, 1), -span / 2)
    ax.text(
        *head,
        "head",
        ha="center",
        va="center",
        fontsize=8,
        bbox={"boxstyle": "round", "fc": "#d9f2d9", "ec": "green"},
    )
    for name in genotype.output:
        ax.annotate("", xy=head, xytext=pos[name], arrowprops={"arrowstyle": "->", "color": "grey"})
    ax.set_xlim(-0.6, head[0] + 0.6)
    ax.set_ylim(-span - 0.8, 0.8)
    ax.axis("off")
    ax.set_title("found architecture (x: blue, y: green)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
