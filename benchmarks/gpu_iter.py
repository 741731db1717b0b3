"""Search-iteration time, kernels per iteration and the GPU's busy share, for benchmarks/gpu_check.sh.

One markdown table row per setting: ``python benchmarks/gpu_iter.py --device cuda --C 192 --K 6``.
An iteration is one epoch's weight + architecture steps (:func:`bmnas.method.search._bilevel_steps`)
divided by its batches; kernels and busy share come from ``torch.profiler`` (busy = Σ kernel
durations / wall of the profiled epoch). ``--device cpu`` with tiny sizes is the smoke mode.
"""

from __future__ import annotations

import argparse
import time

import torch

from bmnas.core.config import Config
from bmnas.features.synthetic import planted_interaction
from bmnas.method.search import _bilevel_steps, _setup


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def one(args: argparse.Namespace, precision: str, graphs: str) -> str:
    data = planted_interaction(n=args.n, L=args.L, seed=0)
    sets = [
        f"device={args.device}",
        f"precision={precision}",
        f"cuda_graphs={graphs}",
        f"model.C={args.C}",
        f"model.L={args.L}",
        f"search.batch_size={args.batch}",
        "search.warmup_epochs=0",
        "search.rerank=0",
    ]
    s = _setup(data, Config.from_sources(None, sets), progress=False)
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
    captured = s.w_step.captured
    return (
        f"| search iteration C={args.C} n={args.n} b={args.batch} | {args.device} | {precision} | {graphs} "
        f"(captured: {captured}) | {ms:.2f} ms | {kernels:.0f} | {busy:.0%} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--C", type=int, default=192)
    ap.add_argument("--L", type=int, default=16)
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--graphs", default="on,off")
    args = ap.parse_args()
    for p in args.precisions.split(","):
        for g in args.graphs.split(","):
            print(one(args, p, g), flush=True)


if __name__ == "__main__":
    main()
