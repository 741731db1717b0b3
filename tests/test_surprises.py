"""The small surprises, met as a user meets them: a stretched feature is named, a model file's
suffix says its format, a derived Cell reads both its inputs."""

import numpy as np
import pytest

from bmnas.cli.main import main
from helpers import write_generic


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_feature_shorter_than_model_L_is_named_once_when_it_is_stretched(tmp_path, capsys):
    data = write_generic(tmp_path / "d")  # audio.seq has T = 11; image.map is 6×5
    rc, _, err = _run(capsys, "pretrain", "--data", str(data), "--set", "model.L=16")
    assert rc == 0
    # info lines start with the time (HH:MM:SS); what follows is the message
    lines = [line.split(" ", 1)[1] for line in err.splitlines() if "fewer than model.L" in line]
    assert lines == [
        "bmnas: feature 'audio.seq' has 11 positions, fewer than model.L = 16: interpolated up to 16 "
        "(copies, no new information); set model.L to at most its length, or extract it with length >= 16",
        "bmnas: feature 'audio.video' has 3 positions, fewer than model.L = 16: interpolated up to 16 "
        "(copies, no new information); set model.L to at most its length, or extract it with length >= 16",
    ]  # once each, though three splits were pooled; the 6×5 map holds a 4×4 grid
    rc, _, err = _run(capsys, "pretrain", "--data", str(data), "--set", "model.L=2")
    assert rc == 0 and "fewer than model.L" not in err
    assert np.load(data / "train.npz")["audio.seq"].shape[-1] == 11


def test_arch_weight_panels_keep_a_fixed_zero_to_one_axis(tmp_path):
    """γ at 0.2 ± 0.001 (undecided among 5 ops) must look flat, not like a decision."""
    from bmnas.report.plots import arch_figure

    ops = ["zero", "sum", "attention", "linear_glu", "concat_fc"]
    names = ["a.f", "b.f"]
    genotype = {
        "format": "bmnas.genotype",
        "version": 1,
        "C": 8,
        "L": 1,
        "features": [{"name": n, "channels": 4, "length": 1} for n in names],
        "cells": [{"inputs": names, "steps": [{"op": "sum", "inputs": ["x", "y"]}], "concat": ["step1"]}],
        "output": ["cell1"],
    }
    history = [
        {
            "epoch": e,
            "genotype": genotype,
            "ops": ops,
            "arch": {
                "alpha": [[[0.5 + 1e-3 * e, 0.5], [0.5, 0.5 - 1e-3 * e]]],
                "gamma": [[[0.2 + 1e-3 * e, 0.2, 0.2, 0.2, 0.2 - 1e-3 * e]]],
            },
        }
        for e in (1, 2, 3)
    ]
    axes = arch_figure(history).axes
    assert [ax.get_title() for ax in axes] == [
        "cell1 input x: α per predecessor",
        "cell1 input y: α per predecessor",
        "cell1: softmax(γ) per step",
    ]
    assert [ax.get_ylim() for ax in axes] == [(0.0, 1.0)] * 3


def test_the_robustness_figure_has_a_title_a_chance_line_and_the_probe_where_it_was_measured():
    from bmnas.report.study_plots import condition_figure

    value = {
        (m, c): v for m, v0 in (("searched", 0.8), ("sum", 0.7)) for c, v in (("clean", v0), ("noise:1", 0.4))
    }
    fig = condition_figure(
        ["searched", "sum"],
        ["clean", "noise:1"],
        value,
        "accuracy",
        title="run: test accuracy",
        chance=(0.1, "chance: 1/K = 1/10"),
        probe=(0.65, "linear probe (clean test, metrics.json)"),
    )
    ax = fig.axes[0]
    assert fig._suptitle.get_text() == "run: test accuracy"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["chance: 1/K = 1/10", "linear probe (clean test, metrics.json)", "searched", "sum"]
    chance = next(line for line in ax.get_lines() if line.get_label().startswith("chance"))
    assert tuple(chance.get_ydata()) == (0.1, 0.1) and tuple(chance.get_xdata()) == (0, 1)  # across all
    [probe] = [c for c in ax.collections if c.get_label().startswith("linear probe")]
    (x0, y0), (x1, y1) = probe.get_segments()[0]
    assert (y0, y1) == (0.65, 0.65) and -0.5 < x0 < x1 < 0.5  # over the clean group only


def test_chance_is_one_over_k_or_the_expected_f1_of_guessing_at_the_train_rates():
    from bmnas.core.data import FeatureData, FeatureSplit, TaskInfo
    from bmnas.serve.robustness import chance_level

    feats = {"a.f": np.zeros((4, 1, 2), np.float32)}
    labels = np.array([0, 1, 2, 3])
    data = FeatureData(
        {s: FeatureSplit(feats, labels) for s in ("train", "val", "test")}, TaskInfo("multiclass", 4)
    )
    assert chance_level(data) == (0.25, "chance: 1/K = 1/4")
    train = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], np.float32)  # p = (0.5, 0.25)
    test = np.array([[1, 1], [0, 1], [0, 1], [0, 0]], np.float32)  # q = (0.25, 0.75)
    splits = {
        "train": FeatureSplit(feats, train),
        "val": FeatureSplit(feats, train),
        "test": FeatureSplit(feats, test),
    }
    score, what = chance_level(FeatureData(splits, TaskInfo("multilabel", 2)))
    f1 = [2 * 0.5 * 0.25 / 0.75, 2 * 0.25 * 0.75 / 1.0]
    assert score == pytest.approx((0.25 * f1[0] + 0.75 * f1[1]) / 1.0)
    assert what == "chance: each label guessed at its train rate (expected weighted F1)"
