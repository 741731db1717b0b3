"""Robustness table (missing modalities, noise) of a run's networks, and modality dropout."""

import csv
import json

import numpy as np
import pytest
import torch

from bmnas.cli.main import main
from bmnas.core.data import FeatureSplit
from bmnas.engine.augment import drop_modalities
from bmnas.serve.robustness import conditions, perturb, train_stats
from helpers import make_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("robust"))


def test_robustness_table_numbers(trained, tmp_path, capsys):
    data, run = trained
    out = tmp_path / "rob"
    assert main(["robustness", str(run), "--out", str(out), "--quiet", "--data", str(data)]) == 0
    assert "| method (accuracy) |" in capsys.readouterr().out
    rows = json.loads((out / "robustness.json").read_text())
    table = {(r["method"], r["condition"]): r["accuracy"] for r in rows}
    conds = conditions(["image", "audio"])
    assert conds == [
        "clean",
        "missing:image:zeros",
        "missing:image:mean",
        "missing:audio:zeros",
        "missing:audio:mean",
        "noise:0.1",
        "noise:0.5",
        "noise:1",
    ]
    metrics = json.loads((run / "metrics.json").read_text())
    # every baseline with a trained network: a genotype checkpoint, or the probe's linear_probe.pt
    trained_baselines = [
        b
        for b in metrics["baselines"]
        if (run / f"baseline_{b.replace(':', '_')}.ckpt.pt").exists() or (run / f"{b}.pt").exists()
    ]
    assert {"unimodal:image", "unimodal:audio", "late_fusion", "linear_probe"} <= set(trained_baselines)
    methods = ["searched", *trained_baselines]
    assert {m for m, _ in table} == set(methods)
    assert {c for _, c in table} == set(conds)
    # clean equals each network's own test metric of the run
    assert table["searched", "clean"] == metrics["test"]["accuracy"]
    for name in trained_baselines:
        assert table[name, "clean"] == metrics["baselines"][name]["test"]["accuracy"], name
    # a network that does not read a modality is unaffected by its absence
    for c in ("missing:audio:zeros", "missing:audio:mean"):
        assert table["unimodal:image", c] == table["unimodal:image", "clean"]
    # missing image (zeros) for the image-only network = predicting on a zeroed .npz
    arrays = dict(np.load(data / "test.npz"))
    zeroed = {k: (np.zeros_like(v) if k.startswith("image.") else v) for k, v in arrays.items()}
    np.savez(tmp_path / "zeroed.npz", **zeroed)
    p = tmp_path / "p.csv"
    args = ["predict", str(run), "--stage", "baseline_unimodal_image", "--data", str(tmp_path / "zeroed.npz")]
    assert main([*args, "--out", str(p)]) == 0
    assert (
        json.loads((tmp_path / "p.metrics.json").read_text())["accuracy"]
        == table["unimodal:image", "missing:image:zeros"]
    )
    with (out / "robustness.csv").open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["method"] for r in csv_rows] == list(dict.fromkeys(r["method"] for r in rows))
    assert float(csv_rows[0]["noise:0.5"]) == table[csv_rows[0]["method"], "noise:0.5"]
    assert (out / "robustness.md").read_text().count("\n") == 2 + len(csv_rows)
    assert (out / "robustness.png").stat().st_size > 1000
    # the run's own data by default: the same table
    assert main(["robustness", str(run), "--out", str(tmp_path / "rob2"), "--quiet"]) == 0
    assert json.loads((tmp_path / "rob2" / "robustness.json").read_text()) == rows


def test_perturb_uses_train_statistics():
    rng = np.random.default_rng(0)
    train = FeatureSplit(
        {
            "a.x": (rng.normal(size=(4000, 3, 2)) * [2.0, 0.5] + [1.0, -3.0]).astype(np.float32),
            "b.y": rng.normal(size=(4000, 1, 5)).astype(np.float32),
        },
        np.zeros(4000, dtype=np.int64),
    )
    stats = train_stats(train)
    np.testing.assert_allclose(stats["a.x"][1], [2.0, 0.5], rtol=0.03)
    feats = {k: v[:2000] for k, v in train.features.items()}
    mean = perturb(feats, "missing:a:mean", stats)
    np.testing.assert_array_equal(mean["a.x"], np.broadcast_to(stats["a.x"][0], (2000, 3, 2)))
    assert mean["b.y"] is feats["b.y"]
    assert not perturb(feats, "missing:b:zeros", stats)["b.y"].any()
    noisy = perturb(feats, "noise:0.5", stats, seed=1)
    diff = (noisy["a.x"] - feats["a.x"]).reshape(-1, 2)
    np.testing.assert_allclose(diff.std(axis=0), 0.5 * stats["a.x"][1], rtol=0.05)
    np.testing.assert_array_equal(perturb(feats, "noise:0.5", stats, seed=1)["a.x"], noisy["a.x"])
    with pytest.raises(ValueError, match="unknown condition"):
        perturb(feats, "blur:1", stats)


def batch(B=20000):
    g = torch.Generator().manual_seed(0)
    return {
        "image.conv": torch.randn(B, 4, 3, generator=g) + 5.0,
        "image.fc": torch.randn(B, 1, 6, generator=g) + 5.0,
        "audio.fc": torch.randn(B, 1, 2, generator=g) + 5.0,
    }


def test_drop_modalities_rates_and_invariants():
    feats = batch()
    before = {k: v.clone() for k, v in feats.items()}
    out = drop_modalities(feats, 0.3, torch.Generator().manual_seed(1))
    for k in feats:
        assert torch.equal(feats[k], before[k])  # inputs untouched
    img = (out["image.conv"] == 0).flatten(1).all(1)
    aud = (out["audio.fc"] == 0).flatten(1).all(1)
    # a modality's features go together, kept samples are unchanged, no sample loses everything
    assert torch.equal(img, (out["image.fc"] == 0).flatten(1).all(1))
    assert torch.equal(out["image.conv"][~img], feats["image.conv"][~img])
    assert not (img & aud).any()
    # P(drop m) = p − p²/2: both drawn (p²) keeps one of the two at random
    expected = 0.3 - 0.3**2 / 2
    assert abs(img.float().mean().item() - expected) < 0.01
    assert abs(aud.float().mean().item() - expected) < 0.01
    again = drop_modalities(feats, 0.3, torch.Generator().manual_seed(1))
    assert all(torch.equal(again[k], out[k]) for k in out)


def test_drop_modalities_edge_cases():
    feats = batch(50)
    same = drop_modalities(feats, 0.0)
    assert all(same[k] is feats[k] for k in feats)
    one = {k: v for k, v in feats.items() if k.startswith("image.")}
    assert all(torch.equal(v, one[k]) for k, v in drop_modalities(one, 0.9).items())
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        drop_modalities(feats, 1.0)
