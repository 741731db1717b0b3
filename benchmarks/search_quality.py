"""Search quality: does the searched network beat hand-made fusion, and why (not)?

A benchmark, not a test. For one dataset (``--dataset NAME`` or ``--data DIR``) and ≥ 5 seeds it
runs :func:`bmnas.studies.ablate.ablate` — every method trained by the same recipe on the same feature
cache, each run's test predictions kept — and reports, besides mean ± std over seeds:

* **paired differences on the test rows**: searched − the best hand-made fusion (late fusion,
  ``sum``, ``concat_fc``, ``mha``, ``aoa``) chosen by its mean selection score (val or CV, never
  test; the best by mean test score too when that is another one), and searched − the linear probe:
  Δ = mean over seeds of the per-seed difference, its 95 % paired bootstrap interval (10,000
  resamples of the test rows, the same rows for every seed: :mod:`bmnas.report.stats`), the
  per-seed differences, and "better"/"worse" only where the interval excludes 0 ("tie" otherwise);
* **the search's cost**: mean search seconds per seed, and as a share of SMBO's (when ``smbo`` ran),
  next to both results;

and the search's own diagnostics:

* **discretisation gap**: the hypernet's best val score vs the val
  score of the network derived from it (trained on train alone by the evaluation stage's selection
  phase);
* **genotype agreement** across seeds: share of seed pairs with identical genotypes, and the mean
  Jaccard overlap of the features the genotypes read;
* **collapse diagnostics** per epoch (normalised entropy of α, β, γ and each op's share of γ),
  averaged over seeds, as a plot.

Writes ``OUT/search_quality.md`` (table + diagnostics) and ``OUT/search_quality.png``; the
ablation's own files stay in ``OUT`` so a rerun resumes.

    python benchmarks/search_quality.py --dataset avmnist --out runs/quality_avmnist
    python benchmarks/search_quality.py --data DIR --out runs/quality_dir --seeds 5
    python benchmarks/search_quality.py --dataset avmnist --out runs/q --set search.rerank=0
    python benchmarks/search_quality.py --dataset avmnist --dataset-option task=match --out runs/q_match
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

DEFAULT_METHODS = "late_fusion,linear_probe,sum,concat_fc,mha,aoa,searched,searched_paper,smbo"
"""Every hand-made fusion (the best is compared with), the probe, the searches and SMBO (its cost)."""
DEFAULT_SEEDS = "5"


def comparison_lines(comparisons, metric: str) -> list[str]:
    """One sentence per paired comparison: Δ, its interval, the per-seed Δ and the verdict."""
    lines = []
    for c in comparisons:
        d = c.difference
        how = {"val": " (best hand-made by val)", "test": " (best hand-made by test)", "": ""}.get(
            c.chosen_by, " (best hand-made by val and by test)"
        )
        if d is None:
            lines.append(f"- {c.method} − {c.against}{how}: no seed has predictions of both")
            continue
        lines.append(
            f"- {c.method} − {c.against}{how}: Δ test {metric} {d.mean:+.4f}, 95 % interval "
            f"[{d.lo:+.4f}, {d.hi:+.4f}] on {d.rows} test rows × {len(c.seeds)} seeds → **{d.verdict}** "
            f"(per seed: {', '.join(f'{x:+.4f}' for x in d.per_seed)})"
        )
    return lines


def cost_lines(rows, metric: str) -> list[str]:
    """Mean search seconds of each search, and its share of SMBO's when SMBO ran."""
    by = {r.method: r for r in rows}
    smbo = by.get("smbo")
    lines = []
    for r in rows:
        if not r.method.startswith("searched"):
            continue
        line = f"- {r.method}: {r.search_seconds:.1f} s of search per seed (test {metric} {r.mean:.4f})"
        if smbo is not None and smbo.search_seconds > 0:
            share = 100 * r.search_seconds / smbo.search_seconds
            line += (
                f" = {share:.1f} % of SMBO's {smbo.search_seconds:.1f} s "
                f"(SMBO's result: test {metric} {smbo.mean:.4f})"
            )
        lines.append(line)
    if smbo is None:
        lines.append("- SMBO did not run (add `smbo` to --methods for the cost comparison)")
    return lines


def agreement(genotypes: list[dict]) -> dict:
    """Share of identical pairs and mean Jaccard overlap of used features, over all seed pairs."""
    from bmnas.core.genotype import Genotype

    gs = [Genotype.from_dict(g) for g in genotypes]
    pairs = list(itertools.combinations(range(len(gs)), 2))
    if not pairs:
        return {"identical": None, "feature_jaccard": None}
    same = [gs[i] == gs[j] for i, j in pairs]
    jac = []
    for i, j in pairs:
        a, b = set(gs[i].used_features()), set(gs[j].used_features())
        jac.append(len(a & b) / max(1, len(a | b)))
    return {"identical": float(np.mean(same)), "feature_jaccard": float(np.mean(jac))}


def diagnostics(root: Path, method: str, results: list[dict], metric: str, val_score=None) -> dict:
    """Gap, agreement and per-epoch collapse curves of one searched method.

    The gap compares the hypernet's val score with the derived network's score on the same val
    split. When the run scored networks by cross-validation, ``val_score(genotype, seed)`` gives
    that val-split score (one extra selection phase per seed).
    """
    from bmnas.studies.ablate import val_of

    rows = [r for r in results if r["method"] == method]
    derived_val = []
    for r in rows:
        if val_of(r, metric) is None:
            continue
        derived_val.append(val_score(r["genotype"], r["seed"]) if val_score else val_of(r, metric))
    gaps = [r[f"hypernet_val_{metric}"] - v for r, v in zip(rows, derived_val, strict=False)]
    histories = []
    for r in rows:
        path = root / "ablate" / method / f"seed{r['seed']}" / "history.jsonl"
        if path.exists():
            histories.append([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    derived = [c for r in rows for c in r.get("candidates", []) if c["source"] == "argmax"]
    return {
        "method": method,
        "hypernet_val": float(np.mean([r[f"hypernet_val_{metric}"] for r in rows])) if rows else None,
        "derived_val": float(np.mean(derived_val)) if derived_val else None,
        "gap": float(np.mean(gaps)) if gaps else None,
        "argmax_val": float(np.mean([c["val"] for c in derived])) if derived else None,
        "agreement": agreement([r["genotype"] for r in rows]),
        "histories": histories,
        "genotypes": [r["genotype"] for r in rows],
    }


def plot(diags: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(diags), 2, figsize=(10, 3.4 * len(diags)), squeeze=False)
    for (ax1, ax2), d in zip(axes, diags, strict=True):
        hs = [h for h in d["histories"] if h and "entropy" in h[-1]]
        if not hs:
            continue
        n = min(len(h) for h in hs)
        epochs = np.arange(1, n + 1)
        for k in ("alpha", "beta", "gamma"):
            ax1.plot(epochs, np.mean([[e["entropy"][k] for e in h[:n]] for h in hs], 0), label=k)
        ax1.set(xlabel="epoch", ylabel="normalised entropy", ylim=(0, 1.05), title=f"{d['method']}: entropy")
        ax1.legend(fontsize=8)
        for op in hs[0][-1]["op_share"]:
            ax2.plot(epochs, np.mean([[e["op_share"][op] for e in h[:n]] for h in hs], 0), label=op)
        ax2.set(xlabel="epoch", ylabel="mean softmax(γ)", title=f"{d['method']}: op share (mean over seeds)")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def describe(g: dict) -> str:
    from bmnas.core.genotype import Genotype

    return Genotype.from_dict(g).describe().replace("\n", "; ")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="registered dataset, e.g. avmnist or emoji")
    src.add_argument("--data", metavar="DIR", help="generic-format directory")
    p.add_argument("--out", required=True, help="output directory (resumed if it exists)")
    p.add_argument("--seeds", default=DEFAULT_SEEDS, help="number of seeds (5) or a list (0,1,2,3,4)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})")
    p.add_argument("--smbo-budget", type=int, default=20, help="genotypes SMBO trains (20)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument(
        "--dataset-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of the registered dataset, e.g. task=match (avmnist's interaction benchmarks)",
    )
    p.add_argument("--cache", default=os.environ.get("BMNAS_CACHE", str(Path.home() / ".cache" / "bmnas")))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # ablate's per-run lines

    from bmnas.cli.options import parse_options
    from bmnas.core.config import Config, preset
    from bmnas.engine.metrics import primary_metric
    from bmnas.features.pipeline import load_data
    from bmnas.method.run import fit_config_to_data
    from bmnas.studies.ablate import AblationOptions, ablate, markdown_table, parse_seeds
    from bmnas.studies.smbo import SMBOConfig

    base = preset(args.dataset) if args.dataset else {}
    cfg = Config.from_sources(None, args.set, base=base)
    cfg = cfg.replace(data=type(cfg.data)(**{**cfg.data.__dict__, "dataset": args.dataset, "dir": args.data}))
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    options = parse_options(args.dataset_option, "--dataset-option")
    data = load_data(cfg, args.cache, progress=not args.quiet, dataset_options=options)
    cfg = fit_config_to_data(cfg, data)  # as `bmnas run` / `bmnas ablate` do
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    smbo = SMBOConfig(budget=args.smbo_budget, initial=min(SMBOConfig.initial, args.smbo_budget))
    opts = AblationOptions(methods=methods, seeds=parse_seeds(args.seeds, cfg.seed), smbo=smbo)
    out = Path(args.out)
    res = ablate(data, cfg, out, opts, progress=not args.quiet, verbose=True)
    metric = primary_metric(data.task)
    folds = cfg.train.select_folds
    val_score = None
    if folds:  # the gap needs the derived network scored on val, like the hypernet
        import dataclasses

        from bmnas.core.genotype import Genotype
        from bmnas.method.train import select_epochs

        def val_score(genotype: dict, seed: int) -> float:
            on_val = cfg.replace(seed=seed, train=dataclasses.replace(cfg.train, select_folds=0))
            return select_epochs(Genotype.from_dict(genotype), data, on_val).best_score

    diags = [diagnostics(out, m, res.results, metric, val_score) for m in methods if m.startswith("searched")]
    scored = (
        f"val = {folds}-fold cross-validation score over train + val (train.select_folds), which also "
        "chose the epoch count"
        if folds
        else "val = selection phase (train alone), which also chose the epoch count"
    )
    lines = [
        f"# Search quality on {data.name}",
        "",
        f"Command: `python benchmarks/search_quality.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        f"Seeds {list(opts.seeds)}; sizes {dict((s, len(sp)) for s, sp in data.splits.items())}; "
        f"test {metric} of the refit on train + val; {scored}.",
        "",
        markdown_table(res.rows, res.cost_ratio, res.comparisons),
        "## Is the searched network better?",
        "",
        *(comparison_lines(res.comparisons, metric) or ["- no searched and hand-made methods to compare"]),
        "",
        "## Search cost",
        "",
        *cost_lines(res.rows, metric),
        "",
        "## Search diagnostics",
        "",
        f"| method | hypernet val {metric} | derived network val (trained on train) "
        "| gap (hypernet − derived) "
        "| argmax candidate val | identical genotypes (seed pairs) | feature Jaccard |",
        "|---|---|---|---|---|---|---|",
    ]

    def f(v):
        return "–" if v is None else f"{v:.4f}"

    for d in diags:
        a = d["agreement"]
        lines.append(
            f"| {d['method']} | {f(d['hypernet_val'])} | {f(d['derived_val'])} | {f(d['gap'])} "
            f"| {f(d['argmax_val'])} | {f(a['identical'])} | {f(a['feature_jaccard'])} |"
        )
    if folds:
        lines += [
            "",
            "Both val columns are on the val split (the derived network trained on train alone, as the "
            "selection phase with `train.select_folds=0`); the argmax candidate's score is its CV score.",
        ]
    lines += ["", "Genotypes:", ""]
    for d in diags:
        for s, g in zip(opts.seeds, d["genotypes"], strict=False):
            lines.append(f"- {d['method']}, seed {s}: {describe(g)}")
    lines.append("")
    (out / "search_quality.md").write_text("\n".join(lines))
    if diags:
        plot(diags, out / "search_quality.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
