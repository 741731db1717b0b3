"""Search step speed by thread setting, on an idle machine and beside a competing busy process.

A benchmark, not a test. Each setting runs in its own Python process (``OMP_WAIT_POLICY`` is read
when torch loads OpenMP, so it cannot be changed inside one process) and times search iterations
(weight step + architecture step, :func:`bmnas.engine.loop.optimizer_step`) for ``--seconds``:

* ``default``: torch's default thread count (one per core), OpenMP's default (active) waiting;
* ``passive``: the same thread count with ``OMP_WAIT_POLICY=PASSIVE``;
* ``policy``: the count :func:`bmnas.engine.device.choose_threads` picks (what ``bmnas`` uses when
  ``threads: 0``), measuring the load at that moment;
* ``one``: one thread.

The competing process is a pure-Python busy loop (one core), started and stopped by this script.

    OMP_NUM_THREADS= python benchmarks/threads.py --seconds 6              # table + JSON line
    python benchmarks/threads.py --workloads small --settings default policy
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKLOADS = {
    # a user's small dataset (the planted synthetic shapes): 6 features (L_k, C_in) = (1|4, 8)
    "small": {"feats": [(1, 8), (4, 8), (4, 8), (1, 8), (4, 8), (4, 8)], "C": 32, "L": 4, "N": 2, "M": 2},
    # the MM-IMDB preset's pooled shapes (benchmarks/search_speed.py)
    "mmimdb": {"feats": [(16, 512)] * 4 + [(1, 64), (1, 128)], "C": 192, "L": 16, "N": 2, "M": 1},
}
SETTINGS = ("default", "passive", "policy", "one")


def worker(workload: str, setting: str, seconds: float) -> dict:
    """Iterations per second of one setting (runs in a child process)."""
    import numpy as np
    import torch

    from bmnas.core.config import Config
    from bmnas.core.data import FeatureData, FeatureSplit, TaskInfo
    from bmnas.engine.device import busy_cores, choose_threads, step_elements
    from bmnas.engine.loop import optimizer_step
    from bmnas.method.bilevel import bilevel_optimizers, build_hypernet

    w = WORKLOADS[workload]
    batch = 96
    if setting == "one":
        torch.set_num_threads(1)
    elif setting == "policy":
        torch.set_num_threads(choose_threads(step_elements(batch, len(w["feats"]), w["C"], w["L"])))
    rng = np.random.default_rng(0)
    feats = {
        f"m{i}.f": rng.normal(size=(batch * 4, L, c)).astype(np.float32)
        for i, (L, c) in enumerate(w["feats"])
    }
    split = FeatureSplit(feats, rng.integers(0, 2, batch * 4))
    data = FeatureData({s: split for s in ("train", "val", "test")}, TaskInfo("multiclass", 2))
    cfg = Config.from_sources(None, [f"model.C={w['C']}", f"model.L={w['L']}", f"model.cells={w['N']}",
                                     f"model.steps={w['M']}"])  # fmt: skip
    torch.manual_seed(0)
    net = build_hypernet(data, cfg)
    w_opt, a_opt, _ = bilevel_optimizers(net, cfg, 4)
    weights, arch = net.weight_parameters(), net.arch_parameters()
    batches = [split.batch(np.arange(i * batch, (i + 1) * batch)) for i in range(4)]

    def iteration(i: int) -> None:
        x, y = batches[i % 4]
        optimizer_step(net, data.task, x, y, w_opt, freeze=arch)
        optimizer_step(net, data.task, x, y, a_opt, freeze=weights)

    for i in range(3):  # warm-up
        iteration(i)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        iteration(n)
        n += 1
    elapsed = time.perf_counter() - t0
    return {
        "workload": workload,
        "setting": setting,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "it_per_s": n / elapsed,
        "load_1min": busy_cores(),
    }


def run_setting(workload: str, setting: str, seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if setting == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, __file__, "--worker", workload, setting, "--seconds", str(seconds)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per setting")
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    ap.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "SETTING"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.seconds)))
        return
    rows = []
    for condition in ("idle", "busy"):
        competitor = None
        if condition == "busy":
            competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1.0)
        try:
            for workload in args.workloads:
                for setting in args.settings:
                    row = {"condition": condition, **run_setting(workload, setting, args.seconds)}
                    rows.append(row)
                    print(
                        f"{condition:5s} {workload:7s} {setting:8s} threads={row['threads']} "
                        f"{row['it_per_s']:8.2f} it/s (load {row['load_1min']:.2f})",
                        flush=True,
                    )
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    print(json.dumps({"cores": os.cpu_count(), "seconds": args.seconds, "rows": rows}))


if __name__ == "__main__":
    main()
