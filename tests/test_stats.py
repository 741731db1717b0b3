"""Paired bootstrap intervals (report/stats.py) and saved predictions (engine/saved_predictions.py)."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from bmnas.core.data import TaskInfo
from bmnas.core.fileio import FileFormatError
from bmnas.engine import saved_predictions
from bmnas.engine.saved_predictions import SavedPredictions
from bmnas.report.stats import (
    paired_bootstrap,
    paired_bootstrap_f1,
    paired_difference,
    verdict,
    weighted_f1,
)


def one_in_ten(n=1000):
    a = np.ones(n, dtype=int)
    b = a.copy()
    b[::10] = 0  # a is right on every row, b wrong on every 10th
    return a, b


def test_identical_predictions_give_zero_interval():
    rng = np.random.default_rng(0)
    c = rng.integers(0, 2, (3, 200))
    assert paired_bootstrap(c, c) == (0.0, 0.0, 0.0)
    y = rng.integers(0, 2, (200, 4))
    p = rng.integers(0, 2, (3, 200, 4))
    assert paired_bootstrap_f1(p, p, y) == (0.0, 0.0, 0.0)


def test_one_in_ten_advantage_matches_the_normal_approximation():
    a, b = one_in_ten()
    mean, lo, hi = paired_bootstrap(a, b)
    half = 1.96 * np.sqrt(0.1 * 0.9 / 1000)  # 0.0186: the normal approximation's half width
    assert mean == pytest.approx(0.1, abs=1e-12)
    assert lo == pytest.approx(0.1 - half, abs=0.003) and hi == pytest.approx(0.1 + half, abs=0.003)
    assert paired_bootstrap(b, a) == pytest.approx((-0.1, -hi, -lo), abs=0.002)  # symmetric
    assert verdict(lo, hi) == "better" and verdict(-hi, -lo) == "worse" and verdict(-0.01, 0.02) == "tie"


def test_seeded_reproducibility():
    a, b = one_in_ten()
    rng = np.random.default_rng(3)
    b = np.where(rng.random(1000) < 0.5, b, 1 - b)  # a noisy b: every resample differs
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, n_boot=199, seed=7)[1:] != paired_bootstrap(a, b, n_boot=199, seed=8)[1:]
    assert paired_bootstrap(a, b, n_boot=500, seed=7)[0] == paired_bootstrap(a, b, seed=7)[0]


def test_seeds_are_paired_and_pooled_by_their_mean():
    labels = np.zeros(1000, dtype=int)
    a = [labels.copy(), labels.copy()]
    b = [labels.copy(), labels.copy()]
    b[0][:200] = 1  # seed 0: a ahead by 0.2; seed 1: equal
    d = paired_difference("accuracy", a, b, labels)
    assert d.per_seed == pytest.approx((0.2, 0.0)) and d.mean == pytest.approx(0.1)
    assert (d.rows, d.n_boot, d.level, d.verdict) == (1000, 10_000, 0.95, "better")
    # rows resampled jointly for both seeds: Δ* = (1/N) Σ w_i d̄_i with d̄ = 0.5 on 200 rows
    half = 1.96 * 0.5 * np.sqrt(0.2 * 0.8 / 1000)
    assert d.lo == pytest.approx(0.1 - half, abs=0.002) and d.hi == pytest.approx(0.1 + half, abs=0.002)


def test_weighted_f1_is_sklearns_under_resampling_counts():
    rng = np.random.default_rng(1)
    y = (rng.random((60, 5)) < 0.3).astype(int)
    y[:, 4] = 0  # a label without positives: support 0
    p = (rng.random((2, 60, 5)) < 0.4).astype(int)
    w = rng.integers(0, 3, (3, 60)).astype(float)
    got = weighted_f1(w, p, y)
    for s in range(2):
        for j in range(3):
            rows = np.repeat(np.arange(60), w[j].astype(int))
            want = f1_score(y[rows], p[s][rows], average="weighted", zero_division=0)
            assert got[s, j] == pytest.approx(want, abs=1e-12)
    d = paired_difference("f1_weighted", list(p), [y, y], y)
    assert d.per_seed == pytest.approx(
        [f1_score(y, q, average="weighted", zero_division=0) - 1.0 for q in p], abs=1e-12
    )
    assert d.hi < 0 and d.verdict == "worse"


def test_bad_inputs_are_refused_with_what_to_fix():
    a, b = one_in_ten()
    with pytest.raises(ValueError, match=r"shape \(1, 1000\) but b_correct \(1, 999\)"):
        paired_bootstrap(a, b[:999])
    with pytest.raises(ValueError, match="values must be 0/1"):
        paired_bootstrap(a * 2, b)
    with pytest.raises(ValueError, match="n_boot must be >= 1"):
        paired_bootstrap(a, b, n_boot=0)
    with pytest.raises(ValueError, match="no paired bootstrap for metric 'auc'"):
        paired_difference("auc", [a], [b], a)
    with pytest.raises(ValueError, match="same number"):
        paired_difference("accuracy", [a, a], [b], a)


def test_saved_predictions_round_trip_and_damage(tmp_path):
    task = TaskInfo("multiclass", 3)
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]], dtype=np.float32)
    saved = SavedPredictions.of(logits, np.array([1, 2, 2]), task)
    assert saved.predicted.tolist() == [1, 0, 2] and saved.metrics()["accuracy"] == pytest.approx(2 / 3)
    path = saved.save(tmp_path / saved_predictions.FILE)
    back = saved_predictions.load(path)
    assert np.array_equal(back.logits, logits) and back.labels.tolist() == [1, 2, 2] and back.task == task
    ml = SavedPredictions.of(np.array([[-1.0, 2.0]]), np.array([[0, 1]]), TaskInfo("multilabel", 2), 0.5)
    assert saved_predictions.load(ml.save(tmp_path / "ml.npz")).predicted.tolist() == [[0, 1]]

    np.savez(
        tmp_path / "bad.npz",
        meta=np.array("{}"),
        logits=logits,
        predicted=saved.predicted,
        labels=saved.labels,
    )
    with pytest.raises(FileFormatError, match=r"bad.npz, meta: format is missing; delete it"):
        saved_predictions.load(tmp_path / "bad.npz")
    with np.load(path) as npz:
        parts = dict(npz)
    parts["predicted"] = np.array([1, 1, 2])
    np.savez(tmp_path / "edited.npz", **parts)
    with pytest.raises(FileFormatError, match="predicted does not follow from the logits"):
        saved_predictions.load(tmp_path / "edited.npz")
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(FileFormatError, match="not a readable predictions file"):
        saved_predictions.load(tmp_path / "cut.npz")
