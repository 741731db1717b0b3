"""Search-quality machinery: derivation rules, relaxations, warm-up, arch split, re-ranking,
collapse diagnostics, the linear probe and the recommended network."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import bmnas.method.rerank as rerank_mod
import bmnas.method.train as trainer
from bmnas.core.config import Config, ConfigError
from bmnas.core.genotype import PAPER_RULES, DeriveRules, StepGene
from bmnas.engine.loop import split_batches
from bmnas.engine.rundir import RunDir
from bmnas.features.synthetic import planted_interaction
from bmnas.method.bilevel import build_hypernet
from bmnas.method.probe import linear_probe
from bmnas.method.rerank import network_key, same_networks
from bmnas.method.search import arch_diagnostics, search, split_for_search, warn_if_undecided
from bmnas.report.summary import recommend
from bmnas.space.derive import derive
from bmnas.space.hypernet import HyperNet, edge_weights
from helpers import FEATS, OPS

SMALL = [
    "model.C=8",
    "model.L=4",
    "model.cells=2",
    "model.steps=2",
    "search.epochs=3",
    "search.batch_size=64",
    "train.epochs=2",
]


def one_hot(n, i, hi=0.9, lo=0.1):
    w = np.full(n, lo)
    w[i] = hi
    return w


# -- derivation rules ------------------------------------------------------------------------


def test_distinct_steps_reads_two_different_states():
    alpha = [np.stack([one_hot(4, 0), one_hot(4, 2)])]
    # both slots of step 1 prefer y (index 1); x is second best for slot 2
    beta = [[np.stack([np.array([0.3, 0.9]), np.array([0.6, 0.8])])]]
    gamma = [np.array([[0, 9.0, 0, 0, 0]])]
    paper = derive(alpha, beta, gamma, FEATS, OPS, C=8, L=4, rules=PAPER_RULES)
    ours = derive(alpha, beta, gamma, FEATS, OPS, C=8, L=4, rules=replace(PAPER_RULES, distinct_steps=True))
    assert paper.cells[0].steps == (StepGene("sum", ("y", "y")),)
    # argmax_{i≠j} β_x(i)·β_y(j): (x, y) scores 0.3·0.8 = 0.24 < (y, x) 0.9·0.6 = 0.54
    assert ours.cells[0].steps == (StepGene("sum", ("y", "x")),)


def test_no_zero_output_takes_the_best_other_op_for_the_output_step_only():
    alpha = [np.stack([one_hot(4, 0), one_hot(4, 2)])]
    beta = [[np.full((2, 2), 0.5), np.full((2, 3), 0.5)]]
    gamma = [np.array([[9.0, 0, 0, 1.0, 0], [9.0, 0, 2.0, 0, 0]])]  # zero wins both steps
    paper = derive(alpha, beta, gamma, FEATS, OPS, C=8, L=4, rules=PAPER_RULES)
    ours = derive(alpha, beta, gamma, FEATS, OPS, C=8, L=4, rules=replace(PAPER_RULES, zero_output=False))
    assert [s.op for s in paper.cells[0].steps] == ["zero", "zero"]
    # step 1 is not the Cell's output (inner_multiplier 1): it may stay zero; step 2 becomes attention
    assert [s.op for s in ours.cells[0].steps] == ["zero", "attention"]


def test_cross_modal_rule_refuses_two_features_of_one_modality():
    alpha = [np.stack([one_hot(4, 2), one_hot(4, 3)]), np.stack([one_hot(5, 0), one_hot(5, 1)])]
    beta = [[np.full((2, 2), 0.5)]] * 2
    gamma = [np.array([[0, 9.0, 0, 0, 0]])] * 2
    paper = derive(alpha, beta, gamma, FEATS, OPS, C=8, L=4, rules=PAPER_RULES)
    ours = derive(alpha, beta, gamma, FEATS, OPS, C=8, L=4, rules=replace(PAPER_RULES, cross_modal=True))
    assert [c.inputs for c in paper.cells] == [("b.f1", "b.f2"), ("a.f1", "a.f2")]
    # every cross-modal pair scores 0.9 · 0.1: ties go to the lowest (i, j) in row-major order
    assert [c.inputs for c in ours.cells] == [("a.f1", "b.f2"), ("a.f1", "b.f1")]


# -- relaxation, diagnostics ----------------------------------------------------------------


def test_softmax_relaxation_makes_predecessors_compete():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [1.0, 5.0]]])
    w = edge_weights(logits, "softmax")
    assert torch.allclose(w.sum(-1), torch.ones(1))
    assert torch.allclose(w, torch.softmax(torch.tensor([[2.0, 0.0, 1.0]]), -1))
    gate = edge_weights(logits, "gate")
    assert torch.allclose(gate, torch.sigmoid(torch.tensor([[2.0, 0.0, -4.0]])))


def test_softmax_hypernet_trains_and_derives():
    data = planted_interaction(n=200, L=4, seed=0)
    cfg = Config.from_sources(None, SMALL + ["model.relaxation=softmax"])
    r = search(data, cfg, progress=False)
    assert r.hypernet.relaxation == "softmax"
    for slot_weights in r.history[-1]["arch"]["alpha"][1]:
        assert sum(slot_weights) == pytest.approx(1.0)  # Cell 2: 6 features + cell1, summing to 1


def test_diagnostics_entropy_is_one_when_uniform_and_small_when_decided():
    net = HyperNet(FEATS, 3, C=8, L=4, num_cells=2, num_steps=2, ops=OPS)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.zero_()
    d = arch_diagnostics(net)
    assert d["entropy"] == {
        "alpha": pytest.approx(1.0),
        "beta": pytest.approx(1.0),
        "gamma": pytest.approx(1.0),
    }
    assert d["op_share"] == {o: pytest.approx(0.2) for o in OPS}
    assert d["alpha_spread"] == pytest.approx(0.0)
    with torch.no_grad():
        for g in net.arch.gamma:
            g[:, 1] = 20.0
    d = arch_diagnostics(net)
    assert d["entropy"]["gamma"] < 0.01 and d["op_share"]["sum"] > 0.99


def test_search_warns_when_the_upper_level_did_not_move(caplog):
    data = planted_interaction(n=200, L=4, seed=0)
    cfg = Config.from_sources(None, SMALL + ["search.arch_lr=1e-9"])
    search(data, cfg, progress=False)
    assert "did not decide which features to fuse" in caplog.text


@pytest.mark.parametrize(
    ("last", "overrides", "says"),
    [
        ({"epoch": 1}, ["search.rerank=8"], "after 1 epoch the weights"),
        ({"epoch": 1}, ["search.rerank=8"], "chosen among the 8 re-ranked candidates"),
        ({"epoch": 4}, ["search.rerank=0", "search.warmup_epochs=3"], "after 4 epochs (1 after the 3-epoch"),
        ({"epoch": 4}, ["search.rerank=0"], "or set search.rerank > 0 (e.g. 8)"),
    ],
)
def test_the_undecided_warning_says_what_fits_the_config(caplog, last, overrides, says):
    cfg = Config.from_sources(None, overrides).search
    warn_if_undecided({**last, "alpha_spread": 0.001}, cfg)
    assert says in caplog.text
    assert ("set search.rerank > 0" in caplog.text) == (cfg.rerank == 0)
    assert "1 epochs" not in caplog.text
    caplog.clear()
    warn_if_undecided({**last, "alpha_spread": 0.2}, cfg)  # decided: no warning
    assert caplog.text == ""


# -- warm-up and arch split ------------------------------------------------------------------


def test_warmup_keeps_arch_frozen_and_best_epoch_after_it():
    data = planted_interaction(n=200, L=4, seed=0)
    cfg = Config.from_sources(None, SMALL + ["search.warmup_epochs=2"])
    r = search(data, cfg, progress=False, stop_after=2)
    torch.manual_seed(cfg.seed)
    init = HyperNet(r.hypernet.features, 2, C=8, L=4, num_cells=2, num_steps=2, ops=r.hypernet.ops)
    for a, b in zip(r.hypernet.arch_parameters(), init.arch_parameters(), strict=True):
        assert torch.equal(a, b)  # two warm-up epochs: α, β, γ exactly at their initialisation
    full = search(data, cfg, progress=False)
    assert full.best_epoch == 3 and [h["best"] for h in full.history] == [False, False, True]
    # one epoch of architecture steps after the warm-up: Adam moves an entry by about lr a step (its
    # first step by lr wherever the gradient is not ~0). Not "max |α| grew": its largest entry may move
    # either way (on the CPU it does so under precision=bf16: 2.32e-3 -> 1.89e-3).
    lr, steps = cfg.search.arch_lr, len(split_batches(np.arange(len(data["train"])), 64))
    moved = (full.hypernet.arch.alpha[0].detach() - init.arch.alpha[0]).abs().max().item()
    assert 0.9 * lr < moved <= 1.5 * lr * steps  # fp32 CPU: 9.08e-4 for 3 steps of 3e-4


def test_arch_split_holds_out_a_share_of_train_and_leaves_val_alone():
    cfg = Config.from_sources(None, ["search.arch_split=0.25"])
    w, a, src = split_for_search(100, 40, cfg)
    assert src == "train" and len(a) == 25 and len(w) == 75
    assert set(w) | set(a) == set(range(100)) and not set(w) & set(a)
    w0, a0, src0 = split_for_search(100, 40, Config())
    assert src0 == "val" and len(w0) == 100 and list(a0) == list(range(40))
    with pytest.raises(ConfigError, match="search.arch_split"):
        Config.from_sources(None, ["search.arch_split=1.0"])


# -- re-ranking --------------------------------------------------------------------------------


def test_rerank_trains_candidates_keeps_the_best_on_val_and_resumes(tmp_path, monkeypatch):
    data = planted_interaction(n=300, L=4, seed=1)
    cfg = Config.from_sources(None, SMALL + ["search.rerank=3", "search.rerank_epochs=2"])
    r = search(data, cfg, RunDir(tmp_path), progress=False)
    assert len(r.candidates) == 3
    assert [c["source"] for c in r.candidates][0] == "argmax"
    assert len({json.dumps(c["genotype"], sort_keys=True) for c in r.candidates}) == 3
    best = max(r.candidates, key=lambda c: (c["val"], -c["rank"]))
    assert r.genotype.to_dict() == best["genotype"]
    for c in r.candidates:
        assert c["val"] == max(c["curve"]) and len(c["curve"]) == 2
    assert json.loads((tmp_path / "genotype.json").read_text()) == best["genotype"]
    # the evaluation stage reuses the chosen candidate's selection phase
    folds = cfg.train.select_folds
    assert folds == 3 and all(c["folds"] == folds for c in r.candidates)  # scored by 3-fold CV
    assert r.selection(2, folds).curve == best["curve"]
    assert r.selection(5, folds) is None and r.selection(2, 0) is None  # another recipe: trained anew
    # resumed: no candidate is trained again
    calls = []
    real = trainer.select_epochs
    monkeypatch.setattr(trainer, "select_epochs", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = search(data, cfg, RunDir(tmp_path), progress=False)
    assert calls == [] and again.genotype == r.genotype


def _with_first_step(g, op: str, inputs: tuple[str, str]):
    cell = replace(g.cells[0], steps=(StepGene(op, inputs), *g.cells[0].steps[1:]))
    return replace(g, cells=(cell, *g.cells[1:]))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_candidate_that_is_the_same_network_is_not_trained_again(tmp_path, monkeypatch, workers):
    data = planted_interaction(n=300, L=4, seed=1)
    sets = ["search.rerank=4", "search.rerank_epochs=2", "train.select_folds=2", f"workers={workers}"]
    cfg = Config.from_sources(None, SMALL + sets)
    g = build_hypernet(data, cfg).genotype(DeriveRules.of(cfg.search))
    a, a_swapped = _with_first_step(g, "sum", ("x", "y")), _with_first_step(g, "sum", ("y", "x"))
    b, b_swapped = _with_first_step(g, "concat_fc", ("x", "y")), _with_first_step(g, "concat_fc", ("y", "x"))
    assert network_key(a) == network_key(a_swapped) and a != a_swapped
    assert network_key(b) != network_key(b_swapped)  # concat_fc's weights see x and y apart
    cands = [("argmax", a), ("best epoch 2", a_swapped), ("sample 1", b), ("sample 2", b_swapped)]
    assert same_networks([c for _, c in cands]) == {1: 0}
    monkeypatch.setattr(rerank_mod, "candidates", lambda *args: cands)
    trained = []
    real = rerank_mod.select_epochs
    monkeypatch.setattr(rerank_mod, "select_epochs", lambda g, *a, **k: trained.append(g) or real(g, *a, **k))
    rows = rerank_mod.rerank(None, {"history": []}, data, cfg, RunDir(tmp_path), progress=False)
    assert [r["rank"] for r in rows] == [0, 1, 2, 3] and [r["source"] for r in rows][1] == "best epoch 2"
    twin = rows[1]
    assert twin["same_as"] == 0 and twin["seconds"] == 0.0 and twin["genotype"] == a_swapped.to_dict()
    assert (twin["val"], twin["curve"]) == (rows[0]["val"], rows[0]["curve"])
    assert all("same_as" not in r for r in (rows[0], rows[2], rows[3]))
    if workers == 1:
        assert trained == [a, b, b_swapped]
    # training the twin gives exactly the copied numbers (what makes the copy right)
    alone = trainer.select_epochs(a_swapped, data, cfg, 2, progress=False)
    assert alone.curve == rows[0]["curve"] and alone.best_epoch == rows[0]["best_epoch"]
    lines = [json.loads(x) for x in (tmp_path / "rerank.jsonl").read_text().splitlines()]
    assert sorted(r["rank"] for r in lines) == [0, 1, 2, 3]
    trained.clear()  # resumed: nothing trained, every row (the twin's too) read back
    again = rerank_mod.rerank(None, {"history": []}, data, cfg, RunDir(tmp_path), progress=False)
    assert trained == [] and again == rows


# -- linear probe and recommendation --------------------------------------------------------------


def test_linear_probe_matches_scikit_learn_with_the_chosen_C():
    data = planted_interaction(n=400, L=4, seed=2)
    r = linear_probe(data, seed=0)
    names = r["features"]
    assert names == ["a.f3", "b.f3"]  # the last feature of each modality

    def x(split):
        return np.concatenate([data[split].features[n].reshape(len(data[split]), -1) for n in names], 1)

    fit_x = np.concatenate([x("train"), x("val")])
    fit_y = np.concatenate([data["train"].labels, data["val"].labels])
    sc = StandardScaler().fit(fit_x)
    ref = LogisticRegression(C=r["C"], max_iter=500, random_state=0).fit(sc.transform(fit_x), fit_y)
    acc = float((ref.predict(sc.transform(x("test"))) == data["test"].labels).mean())
    assert r["test"]["accuracy"] == pytest.approx(acc)
    assert r["params"]["total"] == (2 * 4 * 8 + 1) * 1  # binary task: one weight vector + bias


def test_recommend_takes_the_best_fusion_on_val_never_below_late_fusion():
    rows = {
        "unimodal:a": {"val": 0.99},  # not a fusion: never recommended
        "late_fusion": {"val": 0.80},
        "sum": {"val": 0.82},
        "concat_fc": {"val": 0.81},
        "linear_probe": {"val": 0.95},  # a saved network too: a contender
        "searched": {"val": 0.79},
    }
    best, reason = recommend(rows, "accuracy")
    assert best == "linear_probe" and "highest val accuracy (0.9500)" in reason and "sum 0.8200" in reason
    rows["linear_probe"]["val"] = 0.82  # a tie goes to a fusion (table order)
    best, reason = recommend(rows, "accuracy")
    assert best == "sum" and "highest val accuracy (0.8200)" in reason and "searched 0.7900" in reason
    rows["searched"]["val"] = 0.82  # a tie goes to the searched network
    assert recommend(rows, "accuracy")[0] == "searched"
    best, reason = recommend(rows, "accuracy", searched_saw_val=True)
    assert best == "searched" and "its architecture was chosen on val" in reason
    best, reason = recommend(rows, "accuracy", scored_by="3-fold CV (train + val)")
    assert "highest 3-fold CV (train + val) accuracy (0.8200)" in reason and "optimistic" not in reason
    rows["searched"]["val"] = 0.5
    rows["sum"]["val"] = rows["concat_fc"]["val"] = rows["linear_probe"]["val"] = 0.7
    assert recommend(rows, "accuracy")[0] == "late_fusion"
