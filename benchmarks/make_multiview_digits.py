"""A small real multi-view dataset in the generic ``--data DIR`` format, from scikit-learn's digits.

The 1,797 8×8 handwritten digits that ship inside scikit-learn (UCI optdigits test set), seen
through three views in the spirit of the UCI "Multiple Features" data: ``pix`` the 64 pixel
values, ``fou`` 38 magnitudes of the 2-D Fourier transform, ``mor`` 6 morphological numbers (ink,
centroid, second moments, bounding-box height), each computed from its own noisy copy of the
image (``--noise``: Gaussian pixel noise, so that no view suffices alone). Seeded stratified
60/20/20 split. Small data with
precomputed feature vectors: the case where a linear model is the baseline to beat.

    python benchmarks/make_multiview_digits.py --out data/digits3
    python benchmarks/search_quality.py --data data/digits3 --out runs/quality_digits3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def views(images: np.ndarray) -> dict[str, np.ndarray]:
    """``pix`` (64), ``fou`` (38) and ``mor`` (6) features of ``(N, 8, 8)`` images."""
    n = len(images)
    pix = images.reshape(n, -1)
    spec = np.abs(np.fft.rfft2(images))  # (N, 8, 5)
    fou = spec.reshape(n, -1)[:, 2:]  # drop the DC term and its twin: 38 values
    ys, xs = np.mgrid[0:8, 0:8]
    ink = images.sum((1, 2)) + 1e-6
    cy = (images * ys).sum((1, 2)) / ink
    cx = (images * xs).sum((1, 2)) / ink
    vy = (images * (ys - cy[:, None, None]) ** 2).sum((1, 2)) / ink
    vx = (images * (xs - cx[:, None, None]) ** 2).sum((1, 2)) / ink
    rows = (images > 4).any(2)
    height = rows.shape[1] - rows.argmax(1) - rows[:, ::-1].argmax(1)
    mor = np.stack([ink, cy, cx, vy, vx, height], 1)
    return {"pix.v": pix, "fou.v": fou, "mor.v": mor}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=6.0, help="pixel noise std (pixels are 0..16) per view")
    args = p.parse_args(argv)
    d = load_digits()
    images, y = d.images.astype(np.float32), d.target.astype(np.int64)
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=args.seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=args.seed)
    rng = np.random.default_rng(args.seed)
    noisy = [images + rng.normal(0, args.noise, images.shape).astype(np.float32) for _ in range(3)]
    feats = {k: views(im)[k] for k, im in zip(("pix.v", "fou.v", "mor.v"), noisy, strict=True)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("val", val), ("test", test)):
        arrays = {k: v[rows].astype(np.float32) for k, v in feats.items()}
        np.savez(out / f"{name}.npz", label=y[rows], **arrays)
    shapes = [(k, v.shape[1]) for k, v in feats.items()]
    print(f"wrote {out}: {len(train)}/{len(val)}/{len(test)} samples, views {shapes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
