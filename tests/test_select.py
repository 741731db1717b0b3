"""The upper level's decision: perturbation-based selection (search.select=perturb) and the
architecture learning rate set from the number of architecture steps (search.arch_lr=auto)."""

import json

import numpy as np
import pytest
import torch

from bmnas.cli.main import main
from bmnas.core.config import ARCH_LR_RANGE, ARCH_TRAVEL, Config, ConfigError, auto_arch_lr
from bmnas.core.data import FeatureData, FeatureSplit, TaskInfo
from bmnas.engine.rundir import RunDir
from bmnas.features.synthetic import planted_interaction
from bmnas.method.search import search
from bmnas.method.select import scores_of
from bmnas.space.hypernet import HyperNet, fix_inputs, mask_edge, mask_op
from helpers import FEATS, write_generic

OPS = ("zero", "sum", "linear_glu")


def small_net(relaxation: str, cells: int = 1) -> tuple[HyperNet, dict]:
    torch.manual_seed(0)
    net = HyperNet(
        FEATS, 3, C=6, L=4, num_cells=cells, num_steps=1, ops=OPS, dropout=0.0, relaxation=relaxation
    )
    with torch.no_grad():
        for a in net.arch.alpha:
            a.normal_(0.0, 1.0)  # weights far from uniform, so a masked edge changes the output
    net.eval()
    feats = {f.name: torch.randn(5, f.length, f.channels) for f in FEATS}
    return net, feats


# -- masking one edge ------------------------------------------------------------------------


@pytest.mark.parametrize("relaxation", ["gate", "softmax"])
def test_masked_edge_is_the_hand_mix_without_that_edge(relaxation):
    net, feats = small_net(relaxation)
    w = net.alpha_weights()[0].detach()  # (2 slots, 4 features)
    masked = mask_edge([w], 0, 1, 2, relaxation)[0]  # slot y loses feature b.f1
    expect = w.clone()
    expect[1, 2] = 0.0
    if relaxation == "softmax":  # the other three edges share the slot again
        expect[1] = expect[1] / expect[1].sum()
        assert float(masked[1].sum()) == pytest.approx(1.0)
    torch.testing.assert_close(masked, expect)
    with torch.no_grad():
        P = [p.expand(5, 4, 6) for p in net.project(feats)]  # vectors broadcast over the L positions
        hand = torch.stack([sum(expect[s, i] * P[i] for i in range(4)) for s in range(2)])
        cell = net.cells[0]
        want = net.head([cell.forward_slots(hand, net.arch.betas(0), net.arch.gamma[0])])
        with net.alpha_override([masked]):
            got = net(feats)
        full = net(feats)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (got - full).abs().max() > 1e-3  # the edge mattered: the test could fail
    torch.testing.assert_close(net(feats), full)  # the override ends with its block


def test_masked_op_is_the_mixture_without_that_op():
    net, feats = small_net("gate")
    with torch.no_grad():
        net.arch.gamma[0].copy_(torch.tensor([[0.2, 1.0, -0.5]]))  # zero, sum, linear_glu
    w = [g.softmax(-1).detach() for g in net.arch.gamma]
    masked = mask_op(w, 0, 0, 1)  # step 1 loses `sum`: linear_glu's weight is renormalised
    p = torch.tensor([0.2, 1.0, -0.5]).softmax(0)
    torch.testing.assert_close(masked[0][0], torch.stack([p[0], torch.tensor(0.0), p[2]]) / (p[0] + p[2]))
    with torch.no_grad():
        with net.op_override(masked):
            got = net(feats)
        full = net(feats)
        net.arch.gamma[0].copy_(masked[0].log())  # softmax(log w) = w: the plain forward, that mixture
        want = net(feats)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (got - full).abs().max() > 1e-3


def test_override_refuses_weights_of_the_wrong_shape():
    net, _ = small_net("gate", cells=2)
    with (
        pytest.raises(ValueError, match=r"expected weights of shapes \[\(2, 4\), \(2, 5\)\]"),
        net.alpha_override([torch.ones(2, 4)]),
    ):
        pass


def test_fix_inputs_makes_a_cell_discrete_and_leaves_the_others():
    w = [torch.full((2, 4), 0.5), torch.full((2, 5), 0.5)]
    out = fix_inputs(w, 0, (3, 1))
    assert out[0].tolist() == [[0, 0, 0, 1], [0, 1, 0, 0]]
    assert out[1] is w[1]
    assert fix_inputs([torch.zeros(1, 4)], 0, (0, 2))[0].tolist() == [[1, 0, 1, 0]]


def test_scores_order_pairs_by_the_sum_of_their_deltas():
    delta = np.array([[0.3, -0.1, 0.0], [0.0, 0.25, 0.2]])
    s = scores_of(delta)
    assert s.max() == 1.0 and (s > 0).all()
    pair = np.outer(s[0], s[1])
    np.fill_diagonal(pair, 0)
    assert np.unravel_index(pair.argmax(), pair.shape) == (0, 1)  # 0.3 + 0.25 is the best distinct sum


# -- perturbation selection finds the one informative feature ---------------------------------


def one_informative(n: int = 900, seed: int = 0) -> FeatureData:
    """Two modalities, three features each; only ``b.f2``'s first channel carries the label."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    feats = {
        k: rng.normal(size=(n, 4, 8)).astype(np.float32) for k in ("a.f1", "a.f2", "a.f3", "b.f1", "b.f3")
    }
    signal = rng.normal(size=(n, 4, 8)).astype(np.float32)
    signal[:, :, 0] += 2.0 * (2 * y[:, None] - 1)
    feats["b.f2"] = signal
    cut = (int(0.7 * n), int(0.85 * n))
    parts = {"train": slice(0, cut[0]), "val": slice(cut[0], cut[1]), "test": slice(cut[1], n)}
    splits = {s: FeatureSplit({k: v[sl] for k, v in feats.items()}, y[sl]) for s, sl in parts.items()}
    return FeatureData(splits, TaskInfo("multiclass", 2), name="one-informative")


FROZEN_ALPHA = [
    "model.C=8",
    "model.L=4",
    "model.cells=1",
    "model.steps=1",
    "model.dropout=0.0",
    "search.epochs=3",
    "search.batch_size=64",
    "search.arch_lr=1e-9",  # α stays at its random initialisation: its argmax is noise
    "search.rerank=0",
]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perturbation_selection_reads_the_informative_feature(seed):
    data = one_informative(seed=seed)
    result = search(
        data,
        Config.from_sources(None, FROZEN_ALPHA + ["search.select=perturb", f"seed={seed}"]),
        progress=False,
    )
    assert "b.f2" in result.genotype.cells[0].inputs
    slots = result.perturb["cells"][0]["slots"]
    for slot in slots:  # removing b.f2 hurts most in each slot, by a clear margin
        d = slot["delta"]
        assert max(d, key=d.get) == "b.f2"
        assert d["b.f2"] > 2 * max(abs(v) for k, v in d.items() if k != "b.f2")
    assert result.perturb["cells"][0]["inputs"] == list(result.genotype.cells[0].inputs)


def test_alpha_selection_with_a_frozen_alpha_misses_it():
    """The control: the same searches choosing by α's argmax read b.f2 in at most one of three seeds."""
    reads = [
        "b.f2"
        in search(
            one_informative(seed=s), Config.from_sources(None, FROZEN_ALPHA + [f"seed={s}"]), progress=False
        )
        .genotype.cells[0]
        .inputs
        for s in range(3)
    ]
    assert sum(reads) <= 1


def test_progressive_selection_tunes_a_copy_and_keeps_the_search_hypernet():
    data = planted_interaction(n=400, L=4, seed=0)
    opts = [
        "model.C=8",
        "model.L=4",
        "model.cells=2",
        "search.epochs=2",
        "search.batch_size=64",
        "search.rerank=0",
    ]
    plain = search(data, Config.from_sources(None, opts + ["search.select=perturb"]), progress=False)
    tuned = search(
        data,
        Config.from_sources(None, opts + ["search.select=perturb", "search.select_tune_steps=3"]),
        progress=False,
    )
    # Cell 1 is measured before any tuning, Cell 2 after 3 steps with Cell 1 fixed
    assert tuned.perturb["cells"][0] == plain.perturb["cells"][0]
    assert tuned.perturb["cells"][1]["base_loss"] != plain.perturb["cells"][1]["base_loss"]
    assert tuned.perturb["tune_steps"] == 3
    for a, b in zip(plain.hypernet.state_dict().values(), tuned.hypernet.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_select_ops_takes_the_op_whose_removal_hurts_most():
    data = planted_interaction(n=400, L=4, seed=1)
    opts = ["model.C=8", "model.L=4", "search.epochs=2", "search.batch_size=64", "search.rerank=0"]
    result = search(
        data,
        Config.from_sources(None, opts + ["search.select=perturb", "search.select_ops=true"]),
        progress=False,
    )
    for cell, rec in zip(result.genotype.cells, result.perturb["cells"], strict=True):
        assert [s.op for s in cell.steps] == [max(r["delta"], key=r["delta"].get) for r in rec["ops"]]
        assert all("zero" not in r["delta"] for r in rec["ops"])


def test_perturb_genotype_is_the_first_rerank_candidate():
    data = planted_interaction(n=300, L=4, seed=0)
    cfg = Config.from_sources(
        None,
        ["model.C=8", "model.L=4", "search.epochs=2", "search.batch_size=64", "search.rerank=2"]
        + ["search.select=perturb", "train.epochs=1", "train.select_folds=0"],
    )
    result = search(data, cfg, progress=False)
    assert [c["source"] for c in result.candidates][0] == "perturb"
    assert result.candidates[0]["genotype"] == result.perturb["genotype"]
    assert len(result.candidates) == 2  # the perturb candidate takes one of the k places


# -- search.arch_lr=auto -----------------------------------------------------------------------


def test_auto_arch_lr_keeps_the_travel_constant_and_clips():
    assert auto_arch_lr(800) == pytest.approx(ARCH_TRAVEL / 800)
    assert auto_arch_lr(8 * 100) * 800 == pytest.approx(auto_arch_lr(4 * 200) * 800)
    assert auto_arch_lr(10) == ARCH_LR_RANGE[1]  # few steps: the upper bound
    assert auto_arch_lr(10**6) == ARCH_LR_RANGE[0]  # many steps: never under the paper's rate


def test_auto_arch_lr_is_the_formula_in_the_search():
    data = planted_interaction(n=600, L=4, seed=0)  # 420 train rows / batch 16 = 27 batches
    cfg = Config.from_sources(
        None,
        ["model.C=8", "model.L=4", "search.epochs=5", "search.warmup_epochs=1", "search.batch_size=16"]
        + ["search.arch_lr=auto", "search.rerank=0"],
    )
    result = search(data, cfg, progress=False)
    expected = 2.4 / ((5 - 1) * 27)  # 0.0222, inside the clip range
    assert ARCH_LR_RANGE[0] < expected < ARCH_LR_RANGE[1]
    assert [h["arch_lr"] for h in result.history] == pytest.approx([expected] * 5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("search.arch_lr=fast", "search.arch_lr: must be a number > 0 or 'auto'"),
        ("search.arch_lr=0", "search.arch_lr: must be > 0, got 0.0"),
        ("search.select=best", "search.select: must be one of alpha, perturb, got 'best'"),
        ("search.select_tune_steps=-1", "search.select_tune_steps: must be >= 0"),
        ("search.select_tune_steps=5", "search.select_tune_steps: only applies with search.select=perturb"),
        ("search.select_ops=true", "search.select_ops: only applies with search.select=perturb"),
    ],
)
def test_bad_upper_level_keys_are_refused_clearly(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config.from_sources(None, [override])


def test_auto_and_a_number_both_parse():
    assert Config.from_sources(None, ["search.arch_lr=auto"]).search.arch_lr == "auto"
    assert Config.from_sources(None, ["search.arch_lr=3e-3"]).search.arch_lr == pytest.approx(3e-3)
    assert Config.from_sources(None, []).search.select == "alpha"


# -- resume, and the command line --------------------------------------------------------------


def test_resume_with_perturb_and_auto_is_exact(tmp_path):
    data = planted_interaction(n=500, L=4, seed=3)
    cfg = Config.from_sources(
        None,
        ["model.C=8", "model.L=4", "search.epochs=4", "search.batch_size=64", "search.rerank=0"]
        + ["search.arch_lr=auto", "search.select=perturb", "search.select_tune_steps=2"],
    )
    straight = search(data, cfg, RunDir(tmp_path / "a"), progress=False)
    search(data, cfg, RunDir(tmp_path / "b"), progress=False, stop_after=2)
    assert not (tmp_path / "b" / "perturb.json").exists()  # selection runs once the search is complete
    resumed = search(data, cfg, RunDir(tmp_path / "b"), progress=False)
    assert resumed.genotype == straight.genotype
    assert [h["arch"] for h in resumed.history] == [h["arch"] for h in straight.history]
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert strip(resumed.perturb) == strip(straight.perturb)
    assert strip(json.loads((tmp_path / "b" / "perturb.json").read_text())) == strip(straight.perturb)


def test_cli_search_with_perturb_writes_the_record(tmp_path, capsys):
    write_generic(tmp_path / "d", n=(60, 30, 20))
    out = tmp_path / "run"
    args = ["search", "--data", str(tmp_path / "d"), "--out", str(out), "--quiet"]
    sets = ["search.epochs=2", "model.C=8", "model.L=4", "search.batch_size=16", "search.rerank=0"]
    sets += ["search.select=perturb", "search.arch_lr=auto"]
    assert main(args + [x for s in sets for x in ("--set", s)]) == 0
    assert (
        "genotype chosen by perturbation selection (loss deltas in perturb.json)" in capsys.readouterr().out
    )
    record = json.loads((out / "perturb.json").read_text())
    genotype = json.loads((out / "genotype.json").read_text())
    assert record["genotype"] == genotype
    names = {"image.map", "image.vec", "audio.seq", "audio.video"} | {f"cell{n}" for n in range(1, 3)}
    for cell in record["cells"]:
        for slot in cell["slots"]:
            assert set(slot["delta"]) <= names and len(slot["delta"]) >= 3
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert {h["arch_lr"] for h in history} == {auto_arch_lr(2 * 4)}  # 60 rows / 16 = 4 batches
