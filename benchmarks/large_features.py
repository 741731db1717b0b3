"""Data larger than memory: peak memory of pooling and a search on a folder of ``.npy`` files.

A benchmark, not a test. It writes MM-IMDB-like raw features in the generic format's ``.npy``
layout (``DIR/<split>/<modality>.<layer>.npy``): four image maps ``(512, 14, 14)`` (fp16, like
VGG19's conv blocks at 224 px) and a text vector ``(768,)`` (fp32), 23 genres multi-hot, as many
rows as fit ``--gb`` gigabytes on disk; then, each in a fresh process,

1. ``pool``: :func:`bmnas.features.generic.load_generic_dir` (memory map → chunks → feature cache),
0. ``idle``: importing torch and bmnas only (the floor every process starts from),
2. ``search``: ``bmnas search --data DIR`` for one epoch on the cached features (a cache hit),

and reports each process's peak resident set (``VmHWM``) against the data size, and the
fraction of "2 × free memory" the data reaches.

    python benchmarks/large_features.py --gb 4 --dir /tmp/large --cache /tmp/large-cache
    python benchmarks/large_features.py --gb 0.2 --keep     # a quick look; keep the data for a rerun
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MAPS = 4
MAP_SHAPE = (512, 14, 14)
TEXT = 768
LABELS = 23
SHARES = {"train": 0.7, "val": 0.15, "test": 0.15}


def row_bytes() -> int:
    return MAPS * int(np.prod(MAP_SHAPE)) * 2 + TEXT * 4


def write(root: Path, gb: float, seed: int = 0) -> dict[str, int]:
    """Write the splits chunk by chunk (never the whole data in memory); returns the row counts."""
    n = int(gb * 1e9 // row_bytes())
    sizes = {s: max(2, int(n * f)) for s, f in SHARES.items()}
    rng = np.random.default_rng(seed)
    for split, rows in sizes.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        labels = (rng.random((rows, LABELS)) < 0.15).astype(np.float32)
        labels[np.arange(rows), np.arange(rows) % LABELS] = 1.0  # every genre positive somewhere
        np.save(folder / "label.npy", labels)
        for m in range(MAPS):
            arr = np.lib.format.open_memmap(
                folder / f"image.block{m + 2}.npy", mode="w+", dtype=np.float16, shape=(rows, *MAP_SHAPE)
            )
            for a in range(0, rows, 256):
                b = min(a + 256, rows)
                chunk = rng.standard_normal((b - a, *MAP_SHAPE), dtype=np.float32)
                chunk += labels[a:b, m : m + 1, None, None]  # a little signal
                arr[a:b] = chunk.astype(np.float16)
            arr.flush()
            del arr
        text = rng.standard_normal((rows, TEXT), dtype=np.float32) + labels[:, :1]
        np.save(folder / "text.emb.npy", text)
    return sizes


def disk_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*.npy"))


def free_bytes() -> int:
    """``MemAvailable`` of /proc/meminfo."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
kind, data, cache, out = sys.argv[1:5]
if kind == "idle":  # what importing torch and bmnas costs alone
    import torch
    from bmnas.features.generic import load_generic_dir
    rc = 0
elif kind == "pool":
    from bmnas.features.generic import load_generic_dir
    d = load_generic_dir(data, 8, cache=cache)
    rc = 0
else:
    from bmnas.cli.main import main
    rc = main(["search", "--data", data, "--cache", cache, "--out", out, "--quiet", "--fresh",
               "--set", "search.epochs=1", "--set", "search.rerank=0", "--set", "model.C=64"])
# VmHWM: this process's own peak (ru_maxrss would also count the parent's resident set at fork)
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t0, "maxrss_bytes": hwm}))
"""


def child(kind: str, data: Path, cache: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    res = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(data), str(cache), str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if res.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=4.0, help="data size on disk, in GB (1e9 bytes)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bmnas-large"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/bmnas-large-cache"))
    ap.add_argument("--write", type=float, metavar="GB", help=argparse.SUPPRESS)  # the writing child
    ap.add_argument("--keep", action="store_true", help="keep the data and the cache afterwards")
    ap.add_argument("--large", action="store_true", help="allow --gb above 8 (the disk must hold it)")
    args = ap.parse_args(argv)
    if args.write is not None:
        write(args.dir, args.write)
        return 0
    if args.gb > 8 and not args.large:
        raise SystemExit("--gb above 8: give --large as well (the data is written to --dir, then removed)")
    args.dir.parent.mkdir(parents=True, exist_ok=True)
    room = shutil.disk_usage(args.dir.parent).free / 1e9
    if args.gb * 1.15 > room and not (args.dir / "test" / "label.npy").exists():
        raise SystemExit(
            f"--gb {args.gb:g}: {args.dir.parent} has {room:.0f} GB free; the data and its "
            f"pooled cache need about {args.gb * 1.15:.0f}"
        )
    t0 = time.perf_counter()
    if not (args.dir / "test" / "label.npy").exists():  # written by a child: this process stays small
        subprocess.run(
            [sys.executable, __file__, "--write", str(args.gb), "--dir", str(args.dir)], check=True
        )
    sizes = {s: int(np.load(args.dir / s / "label.npy", mmap_mode="r").shape[0]) for s in SHARES}
    written = time.perf_counter() - t0
    size, free = disk_bytes(args.dir), free_bytes()
    shutil.rmtree(args.cache, ignore_errors=True)
    idle = child("idle", args.dir, args.cache, args.dir.parent / "large-run")
    pool = child("pool", args.dir, args.cache, args.dir.parent / "large-run")
    search = child("search", args.dir, args.cache, args.dir.parent / "large-run")
    result = {
        "rows": sizes,
        "data_bytes": size,
        "free_bytes": free,
        "fraction_of_2x_free": size / (2 * free) if free else None,
        "write_seconds": written,
        "idle": idle,
        "pool": pool,
        "search": search,
        "pool_peak_over_data": pool["maxrss_bytes"] / size,
        "search_peak_over_data": search["maxrss_bytes"] / size,
        "load_average": os.getloadavg(),
    }
    gib = 1 << 30
    print(
        f"data {size / 1e9:.2f} GB on disk ({sum(sizes.values())} rows; {size / (2 * free):.0%} of 2x free "
        f"memory {2 * free / gib:.1f} GiB)\n"
        f"idle   : peak RSS {idle['maxrss_bytes'] / gib:.2f} GiB (python + torch + bmnas imported)\n"
        f"pool   : {pool['seconds']:.1f} s, peak RSS {pool['maxrss_bytes'] / gib:.2f} GiB "
        f"({pool['maxrss_bytes'] / size:.1%} of the data)\n"
        f"search : {search['seconds']:.1f} s (1 epoch, cache hit), peak RSS "
        f"{search['maxrss_bytes'] / gib:.2f} GiB ({search['maxrss_bytes'] / size:.1%} of the data)"
    )
    print(json.dumps(result))
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)
        shutil.rmtree(args.cache, ignore_errors=True)
        shutil.rmtree(args.dir.parent / "large-run", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
