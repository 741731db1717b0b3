"""Search-iteration time, kernels per iteration and the GPU's busy share, for benchmarks/gpu_check.sh.

One markdown table row per setting: ``python benchmarks/gpu_iter.py --device cuda --preset mmimdb``.
An iteration is one epoch's weight + architecture steps (:func:`bmnas.method.search._bilevel_steps`)
divided by its batches; kernels and busy share come from ``torch.profiler`` (busy = Σ kernel
durations / wall of the profiled epoch). ``--device cpu`` with tiny sizes is the smoke mode.

Data: random pooled features ``(n, L_k, C_in)`` of a preset, the shapes
:func:`bmnas.features.pooling.pool_feature` gives the authors' raw maps (benchmarks/search_speed.py
``PRESETS``), so that benchmarks/authors_iter.py, which feeds their hypernet those raw maps, runs the
same problem:

* ``--preset mmimdb``: K = 6 (VGG19 relu4_1, relu4_4 ``512×32×20``, relu5_3 ``512×16×10``, pool5
  ``512×8×5`` → ``16×512``; text ``64``, ``128`` → ``1×64``, ``1×128``), C = 192, L = 16, N = 2,
  M = 1, 23 labels (multilabel), dropout 0.1, batch 96.
* ``--preset ntu``: K = 8 (I3D ``512×8×32×32``, ``1024×8×16×16``, ``2048×8×8×8`` → ``8×C_in``, pool
  ``2048`` → ``1×2048``; skeleton ``128×4×4``, ``256×2×2`` → ``8×C_in``, ``1024``, ``512`` → ``1×C_in``),
  C = 128, L = 8, N = 2, M = 2, 60 classes, dropout 0.2, batch 96.
* ``--preset planted``: :func:`bmnas.features.synthetic.planted_interaction` (6 features of 8
  channels, 2 classes), the earlier default.

``--C``/``--L`` override the preset's (the smoke mode's tiny sizes); ``--json PATH`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from bmnas.core.config import Config
from bmnas.core.data import FeatureData, TaskInfo
from bmnas.engine.device import step_elements, thread_policy
from bmnas.features.synthetic import SPLIT_SIZES, planted_interaction
from bmnas.method.search import _bilevel_steps, _setup
from search_speed import PRESETS, pooled_shapes, random_split

DROPOUT = {"mmimdb": 0.1, "ntu": 0.2}  # the presets' (and the authors' drpt)


def preset_data(name: str, n: int, L: int) -> tuple[FeatureData, dict]:
    """Random pooled features of preset ``name`` (``n`` rows, split 70/15/15) and its model sizes."""
    p = PRESETS[name]
    shapes = pooled_shapes(p["features"], L)
    task = TaskInfo(p["task"], p["outputs"])
    rng = np.random.default_rng(0)
    sizes = {k: max(2, round(f * n)) for k, f in SPLIT_SIZES.items()}
    splits = {k: random_split(shapes, task, m, rng) for k, m in sizes.items()}
    return FeatureData(splits, task, name=f"random-{name}"), p


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def one(args: argparse.Namespace, precision: str, graphs: str) -> dict:
    if args.preset == "planted":
        C, L = args.C or 192, args.L or 16
        data, sizes = planted_interaction(n=args.n, L=L, seed=0), []
    else:
        data, p = preset_data(args.preset, args.n, args.L or PRESETS[args.preset]["L"])
        C, L = args.C or p["C"], args.L or p["L"]
        sizes = [f"model.cells={p['N']}", f"model.steps={p['M']}", f"model.dropout={DROPOUT[args.preset]}"]
    sets = [
        f"device={args.device}",
        f"precision={precision}",
        f"cuda_graphs={graphs}",
        f"threads={args.threads}",
        f"model.C={C}",
        f"model.L={L}",
        *sizes,
        f"search.batch_size={args.batch}",
        "search.warmup_epochs=0",
        "search.rerank=0",
    ]
    cfg = Config.from_sources(None, sets)
    step = step_elements(args.batch, len(data.feature_names), C, L)
    with thread_policy(cfg.threads, step) as threads:  # as bmnas.method.search.search does
        s = _setup(data, cfg, progress=False)
        n_batches = -(-len(s.weight_rows) // args.batch)
        _bilevel_steps(s, 1, True)  # warm-up and capture
        _sync(args.device)
        t0 = time.perf_counter()
        for e in range(args.epochs):
            _bilevel_steps(s, 2 + e, True)
        _sync(args.device)
        ms = (time.perf_counter() - t0) / (args.epochs * n_batches) * 1e3
        kernels = busy = float("nan")
        if args.device.startswith("cuda"):
            acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            with torch.profiler.profile(activities=acts) as prof:
                t1 = time.perf_counter()
                _bilevel_steps(s, 99, True)
                _sync(args.device)
                wall = time.perf_counter() - t1
            ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            kernels = len(ev) / n_batches
            busy = sum(e.device_time for e in ev) / 1e6 / wall
    return {
        "what": "bmnas",
        "preset": args.preset,
        "device": args.device,
        "precision": precision,
        "graphs": graphs,
        "captured": bool(s.w_step.captured),
        "C": C,
        "L": L,
        "n": args.n,
        "batch": args.batch,
        "threads": threads,
        "ms": ms,
        "kernels": None if math.isnan(kernels) else kernels,
        "busy": None if math.isnan(busy) else busy,
    }


def row(r: dict) -> str:
    k = "" if r["kernels"] is None else f"{r['kernels']:.0f}"
    busy = "" if r["busy"] is None else f"{r['busy']:.0%}"
    sizes = f"C={r['C']} L={r['L']} n={r['n']} b={r['batch']} threads={r['threads']}"
    return (
        f"| search iteration ({r['preset']}) {sizes} | {r['device']} | {r['precision']} "
        f"| {r['graphs']} (captured: {r['captured']}) | {r['ms']:.2f} ms | {k} | {busy} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", choices=["planted", *PRESETS], default="planted")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--C", type=int, default=None, help="default: the preset's (planted: 192)")
    ap.add_argument("--L", type=int, default=None, help="default: the preset's (planted: 16)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: bmnas' policy)")
    ap.add_argument("--json", default=None, help="write the rows as a JSON list to this file")
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--graphs", default="on,off")
    args = ap.parse_args()
    rows = []
    for p in args.precisions.split(","):
        for g in args.graphs.split(","):
            rows.append(one(args, p, g))
            print(row(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)


if __name__ == "__main__":
    main()
