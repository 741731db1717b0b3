"""The evaluation stage's Adam, fused (one kernel per step, today) vs per tensor (0.6.0), on the CPU.

A benchmark, not a test. Times :func:`bmnas.method.train.select_epochs` (the 3 folds of
``train.select_folds=3``, ``train.epochs`` epochs each, val scored after every epoch) on the cached
AV-MNIST features, with ``fit``'s Adam fused and unfused, alternating (A B A B … in one process), for
the ``concat_fc`` baseline and a seeded random architecture over every op; prints each pair, the
medians and each network's val curves (fused Adam rounds differently: a curve may differ by a val row).

    BMNAS_CACHE=/tmp/bcache python benchmarks/fused_adam.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import bmnas  # noqa: F401
except ImportError:  # a bare checkout: use its src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bmnas.method.train as trainer  # noqa: E402
from batched_folds import genotype  # noqa: E402
from bmnas.core.config import Config, preset  # noqa: E402
from bmnas.engine.loop import AdamSettings  # noqa: E402
from bmnas.features.pipeline import load_data  # noqa: E402
from bmnas.method.run import fit_config_to_data  # noqa: E402

_OF = AdamSettings.of.__func__


def adam(fused: bool) -> classmethod:
    """``AdamSettings.of`` giving ``fused`` to every fit (the search's optimisers are built elsewhere)."""
    of = _OF
    return classmethod(lambda cls, section, fused=None, want=fused: of(cls, section, fused=want))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--genotypes", default="random,concat_fc")
    p.add_argument("--repeat", type=int, default=3, help="A/B pairs per genotype")
    p.add_argument("--set", action="append", default=["train.epochs=3"], help="config override key=value")
    p.add_argument("--cache", default=os.environ.get("BMNAS_CACHE"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = Config.from_sources(None, args.set, base=preset("avmnist"))
    cfg = cfg.replace(data=type(cfg.data)(**{**cfg.data.__dict__, "dataset": "avmnist"}))
    data = load_data(cfg, args.cache, progress=False)
    cfg = fit_config_to_data(cfg, data)
    print("load average before:", os.getloadavg())
    real = trainer.AdamSettings.of
    try:
        for name in args.genotypes.split(","):
            g = genotype(name, data, cfg)
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.repeat):
                for fused in (False, True):
                    trainer.AdamSettings.of = adam(fused)
                    t0 = time.perf_counter()
                    sel = trainer.select_epochs(g, data, cfg, progress=False)
                    times[fused].append(time.perf_counter() - t0)
                    curve = [round(c, 5) for c in sel.curve]
                    print(f"{name:10s} fused={fused!s:5s} {times[fused][-1]:.3f} s  curve {curve}")
            a, b = statistics.median(times[False]), statistics.median(times[True])
            print(f"{name}: per tensor {a:.3f} s, fused {b:.3f} s median: {1 - b / a:.0%} less")
    finally:
        trainer.AdamSettings.of = real
    print("load average after:", os.getloadavg())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
