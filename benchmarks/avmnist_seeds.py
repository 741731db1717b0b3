"""The main job over several seeds: searched network vs. each modality alone and late fusion.

    python benchmarks/avmnist_seeds.py --seeds 0 1 2 --out runs/avmnist_seeds [--set key=value ...]

Each seed runs ``bmnas run --dataset avmnist`` (its own backbone pre-training, search, training
of the found network and of the baselines) and the script prints a Markdown table of the test
accuracy (mean ± std over seeds), parameters and wall times, plus a JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bmnas.cli.main import main as bmnas_main


def run_seed(seed: int, out: Path, overrides: list[str], dataset: str) -> dict:
    t0 = time.perf_counter()
    sets = [x for o in overrides for x in ("--set", o)]
    rc = bmnas_main(
        [
            "run",
            "--dataset",
            dataset,
            "--out",
            str(out / f"seed{seed}"),
            "--quiet",
            "--set",
            f"seed={seed}",
            *sets,
        ]
    )
    if rc != 0:
        raise SystemExit(f"seed {seed}: bmnas run failed with exit code {rc}")
    m = json.loads((out / f"seed{seed}" / "metrics.json").read_text())
    rows = {name: r for name, r in m["baselines"].items()}
    rows["searched"] = m
    return {"wall_seconds": time.perf_counter() - t0, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/avmnist_seeds")
    ap.add_argument("--dataset", default="avmnist")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    out = Path(args.out)
    results = {s: run_seed(s, out, args.overrides, args.dataset) for s in args.seeds}
    methods = list(next(iter(results.values()))["rows"])
    print(f"\n| method | test accuracy (mean ± std over seeds {args.seeds}) | params | search s | train s |")
    print("|---|---|---|---|---|")
    summary = {}
    for name in methods:
        acc = [r["rows"][name]["test"]["accuracy"] for r in results.values()]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        params = statistics.mean(r["rows"][name]["params"]["total"] for r in results.values())
        search_s = statistics.mean(r["rows"][name].get("search_seconds", 0.0) for r in results.values())
        train_s = statistics.mean(r["rows"][name]["train_seconds"] for r in results.values())
        summary[name] = {"accuracy": acc, "mean": statistics.mean(acc), "std": sd}
        mean = statistics.mean(acc)
        print(f"| {name} | {mean:.4f} ± {sd:.4f} | {params:,.0f} | {search_s:.1f} | {train_s:.1f} |")
    walls = [r["wall_seconds"] for r in results.values()]
    print(f"\nwall time per seed (whole `bmnas run`, incl. pre-training): {[round(w, 1) for w in walls]} s")
    print(json.dumps({"summary": summary, "wall_seconds": walls, "overrides": args.overrides}))


if __name__ == "__main__":
    main()
