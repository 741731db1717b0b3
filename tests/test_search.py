"""The bilevel search: it finds a planted pair, records its history, and resumes exactly."""

import json

import pytest

from bmnas.core.config import Config
from bmnas.engine.rundir import RunDir, RunError
from bmnas.features.synthetic import planted_interaction
from bmnas.method.search import search
from bmnas.method.train import train
from helpers import PLANTED


@pytest.mark.parametrize("seed", [0, 1])
def test_search_selects_the_planted_pair(seed):
    data = planted_interaction(n=3000, L=4, seed=seed)
    cfg = Config.from_sources(None, PLANTED + [f"seed={seed}"])
    result = search(data, cfg, progress=False)
    assert set(result.genotype.cells[0].inputs) == {"a.f2", "b.f1"}
    w = result.history[-1]["arch"]["alpha"][0]  # identity weights (slot, predecessor)
    names = [f["name"] for f in result.history[-1]["genotype"]["features"]]
    for slot in w:
        planted = sorted(slot[names.index(n)] for n in ("a.f2", "b.f1"))
        noise = max(slot[i] for i, n in enumerate(names) if n not in ("a.f2", "b.f1"))
        assert planted[-1] > noise  # the best edge of each slot is a planted feature


SMALL = [
    "model.C=8",
    "model.L=4",
    "model.cells=2",
    "model.steps=2",
    "search.epochs=4",
    "search.batch_size=64",
    "train.epochs=3",
]


def test_resume_after_kill_gives_the_same_result(tmp_path):
    data = planted_interaction(n=600, L=4, seed=3)
    cfg = Config.from_sources(None, SMALL)
    straight = search(data, cfg, RunDir(tmp_path / "a"), progress=False)

    run = RunDir(tmp_path / "b")
    first = search(data, cfg, run, progress=False, stop_after=2)  # "killed" after epoch 2
    assert len(first.history) == 2 and not run.genotype_path.exists()
    assert len(run.read_history()) == 2
    resumed = search(data, cfg, RunDir(tmp_path / "b"), progress=False)

    assert resumed.genotype == straight.genotype
    assert [h["val"]["loss"] for h in resumed.history] == [h["val"]["loss"] for h in straight.history]
    assert [h["arch"] for h in resumed.history] == [h["arch"] for h in straight.history]
    assert json.loads(run.genotype_path.read_text()) == straight.genotype.to_dict()
    assert len(run.read_history()) == 4


def test_history_records_softmaxed_weights_and_genotypes(tmp_path):
    data = planted_interaction(n=400, L=4, seed=0)
    cfg = Config.from_sources(None, SMALL + ["search.rerank=0"])  # the paper's choice: the best epoch
    result = search(data, cfg, RunDir(tmp_path), progress=False)
    rows = RunDir(tmp_path).read_history()
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        g = r["arch"]["gamma"][0][0]
        assert sum(g) == pytest.approx(1.0)
        assert all(0.0 < a < 1.0 for slot in r["arch"]["alpha"][1] for a in slot)
        assert len(r["arch"]["alpha"][1][0]) == 6 + 1  # K features + cell1
        assert set(r["val"]) >= {"loss", "accuracy", "f1_macro"}
    best = max(rows, key=lambda r: r["val"]["accuracy"])
    assert result.best_epoch == min(
        r["epoch"] for r in rows if r["val"]["accuracy"] == best["val"]["accuracy"]
    )
    assert result.genotype.to_dict() == rows[result.best_epoch - 1]["genotype"]


def test_resume_with_another_config_is_refused(tmp_path):
    data = planted_interaction(n=300, L=4, seed=0)
    search(data, Config.from_sources(None, SMALL), RunDir(tmp_path), progress=False, stop_after=1)
    with pytest.raises(RunError, match="model.C: 8 -> 16"):
        search(data, Config.from_sources(None, SMALL + ["model.C=16"]), RunDir(tmp_path), progress=False)


def test_train_resumes_and_reports_final_epoch(tmp_path):
    data = planted_interaction(n=600, L=4, seed=3)
    cfg = Config.from_sources(None, SMALL)
    g = search(data, cfg, progress=False).genotype
    straight = train(g, data, cfg, progress=False)
    run = RunDir(tmp_path)
    train(g, data, cfg, run, progress=False, stop_after=1)
    resumed = train(g, data, cfg, RunDir(tmp_path), progress=False)
    assert resumed.test == straight.test
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    assert len(RunDir(tmp_path).read_history("train_history.jsonl")) == resumed.epochs
    # the refit lasts the epoch count with the best val score of the selection phase (train alone)
    assert len(resumed.val_curve) == 3
    assert resumed.epochs == 1 + max(range(3), key=lambda i: (resumed.val_curve[i], -i))
    assert resumed.val == max(resumed.val_curve)
    assert len(resumed.history) == resumed.epochs
    assert resumed.params["total"] == resumed.params["fusion"] + resumed.params["classifier"]


def test_train_without_selection_runs_the_fixed_epoch_count():
    data = planted_interaction(n=300, L=4, seed=3)
    cfg = Config.from_sources(None, SMALL + ["train.select_epochs=false"])
    g = search(data, Config.from_sources(None, SMALL), progress=False).genotype
    r = train(g, data, cfg, progress=False)
    assert (r.epochs, len(r.history), r.val, r.val_curve) == (3, 3, None, [])
