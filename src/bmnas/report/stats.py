"""Paired bootstrap intervals of the difference between two networks on the same test rows.

Two networks ``a`` and ``b`` were trained with seeds ``s = 1 … S`` (network ``a`` with seed ``s`` is
paired with network ``b`` with seed ``s``) and tested on the same ``N`` rows. The statistic is the
**difference of the seed-mean scores**

    Δ = (1/S) Σ_s [ M(a_s) − M(b_s) ]

where ``M`` is the task's primary metric on the test rows. Its 95 % interval comes from the paired
bootstrap over test rows: draw ``N`` row indices with replacement, **the same indices for every seed
and both networks** (the test rows are the only sample the interval is about; the seeds are pooled
by the mean, not resampled), recompute Δ on the resampled rows, repeat ``n_boot`` times, and take
the ``(1 − level)/2`` and ``(1 + level)/2`` percentiles of the ``n_boot`` values. The point
estimate is Δ on the rows as they are.

* Accuracy (:func:`paired_bootstrap`): with ``c_{s,i} ∈ {0, 1}`` a row's correctness,
  ``Δ = (1/N) Σ_i d̄_i`` with ``d̄_i = (1/S) Σ_s (c^a_{s,i} − c^b_{s,i})``, so a resample of the rows
  with counts ``w_i`` (``Σ w_i = N``) gives ``Δ* = (1/N) Σ_i w_i d̄_i``. On ``N`` rows where ``a`` is
  right on every row and ``b`` wrong on a share ``p``, the interval is close to the normal
  approximation ``p ± 1.96 √(p (1 − p) / N)``.
* Weighted F1 of a multilabel task (:func:`paired_bootstrap_f1`): per label ``k`` and resample,
  ``TP_k = Σ_i w_i ŷ_{ik} y_{ik}``, ``FP_k = Σ_i w_i ŷ_{ik} (1 − y_{ik})``,
  ``FN_k = Σ_i w_i (1 − ŷ_{ik}) y_{ik}``, ``F1_k = 2 TP_k / (2 TP_k + FP_k + FN_k)`` (0 when the
  denominator is 0) and ``F1_w = Σ_k n_k F1_k / Σ_k n_k`` with the support ``n_k = Σ_i w_i y_{ik}``
  (0 when no label is positive): scikit-learn's ``f1_score(average="weighted", zero_division=0)``
  on the resampled rows.

A difference is called ``better`` (or ``worse``) only where its interval excludes 0, else ``tie``.
Everything here is NumPy on plain arrays (no torch); resamples are drawn from
``numpy.random.default_rng(seed)`` in blocks, so the same inputs and seed give the same interval.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

N_BOOT = 10_000
LEVEL = 0.95
_BLOCK_VALUES = 1 << 22  # resampled row indices drawn at once (32 MiB of int64)


@dataclass(frozen=True)
class PairedDifference:
    """Δ (the difference of seed-mean scores, ``a − b``), its bootstrap interval and per-seed Δ."""

    metric: str
    mean: float
    lo: float
    hi: float
    per_seed: tuple[float, ...]
    rows: int
    n_boot: int = N_BOOT
    level: float = LEVEL

    @property
    def verdict(self) -> str:
        """``better`` (interval above 0), ``worse`` (below 0) or ``tie`` (it holds 0)."""
        return verdict(self.lo, self.hi)


def verdict(lo: float, hi: float) -> str:
    """``better`` when ``lo > 0``, ``worse`` when ``hi < 0``, else ``tie``."""
    return "better" if lo > 0 else "worse" if hi < 0 else "tie"


def paired_bootstrap(
    a_correct: Sequence | np.ndarray,
    b_correct: Sequence | np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """``(Δ, lo, hi)``: difference in accuracy of ``a`` over ``b`` and its paired bootstrap interval.

    Args:
        a_correct, b_correct: per-row correctness (0/1 or bool) of shape ``(N,)`` (one seed) or
            ``(S, N)`` (row ``s`` of ``a`` paired with row ``s`` of ``b``); see the module for the
            statistic ``Δ = (1/S) Σ_s [acc(a_s) − acc(b_s)]`` and its resampling.
        n_boot: bootstrap resamples; seed: of ``numpy.random.default_rng``; level: of the interval.

    Raises:
        ValueError: shapes differ, no rows, values other than 0/1, ``n_boot < 1`` or ``level`` not in (0, 1).
    """
    a, b = _correctness(a_correct, "a_correct"), _correctness(b_correct, "b_correct")
    if a.shape != b.shape:
        raise ValueError(
            f"a_correct has shape {a.shape} but b_correct {b.shape}; pair the same seeds and rows"
        )
    _check_boot(n_boot, level)
    d = (a - b).mean(axis=0)  # d̄_i: per row, the mean over seeds of the difference in correctness
    n = d.shape[0]
    boot = np.concatenate([d[idx].mean(axis=1) for idx in _resample_rows(n, n_boot, seed)])
    return (float(d.mean()), *_interval(boot, level))


def paired_bootstrap_f1(
    a_pred: Sequence | np.ndarray,
    b_pred: Sequence | np.ndarray,
    labels: Sequence | np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """``(Δ, lo, hi)`` of the weighted F1 of multilabel predictions, rows resampled as in the module.

    Args:
        a_pred, b_pred: 0/1 predicted label sets, ``(N, K)`` (one seed) or ``(S, N, K)``.
        labels: the 0/1 true label sets ``(N, K)`` of the same rows.

    Raises:
        ValueError: shapes differ or values other than 0/1 (see :func:`paired_bootstrap`).
    """
    y = _binary(labels, "labels", ndim=(2,))
    a = _binary(a_pred, "a_pred", ndim=(2, 3))
    b = _binary(b_pred, "b_pred", ndim=(2, 3))
    a, b = (x[None] if x.ndim == 2 else x for x in (a, b))
    if a.shape != b.shape or a.shape[1:] != y.shape:
        raise ValueError(
            f"a_pred {a.shape}, b_pred {b.shape} and labels {y.shape} must describe the same seeds, rows "
            f"and labels"
        )
    _check_boot(n_boot, level)
    ones = np.ones((1, y.shape[0]))
    mean = float(np.mean(weighted_f1(ones, a, y) - weighted_f1(ones, b, y)))
    boot = np.concatenate(
        [
            (weighted_f1(w, a, y) - weighted_f1(w, b, y)).mean(axis=0)
            for w in _resample_counts(y.shape[0], n_boot, seed)
        ]
    )
    return (mean, *_interval(boot, level))


def weighted_f1(w: np.ndarray, pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weighted F1 ``(S, B)`` of predictions ``(S, N, K)`` against ``y (N, K)`` under row counts ``w (B, N)``.

    The formula is the module's; ``w`` of ones is the plain score (scikit-learn's weighted F1).
    """
    support = w @ y  # (B, K)
    out = np.empty((pred.shape[0], w.shape[0]))
    for s, p in enumerate(pred):
        tp, fp, fn = w @ (p * y), w @ (p * (1 - y)), w @ ((1 - p) * y)
        denom = 2 * tp + fp + fn
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        total = support.sum(axis=1)
        out[s] = np.divide((support * f1).sum(axis=1), total, out=np.zeros_like(total), where=total > 0)
    return out


def paired_difference(
    metric: str,
    a_pred: Sequence[np.ndarray],
    b_pred: Sequence[np.ndarray],
    labels: np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> PairedDifference:
    """The :class:`PairedDifference` of the task's primary metric between per-seed predictions.

    Args:
        metric: ``accuracy`` (``a_pred[s]`` holds class indices ``(N,)``) or ``f1_weighted``
            (multilabel: 0/1 label sets ``(N, K)``).
        a_pred, b_pred: one prediction array per seed, seed ``s`` of ``a`` paired with seed ``s`` of ``b``.
        labels: the true classes ``(N,)`` or label sets ``(N, K)`` of the test rows, in their order.

    Raises:
        ValueError: an unknown metric, no seeds, or a seed count or shape that does not pair.
    """
    if len(a_pred) != len(b_pred) or not len(a_pred):
        raise ValueError(
            f"need the same number (≥ 1) of seeds for a and b, got {len(a_pred)} and {len(b_pred)}"
        )
    y = np.asarray(labels)
    if metric == "accuracy":
        a = np.stack([np.asarray(p) == y for p in a_pred])
        b = np.stack([np.asarray(p) == y for p in b_pred])
        mean, lo, hi = paired_bootstrap(a, b, n_boot, seed, level)
        per_seed = tuple(float(x) for x in a.mean(axis=1) - b.mean(axis=1))
    elif metric == "f1_weighted":
        a, b = np.stack(a_pred), np.stack(b_pred)
        mean, lo, hi = paired_bootstrap_f1(a, b, y, n_boot, seed, level)
        ones = np.ones((1, y.shape[0]))
        per_seed = tuple(float(x) for x in (weighted_f1(ones, a, y) - weighted_f1(ones, b, y))[:, 0])
    else:
        raise ValueError(f"no paired bootstrap for metric {metric!r}; choose accuracy or f1_weighted")
    return PairedDifference(metric, mean, lo, hi, per_seed, int(y.shape[0]), n_boot, level)


# ---------------------------------------------------------------------------------------- helpers
def _resample_rows(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of row indices ``(B, n)``: each line is one resample of ``n`` rows with replacement."""
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_VALUES // max(1, n))
    for start in range(0, n_boot, block):
        yield rng.integers(0, n, size=(min(block, n_boot - start), n))


def _resample_counts(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """The resamples of :func:`_resample_rows` as row counts ``w (B, n)`` (``w_i``: draws of row ``i``)."""
    for idx in _resample_rows(n, n_boot, seed):
        b = idx.shape[0]
        flat = (idx + n * np.arange(b)[:, None]).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _check_boot(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _binary(x: Sequence | np.ndarray, name: str, ndim: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim not in ndim or arr.size == 0:
        raise ValueError(
            f"{name}: expected a non-empty array of {' or '.join(map(str, ndim))} dimensions, got {arr.shape}"
        )
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name}: values must be 0/1 (or bool)")
    return arr.astype(np.float64)


def _correctness(x: Sequence | np.ndarray, name: str) -> np.ndarray:
    arr = _binary(x, name, ndim=(1, 2))
    return arr[None] if arr.ndim == 1 else arr
