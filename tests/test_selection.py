"""``model.linear_init=probe``: every trained network starts as the linear probe and learns a residual."""

import json

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from bmnas.cli.main import main
from bmnas.core.config import Config
from bmnas.core.data import FeatureData, FeatureSplit
from bmnas.engine.folds import kfold
from bmnas.features.generic import load_generic_dir
from bmnas.method.probe import _design, _fit, _logits, choose_C, linear_probe
from bmnas.method.train import Selection, build_model, linear_init, select_epochs, train, with_recipe
from bmnas.space.baselines import baseline
from helpers import linear_blobs, write_generic

RANDOM = ["model.C=8", "model.L=2", "train.epochs=3", "train.select_folds=0", "model.linear_init=random"]
PROBE = [*RANDOM[:-1], "model.linear_init=probe"]


def late_fusion(data, cfg):
    return with_recipe(baseline("late_fusion", data.specs(), cfg.model.C, cfg.model.L, 2, 0), cfg)


def test_an_untrained_network_is_the_probe_fitted_on_its_split():
    data = linear_blobs()
    cfg = Config.from_sources(None, PROBE)
    g = late_fusion(data, cfg)
    model = build_model(g, data, cfg, data["train"]).eval()
    feats, y = data["val"].batch(slice(None))
    with torch.no_grad():
        pred = model(feats).argmax(1)
    C, val_score = choose_C(data, g.linear, cfg.seed)
    assert linear_probe(data, cfg.seed)["C"] == C
    assert float((pred == y).float().mean()) == pytest.approx(val_score)  # the probe's own val accuracy
    assert torch.count_nonzero(model.head.classifier.weight) == 0
    random = build_model(g, data, Config.from_sources(None, RANDOM), data["train"])
    assert torch.count_nonzero(random.head.classifier.weight) > 0


def test_auto_starts_from_the_probe_only_when_every_feature_is_a_vector():
    auto = Config.from_sources(None, RANDOM[:-1])
    assert auto.model.linear_init == "auto"
    vectors = linear_blobs()
    assert linear_init(auto, vectors) == "probe"
    maps = FeatureData(
        {
            s: FeatureSplit({**sp.features, "a.map": np.repeat(sp.features["a.last"], 2, axis=1)}, sp.labels)
            for s, sp in vectors.splits.items()
        },
        vectors.task,
    )
    assert linear_init(auto, maps) == "random"
    assert linear_init(Config.from_sources(None, RANDOM), vectors) == "random"  # an explicit choice wins


def test_selection_can_choose_zero_epochs_and_the_refit_is_then_the_probe():
    sel = Selection([0.5, 0.6], "accuracy", 1.0, initial=0.6)
    assert sel.best_epoch == 0 and sel.best_score == 0.6  # ties: fewer epochs
    assert Selection([0.5, 0.7], "accuracy", 1.0, initial=0.6).best_epoch == 2
    assert Selection([0.5, 0.7, 0.7], "accuracy", 1.0).best_epoch == 2  # without a start: from 1
    assert Selection.from_dict(sel.to_dict()) == sel

    data = linear_blobs(seed=1)
    cfg = Config.from_sources(None, PROBE)
    g = late_fusion(data, cfg)
    chosen = select_epochs(g, data, cfg)
    assert chosen.initial == pytest.approx(choose_C(data, g.linear, cfg.seed)[1])
    assert chosen.best_score >= chosen.initial
    r = train(g, data, cfg, progress=False, selection=Selection([0.0, 0.0, 0.0], "accuracy", 0.0, 0.5))
    assert r.epochs == 0
    probe = linear_probe(data, cfg.seed)
    assert r.test["accuracy"] == pytest.approx(probe["test"]["accuracy"], abs=1 / 90)  # same model, float32


def bmnas_run(tmp_path, seed: int, sets: list[str]) -> tuple[dict, object]:
    """``bmnas run`` on :func:`linear_blobs` written in the generic format; metrics.json and the run dir."""
    data = linear_blobs(seed=seed)
    root = tmp_path / "d"
    root.mkdir()
    for s, sp in data.splits.items():
        np.savez(root / f"{s}.npz", label=sp.labels, **{k: v[:, 0, :] for k, v in sp.features.items()})
    out = tmp_path / "run"
    sets = ["search.epochs=2", "search.rerank=2", "search.batch_size=32", *sets]
    args = [
        "run",
        "--data",
        str(root),
        "--out",
        str(out),
        "--quiet",
        *[a for s in sets for a in ("--set", s)],
    ]
    assert main(args) == 0
    return json.loads((out / "metrics.json").read_text()), out


def test_cli_run_with_probe_init_never_scores_below_the_probe_on_val(tmp_path, capsys):
    m, _ = bmnas_run(tmp_path, 2, PROBE)
    probe_val = m["baselines"]["linear_probe"]["val"]
    assert m["val"] >= probe_val
    assert m["baselines"]["late_fusion"]["val"] >= probe_val
    assert "linear_probe" in capsys.readouterr().out


# -- k-fold selection (train.select_folds) -----------------------------------------------------


def test_kfold_partitions_train_and_val_and_is_shared_across_calls():
    data = linear_blobs(n=(100, 50, 30))
    folds = kfold(data, 3, seed=0)
    assert kfold(data, 3, seed=0) is folds  # memoised: every network of a run sees the same folds
    assert [len(f["val"]) for f in folds] == [50, 50, 50]
    assert all(len(f["train"]) == 100 for f in folds) and all(f["test"] is data["test"] for f in folds)
    pool = np.concatenate([data["train"].features["a.last"], data["val"].features["a.last"]])
    held = np.concatenate([f["val"].features["a.last"] for f in folds])
    assert sorted(map(tuple, held[:, 0])) == sorted(map(tuple, pool[:, 0]))  # each row held out once
    for f in folds:
        rows = {tuple(r) for r in f["train"].features["a.last"][:, 0]}
        assert not rows & {tuple(r) for r in f["val"].features["a.last"][:, 0]}
    assert kfold(data, 3, seed=1)[0]["val"].labels.tolist() != folds[0]["val"].labels.tolist()


def test_select_epochs_with_folds_is_the_mean_curve_of_the_folds():
    data = linear_blobs(seed=3)
    cfg = Config.from_sources(None, [*RANDOM, "train.select_folds=3"])  # the later value wins
    g = late_fusion(data, cfg)
    sel = select_epochs(g, data, cfg)
    one = Config.from_sources(None, RANDOM)
    per_fold = [select_epochs(g, d, one).curve for d in kfold(data, 3, cfg.seed)]
    assert sel.folds == 3 and len(sel.curve) == 3
    assert sel.curve == pytest.approx(np.mean(per_fold, axis=0).tolist())
    assert sel.best_epoch == int(np.argmax(sel.curve)) + 1


def test_cli_run_with_folds_reports_cross_validated_val_scores(tmp_path):
    m, out = bmnas_run(tmp_path, 4, [*RANDOM, "train.select_folds=2"])
    saved = json.loads((out / "baseline_late_fusion_selection.json").read_text())
    assert saved["folds"] == 2 and m["baselines"]["late_fusion"]["val"] == pytest.approx(max(saved["curve"]))
    assert [c["folds"] for c in map(json.loads, (out / "rerank.jsonl").read_text().splitlines())] == [2, 2]


def test_probe_init_on_a_multilabel_task_starts_as_one_binary_probe_per_label(tmp_path):
    data = load_generic_dir(write_generic(tmp_path / "g", n=(80, 30, 30), multilabel=True), 4)
    cfg = Config.from_sources(None, [*PROBE, "model.L=4"])
    g = late_fusion(data, cfg)
    model = build_model(g, data, cfg, data["train"]).eval()
    feats, _ = data["val"].batch(slice(None))
    with torch.no_grad():
        out = model(feats).numpy()
    C, _ = choose_C(data, g.linear, cfg.seed)
    x = _design(data["train"], list(g.linear))
    sc = StandardScaler().fit(x)
    ref = _logits(
        _fit(sc.transform(x), data["train"].labels, C, True, 0),
        sc.transform(_design(data["val"], list(g.linear))),
        True,
    )
    assert out.shape == (30, 4) and np.abs(out - ref).max() < 1e-3
