"""``train.batched_folds``: the k folds of a selection trained as one stacked model (engine/batched.py)."""

import copy
import json
import logging

import numpy as np
import pytest
import torch

from bmnas.cli.main import main
from bmnas.core.config import Config
from bmnas.core.data import FeatureData
from bmnas.engine.batched import FoldStack, evaluate_folds, groups_by_size, train_folds_epoch
from bmnas.engine.folds import kfold
from bmnas.engine.loop import (
    AdamSettings,
    build_optimizer,
    cosine_restarts,
    cosine_restarts_rate,
    evaluate,
    train_epoch,
)
from bmnas.engine.rundir import RunDir
from bmnas.features.generic import load_generic_dir
from bmnas.method import train as train_mod
from bmnas.method.train import build_model, select_epochs, with_recipe
from bmnas.space.baselines import baseline, random_genotype
from bmnas.space.ops import register_op
from helpers import FAST, OPS, linear_blobs, write_generic

# dropout 0: the stacked training must equal the one-by-one one; batch 16 over folds of 100 and 101 rows
BASE = [
    "model.C=8",
    "model.L=2",
    "model.dropout=0",
    "train.epochs=3",
    "train.batch_size=16",
    "train.select_folds=3",
    "train.batched_folds=true",
]
SEQUENTIAL = "train.batched_folds=false"


def blobs() -> FeatureData:
    """Train ∪ val of 151 rows: folds of 100, 101, 101."""
    return linear_blobs(n=(100, 51, 30))


def spatial(tmp_path, multilabel: bool) -> FeatureData:
    """Maps, sequences and vectors over two modalities (generic format), 89 + 30 rows in train ∪ val."""
    return load_generic_dir(write_generic(tmp_path / "g", n=(89, 30, 20), multilabel=multilabel), 2)


def every_op(data: FeatureData, cfg: Config):
    """A random genotype over every built-in op (attention, concat_fc, linear_glu, sum, zero)."""
    m = cfg.model
    g = random_genotype(data.specs(), OPS, m.C, m.L, 2, 2, np.random.default_rng(10))
    return with_recipe(g, cfg)


def curves(genotype, data, sets, *more):
    """The selection's mean curve, stacked and one by one, for the same config."""
    stacked = select_epochs(genotype, data, Config.from_sources(None, [*sets, *more]))
    alone = select_epochs(genotype, data, Config.from_sources(None, [*sets, *more, SEQUENTIAL]))
    return stacked, alone


@pytest.mark.parametrize("init", ["random", "probe"])
def test_stacked_folds_give_the_one_by_one_curves_on_vector_features(init):
    data = blobs()
    assert sorted(len(f["train"]) for f in kfold(data, 3, 0)) == [100, 101, 101]  # unequal folds
    cfg = Config.from_sources(None, [*BASE, f"model.linear_init={init}"])
    g = with_recipe(baseline("late_fusion", data.specs(), 8, 2, 2, 0), cfg)
    stacked, alone = curves(g, data, BASE, f"model.linear_init={init}")
    assert stacked.folds == alone.folds == 3
    assert stacked.curve == pytest.approx(alone.curve, abs=1e-5)
    if init == "probe":
        assert stacked.initial is not None and stacked.initial == pytest.approx(alone.initial, abs=1e-9)
    else:
        assert stacked.initial is None and alone.initial is None


@pytest.mark.parametrize("multilabel", [False, True])
def test_stacked_folds_give_the_one_by_one_curves_with_every_op_on_spatial_features(tmp_path, multilabel):
    data = spatial(tmp_path, multilabel)
    sets = [*BASE, "model.linear_init=random", "train.epochs=2"]
    g = every_op(data, Config.from_sources(None, sets))
    assert {s.op for c in g.cells for s in c.steps} >= {"attention", "concat_fc", "linear_glu"}
    stacked, alone = curves(g, data, sets)
    assert stacked.curve == pytest.approx(alone.curve, abs=1e-5)


def test_one_stacked_epoch_trains_each_fold_as_its_own_fit(tmp_path):
    """Weights, BatchNorm statistics and val losses after an epoch: the k networks trained apart."""
    data = spatial(tmp_path, multilabel=False)
    cfg = Config.from_sources(None, [*BASE, "model.linear_init=random"])
    g = every_op(data, cfg)
    folds = kfold(data, 3, 0)
    models = [build_model(g, d, cfg, d["train"]) for d in folds]
    apart = [copy.deepcopy(m) for m in models]
    stack = FoldStack(models)
    opt = build_optimizer(stack.parameters(), AdamSettings(1e-2, 1e-3))
    rng = np.random.default_rng(0)
    # batches of 16 with a last one of 10 or 11 rows: the folds are grouped by batch size
    batches = [np.array_split(rng.permutation(len(d["train"])), [16, 32, 48, 64]) for d in folds]
    assert groups_by_size([len(b[-1]) for b in batches]) in ([[0], [1, 2]], [[0, 1], [2]], [[0, 2], [1]])
    losses = train_folds_epoch(stack, batches, [d["train"].batch for d in folds], data.task, opt)
    for m, b, d, loss in zip(apart, batches, folds, losses, strict=True):
        own = build_optimizer(m.parameters(), AdamSettings(1e-2, 1e-3))
        assert train_epoch(m, b, d["train"].batch, data.task, own).rows == pytest.approx(loss, rel=1e-5)
    trained = [copy.deepcopy(m) for m in models]
    stack.unstack(trained)
    for mine, theirs in zip(trained, apart, strict=True):
        for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values(), strict=True):
            if name.endswith(
                "fc.bias"
            ):  # followed by BatchNorm: its gradient is float noise, Adam's step is not
                continue
            assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    scores = evaluate_folds(stack, [d["val"] for d in folds], data.task)
    for s, m, d in zip(scores, apart, folds, strict=True):
        assert s["loss"] == pytest.approx(evaluate(m, d["val"], data.task)["loss"], rel=1e-5)


def test_stacked_folds_with_dropout_are_reproducible_and_draw_a_mask_per_fold():
    data = blobs()
    sets = ["model.C=8", "model.L=2", "model.dropout=0.3", "train.epochs=2", "train.batch_size=16", BASE[-1]]
    cfg = Config.from_sources(None, [*sets, "model.linear_init=random", "train.modality_dropout=0.3"])
    g = with_recipe(baseline("late_fusion", data.specs(), 8, 2, 2, 0), cfg)
    first, again = select_epochs(g, data, cfg), select_epochs(g, data, cfg)
    assert first.curve == again.curve  # seeded: the same masks on every call
    # the k folds' networks start alike; with independent dropout masks they see different noise
    stack = FoldStack([build_model(g, data, cfg, data["train"]) for _ in range(3)])
    feats, _ = data["train"].batch(np.arange(16))
    same = {n: f.expand(3, *f.shape) for n, f in feats.items()}
    quiet = stack.eval()(same)
    assert torch.allclose(quiet[0], quiet[1], atol=1e-6)
    noisy = stack.train()(same)
    assert float((noisy[0] - noisy[1]).abs().max().detach()) > 0.1


def test_a_killed_stacked_selection_resumes_to_the_same_curve(tmp_path, monkeypatch):
    data = blobs()
    cfg = Config.from_sources(
        None, [*BASE, "model.linear_init=random", "model.dropout=0.2", "train.epochs=4"]
    )
    g = with_recipe(baseline("late_fusion", data.specs(), 8, 2, 2, 0), cfg)
    whole = select_epochs(g, data, cfg, run=RunDir(tmp_path / "a"), stage="select_train")
    run = RunDir(tmp_path / "b")
    real, calls = train_mod.evaluate_folds, []

    def killed_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate_folds", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        select_epochs(g, data, cfg, run=run, stage="select_train")
    monkeypatch.setattr(train_mod, "evaluate_folds", real)
    assert len(run.read_history("select_train_history.jsonl")) == 2
    resumed = select_epochs(g, data, cfg, run=run, stage="select_train")
    assert resumed.curve == whole.curve  # dropout on: the RNGs were restored too
    assert len(run.read_history("select_train_history.jsonl")) == 4


@register_op("test_branchy")
class Branchy(torch.nn.Module):
    """``x + y`` when the batch's mean is positive, else ``x − y``: Python control flow on a value."""

    def __init__(self, C: int, L: int, dropout: float = 0.0):
        super().__init__()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y if float(x.mean()) > 0 else x - y


def test_a_network_vmap_cannot_run_trains_fold_by_fold_and_says_why(caplog):
    data = blobs()
    sets = [*BASE, "model.linear_init=random"]
    cfg = Config.from_sources(None, sets)
    g = random_genotype(data.specs(), ["test_branchy"], 8, 2, 1, 1, np.random.default_rng(0))
    with caplog.at_level(logging.INFO, logger="bmnas.method.train"):
        sel = select_epochs(g, data, cfg)
    assert "training the 3 folds one by one: the network does not run under torch.func.vmap" in caplog.text
    assert sel.curve == select_epochs(g, data, Config.from_sources(None, [*sets, SEQUENTIAL])).curve


def test_cli_train_with_stacked_folds_reports_the_one_by_one_metrics_and_checkpoints(tmp_path):
    root = write_generic(tmp_path / "d", n=(61, 20, 20))
    data = load_generic_dir(root, 4)
    genotype = random_genotype(data.specs(), OPS, 8, 4, 2, 2, np.random.default_rng(10))
    genotype.save(tmp_path / "g.json")
    sets = ["model.dropout=0", "train.select_folds=3"]
    metrics = {}
    for on in ("true", "false"):
        out = tmp_path / on
        args = [*FAST, *[a for s in [*sets, f"train.batched_folds={on}"] for a in ("--set", s)]]
        assert (
            main(
                [
                    "train",
                    "--data",
                    str(root),
                    "--out",
                    str(out),
                    "--genotype",
                    str(tmp_path / "g.json"),
                    *args,
                ]
            )
            == 0
        )
        metrics[on] = json.loads((out / "metrics.json").read_text())
    assert (tmp_path / "true" / "select_train.ckpt.pt").is_file()  # the stacked selection, per epoch
    assert len((tmp_path / "true" / "select_train_history.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "false" / "select_train.ckpt.pt").exists()
    assert metrics["true"]["val"] == pytest.approx(metrics["false"]["val"], abs=1e-9)
    assert metrics["true"]["epochs"] == metrics["false"]["epochs"]
    assert metrics["true"]["test"] == pytest.approx(metrics["false"]["test"], abs=1e-5)


@pytest.mark.parametrize(("period", "mult"), [(7, 2), (5, 1), (3, 3), (1, 2)])
def test_the_learning_rate_as_a_tensor_is_the_schedulers(period, mult):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    sched = cosine_restarts(opt, period, 1, mult, 1e-5)
    expected = []
    for _ in range(400):
        expected.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    got = cosine_restarts_rate(torch.arange(400), 1e-2, period, mult, 1e-5)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-15)
