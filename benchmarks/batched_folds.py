"""The k-fold selection of one network, stacked (``train.batched_folds=true``) vs one fold at a time.

A benchmark, not a test. It times :func:`bmnas.method.train.select_epochs` (the 3 folds of
``train.select_folds=3``, ``train.epochs`` epochs each, val scored after every epoch) on the cached
AV-MNIST features, both ways, alternating (A B A B … in one process, so a change in the machine's
load hits both), and checks that the curves agree: equal to float tolerance with dropout 0, within
noise with dropout on (the stacked folds draw other dropout masks).

    BMNAS_CACHE=/tmp/bcache python benchmarks/batched_folds.py                     # sum, concat_fc, random
    python benchmarks/batched_folds.py --genotypes random --set model.dropout=0 --repeat 3
    python benchmarks/batched_folds.py --set train.epochs=5 --threads 2

The machine may be shared: the load average is printed before and after, and the process's CPU
time is reported beside the wall time (with one thread it measures the work, whatever the others
run). The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import bmnas  # noqa: F401
except ImportError:  # a bare checkout: use its src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bmnas.core.config import Config, preset
from bmnas.core.opnames import DEFAULT_OPS
from bmnas.features.pipeline import load_data
from bmnas.method.run import fit_config_to_data
from bmnas.method.train import select_epochs, with_recipe
from bmnas.space.baselines import fixed_fusion, random_genotype

GENOTYPES = ("sum", "concat_fc", "random")


def genotype(name: str, data, cfg: Config):
    """The fixed-fusion baseline ``name`` as ``bmnas run`` trains it, or a seeded random architecture."""
    m = cfg.model
    if name == "random":
        ops = [o for o in DEFAULT_OPS if o != "zero"]
        g = random_genotype(data.specs(), ops, m.C, m.L, m.cells, m.steps, np.random.default_rng(cfg.seed))
    else:
        g = fixed_fusion(name, data.specs(), m.C, m.L, m.cells, m.multiplier)
    return with_recipe(g, cfg)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="avmnist")
    p.add_argument("--genotypes", default=",".join(GENOTYPES), help=f"comma-separated, of {GENOTYPES}")
    p.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--repeat", type=int, default=1, help="A/B pairs per genotype")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the preset's)")
    p.add_argument("--cache", default=os.environ.get("BMNAS_CACHE"))
    args = p.parse_args(argv)

    cfg = Config.from_sources(None, args.set, base=preset(args.dataset))
    cfg = cfg.replace(data=type(cfg.data)(**{**cfg.data.__dict__, "dataset": args.dataset}))
    torch.set_num_threads(args.threads or cfg.threads or 1)
    data = load_data(cfg, args.cache, progress=False)
    cfg = fit_config_to_data(cfg, data)
    train = cfg.train
    print(
        f"load average {os.getloadavg()[0]:.2f}; {torch.get_num_threads()} thread(s); "
        f"{train.select_folds} folds × {train.epochs} epochs, batch {train.batch_size}, "
        f"dropout {cfg.model.dropout}, modality dropout {train.modality_dropout}"
    )
    results = {}
    for name in args.genotypes.split(","):
        g = genotype(name.strip(), data, cfg)
        times: dict[str, list[float]] = {"stacked": [], "apart": []}
        cpu: dict[str, list[float]] = {"stacked": [], "apart": []}
        curves = {}
        for _ in range(args.repeat):
            for mode, on in (("apart", False), ("stacked", True)):
                c = cfg.replace(train=type(train)(**{**train.__dict__, "batched_folds": on}))
                t0, c0 = time.perf_counter(), time.process_time()
                sel = select_epochs(g, data, c)
                times[mode].append(time.perf_counter() - t0)
                cpu[mode].append(time.process_time() - c0)
                curves[mode] = sel.curve
        gap = float(np.max(np.abs(np.subtract(curves["stacked"], curves["apart"]))))
        best = {m: min(v) for m, v in times.items()}
        best_cpu = {m: min(v) for m, v in cpu.items()}
        results[name] = {
            "seconds": times,
            "cpu_seconds": cpu,
            "speedup": best["apart"] / best["stacked"],
            "cpu_speedup": best_cpu["apart"] / best_cpu["stacked"],
            "max_curve_gap": gap,
            "best": {m: float(max(v)) for m, v in curves.items()},
        }
        print(
            f"{name:10s} apart {best['apart']:6.1f} s  stacked {best['stacked']:6.1f} s  "
            f"speed-up {results[name]['speedup']:.2f}× (CPU time {best_cpu['apart']:.1f} / "
            f"{best_cpu['stacked']:.1f} s: {results[name]['cpu_speedup']:.2f}×)  max |Δ curve| {gap:.2e}  "
            f"best val {results[name]['best']['apart']:.4f} / {results[name]['best']['stacked']:.4f}"
        )
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(json.dumps({"config": args.set, "threads": torch.get_num_threads(), "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
