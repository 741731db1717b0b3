"""Baselines as genotypes: fixed-fusion Cells (paper Fig. 2), their sizes, and random architectures."""

from collections import Counter

import numpy as np
import pytest
import torch

from bmnas.core.config import Config
from bmnas.core.genotype import FeatureSpec, Genotype, validate
from bmnas.features.synthetic import planted_interaction
from bmnas.method.train import train
from bmnas.space.baselines import (
    FIXED_CELLS,
    baseline,
    fixed_fusion,
    fixed_inputs,
    late_fusion,
    random_genotype,
    unimodal,
)
from bmnas.space.found import FoundNet
from bmnas.space.ops import DEFAULT_OPS, get_op, list_ops

C, L, CH = 8, 4, 8  # fused channels, positions, input channels of every planted feature


def _projection(c_in):  # Linear(c_in -> C) + BatchNorm1d(C)
    return c_in * C + C + 2 * C


def _head(k, classes=2):  # LayerNorm([L, k C]) + Linear(L k C -> classes)
    return 2 * L * k * C + L * k * C * classes + classes


LAYER_NORM = 2 * L * C  # LayerNorm([L, C]): the Cell output and the attention op
CONCAT_FC = 2 * C * C + C + 2 * C  # Linear(2C -> C) + BatchNorm1d(C)
LINEAR_GLU = 2 * (C * C + C)  # two Linear(C -> C)
REDUCE2 = _projection(2 * C)  # 1x1 conv [step1; step2] -> C, BatchNorm, at the Cell output
# Two Cells over the two last features (a.f3, b.f3): 2 projections, 2 Cells, head over 2 Cells.
BASE = 2 * _projection(CH) + _head(2)
EXPECTED_PARAMS = {
    "sum": BASE + 2 * LAYER_NORM,  # 176 + 258 + 128 = 562
    "concat_fc": BASE + 2 * (CONCAT_FC + LAYER_NORM),  # 866
    "mha": BASE + 2 * (2 * LAYER_NORM + REDUCE2 + LAYER_NORM),  # 1122
    "aoa": BASE + 2 * (LAYER_NORM + LINEAR_GLU + LAYER_NORM),  # 978
}


@pytest.fixture(scope="module")
def data():
    return planted_interaction(n=200, L=L, channels=CH, seed=0)


def test_fixed_feature_selection():
    specs = planted_interaction(n=30, L=L, channels=CH).specs()
    assert fixed_inputs(specs, 3) == [("a.f3", "b.f3"), ("cell1", "a.f3"), ("cell2", "b.f3")]
    three = specs + (FeatureSpec("c.x", 4, 1),)
    assert fixed_inputs(three, 3) == [("a.f3", "b.f3"), ("cell1", "c.x"), ("cell2", "a.f3")]
    one = tuple(f for f in specs if f.name.startswith("a."))
    assert fixed_inputs(one, 1) == [("a.f2", "a.f3")]


@pytest.mark.parametrize("name", sorted(FIXED_CELLS))
def test_fixed_cells_are_valid_genotypes_with_exact_parameter_counts(data, name):
    g = fixed_fusion(name, data.specs(), C, L, num_cells=2)
    validate(g, known_ops=list_ops(), arity={o: get_op(o).arity for o in g.ops()})
    assert Genotype.from_json(g.to_json()) == g
    assert g.output == ("cell1", "cell2") and g.used_features() == ("a.f3", "b.f3")
    net = FoundNet(g, num_outputs=2, dropout=0.0)
    counts = net.param_counts()
    assert counts["total"] == EXPECTED_PARAMS[name]
    assert counts["classifier"] == L * 2 * C * 2 + 2


def test_fixed_cell_bodies_follow_paper_fig2(data):
    specs = data.specs()
    mha = fixed_fusion("mha", specs, C, L).cells[0]
    assert [(s.op, s.inputs) for s in mha.steps] == [("attention", ("x", "y")), ("attention", ("y", "x"))]
    assert mha.concat == ("step1", "step2")  # two heads, concatenated
    aoa = fixed_fusion("aoa", specs, C, L).cells[0]
    assert [(s.op, s.inputs) for s in aoa.steps] == [
        ("attention", ("x", "y")),
        ("linear_glu", ("step1", "x")),
    ]
    assert aoa.concat == ("step2",)
    assert fixed_fusion("sum", specs, C, L, num_cells=3, multiplier=1).output == ("cell3",)
    with pytest.raises(ValueError, match="unknown fixed-fusion"):
        fixed_fusion("transformer", specs, C, L)


@pytest.mark.parametrize("name", sorted(FIXED_CELLS))
def test_fixed_cells_train(data, name):
    g = fixed_fusion(name, data.specs(), C, L, num_cells=2)
    cfg = Config.from_sources(
        None,
        [
            "train.epochs=4",
            "train.batch_size=32",
            "train.lr=1e-2",
            "model.dropout=0.0",
            "train.select_epochs=false",
            "model.linear_skip=false",  # the counts below are the Cells' alone
        ],
    )
    r = train(g, data, cfg, progress=False)
    losses = [h["train_loss"] for h in r.history]
    assert losses[-1] < losses[0]
    assert r.params["total"] == EXPECTED_PARAMS[name]
    # the reported test accuracy is the trained network's on the test split
    feats, y = data["test"].batch(slice(None))
    with torch.no_grad():
        pred = r.model.eval()(feats).argmax(1)
    assert r.test["accuracy"] == pytest.approx(float((pred == y).float().mean()))


def test_unimodal_and_late_fusion_parameter_counts(data):
    specs = data.specs()
    assert FoundNet(unimodal(specs, "a", C, L), 2).param_counts()["total"] == _projection(CH) + _head(1)
    assert FoundNet(late_fusion(specs, C, L), 2).param_counts()["total"] == 2 * _projection(CH) + _head(2)


def test_random_genotypes_cover_the_space_and_respect_the_rules(data):
    specs = data.specs()
    rng = np.random.default_rng(0)
    ops, features, cell_inputs, step_inputs = Counter(), Counter(), Counter(), Counter()
    orders = set()
    for _ in range(300):
        g = random_genotype(specs, DEFAULT_OPS, C, L, num_cells=3, num_steps=2, rng=rng)
        validate(g, known_ops=list_ops(), arity={o: get_op(o).arity for o in g.ops()})
        pairs = [frozenset(c.inputs) for c in g.cells]
        assert all(len(p) == 2 for p in pairs)  # x != y
        assert len(set(pairs)) == len(pairs)  # no two Cells read the same pair
        for n, c in enumerate(g.cells, 1):
            cell_inputs.update(i for i in c.inputs if i.startswith("cell"))
            assert all(not i.startswith("cell") or int(i[4:]) < n for i in c.inputs)
            for s in c.steps:
                ops[s.op] += 1
                step_inputs.update(s.inputs)
                assert (s.op == "zero") == (len(s.inputs) == 0)
        features.update(g.used_features())
        orders.add(tuple(g.cells[0].inputs))
        assert g.output == ("cell1", "cell2", "cell3")
    assert set(ops) == set(DEFAULT_OPS)
    assert set(features) == set(data.feature_names)
    assert {"cell1", "cell2"} <= set(cell_inputs)  # earlier Cells get picked
    assert {"x", "y", "step1"} <= set(step_inputs)
    assert ("a.f1", "b.f1") in orders and ("b.f1", "a.f1") in orders  # both x/y orders
    # deterministic given the generator
    a = random_genotype(specs, DEFAULT_OPS, C, L, 2, 2, np.random.default_rng(7))
    b = random_genotype(specs, DEFAULT_OPS, C, L, 2, 2, np.random.default_rng(7))
    assert a == b


def test_random_genotype_builds_and_honours_sizes(data):
    g = random_genotype(
        data.specs(),
        ("sum", "attention"),
        C,
        L,
        2,
        3,
        np.random.default_rng(1),
        inner_multiplier=2,
        multiplier=1,
    )
    assert len(g.cells) == 2 and all(len(c.steps) == 3 and c.concat == ("step2", "step3") for c in g.cells)
    assert g.output == ("cell2",)
    assert FoundNet(g, 2).param_counts()["total"] > 0


def test_linear_path_adds_a_probe_of_the_last_features(data):
    """``logits = head(states) + W · BN(flat features) + b``, BN without affine parameters."""
    from bmnas.method.train import with_recipe

    specs = data.specs()
    g = fixed_fusion("sum", specs, C, L, num_cells=1)
    cfg = Config()
    wide = with_recipe(g, cfg)
    assert wide.linear == ("a.f3", "b.f3") and with_recipe(wide, cfg) == wide
    assert with_recipe(unimodal(specs, "a", C, L), cfg).linear == ("a.f3",)  # stays unimodal
    assert with_recipe(g, Config.from_sources(None, ["model.linear_skip=false"])) == g
    plain, net = FoundNet(g, 2), FoundNet(wide, 2)
    width = sum(f.channels * f.length for f in specs if f.name in ("a.f3", "b.f3"))
    assert net.param_counts()["total"] - plain.param_counts()["total"] == width * 2 + 2
    assert "linear(a.f3, b.f3)" in wide.describe() and Genotype.from_dict(wide.to_dict()) == wide
    net.eval()
    with torch.no_grad():
        net.linear[1].weight.normal_()
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("linear.")}
    plain.load_state_dict(state)
    plain.eval()
    feats, _ = data["test"].batch(slice(0, 16))
    flat = torch.cat([feats[n].reshape(16, -1) for n in ("a.f3", "b.f3")], 1)
    norm = net.linear[0]
    with torch.no_grad():
        probe = net.linear[1]((flat - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps))
        assert torch.allclose(net(feats), plain(feats) + probe, atol=1e-5)


def test_baseline_by_name_is_the_builder_of_that_name(data):
    specs = data.specs()
    assert baseline("unimodal:b", specs, C, L) == unimodal(specs, "b", C, L)
    assert baseline("late_fusion", specs, C, L) == late_fusion(specs, C, L)
    assert baseline("aoa", specs, C, L, 3, 1) == fixed_fusion("aoa", specs, C, L, 3, 1)
    with pytest.raises(ValueError, match="'random' is not a baseline"):
        baseline("random", specs, C, L)
