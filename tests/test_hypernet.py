"""The hypernet: parameter groups, gradients, device moves, the vectorised mixing, found networks."""

import pytest
import torch

from bmnas.core.genotype import CellGene, FeatureSpec, Genotype, GenotypeError, StepGene
from bmnas.space.found import FoundNet
from bmnas.space.hypernet import HyperNet, edge_weights

FEATS = (
    FeatureSpec("a.f1", 5, 1),
    FeatureSpec("a.f2", 6, 4),
    FeatureSpec("b.f1", 7, 4),
    FeatureSpec("b.f2", 3, 1),
)
OPS = ("zero", "sum", "attention", "linear_glu", "concat_fc")


def batch(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f.name: torch.randn(B, f.length, f.channels, generator=g) for f in FEATS}


def net(**kw):
    torch.manual_seed(0)
    args = dict(C=8, L=4, num_cells=2, num_steps=2, ops=OPS, dropout=0.1)
    args.update(kw)
    return HyperNet(FEATS, num_outputs=3, **args)


def test_weights_and_arch_parameters_are_disjoint_and_cover_everything():
    n = net()
    w = {id(p) for p in n.weight_parameters()}
    a = {id(p) for p in n.arch_parameters()}
    assert w.isdisjoint(a)
    assert w | a == {id(p) for p in n.parameters()}
    # α: 2 cells x (2 slots, K + n predecessors, 2); β: 2 cells x 2 steps; γ: (M, |ops|)
    assert [tuple(p.shape) for p in n.arch.alpha] == [(2, 4, 2), (2, 5, 2)]
    assert [tuple(p.shape) for p in n.arch.beta] == [(2, 2, 2), (2, 3, 2)] * 2
    assert [tuple(p.shape) for p in n.arch.gamma] == [(2, 5), (2, 5)]
    assert sum(p.numel() for p in n.arch_parameters()) == 16 + 20 + 2 * (8 + 12) + 20


def test_gradients_reach_every_parameter():
    n = net()
    loss = n(batch()).logsumexp(-1).mean()
    loss.backward()
    missing = [name for name, p in n.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_arch_parameters_are_in_state_dict_and_move_with_to():
    n = net()
    keys = n.state_dict().keys()
    assert {"arch.alpha.0", "arch.alpha.1", "arch.beta.3", "arch.gamma.1"} <= set(keys)
    n.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in n.arch_parameters())


def reference_forward(n: HyperNet, feats):
    """A straightforward loop over every edge (no stacking, no matmul mixing)."""
    states = [
        proj(feats[f.name]).expand(-1, n.L, -1) for f, proj in zip(n.features, n.projections, strict=True)
    ]
    cells = []
    for c, cell in enumerate(n.cells):
        w = edge_weights(n.arch.alpha[c])
        preds = states + cells
        x = sum(w[0, i] * s for i, s in enumerate(preds))
        y = sum(w[-1, i] * s for i, s in enumerate(preds))
        cells.append(cell(x, y, n.arch.betas(c), n.arch.gamma[c]))
    return n.head(cells[-n.multiplier :])


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_vectorised_forward_equals_reference(mode):
    n = net(input_mode=mode).eval()
    with torch.no_grad():
        for p in n.arch_parameters():
            p.normal_()
    f = batch()
    assert torch.allclose(n(f), reference_forward(n, f), atol=1e-5)


def test_output_shape_and_genotype_is_valid():
    n = net()
    assert n(batch(B=5)).shape == (5, 3)
    g = n.genotype()
    assert len(g.cells) == 2 and all(len(c.steps) == 2 for c in g.cells)
    FoundNet(g, 3)  # builds


def test_found_net_has_parameters_only_for_used_features():
    g = Genotype(
        8,
        4,
        FEATS,
        (CellGene(("a.f2", "b.f2"), (StepGene("concat_fc", ("x", "y")),), ("step1",)),),
        ("cell1",),
    )
    m = FoundNet(g, num_outputs=3)
    assert m.used == ("a.f2", "b.f2")
    assert [p.fc.in_features for p in m.projections] == [6, 3]
    out = m({k: v for k, v in batch().items() if k in ("a.f2", "b.f2")})
    assert out.shape == (6, 3)
    with pytest.raises(KeyError, match="missing features"):
        m({"a.f2": batch()["a.f2"]})


def test_found_zero_step_outputs_zeros_before_the_residual():
    g = Genotype(8, 4, FEATS, (CellGene(("a.f2", "b.f1"), (StepGene("zero", ()),), ("step1",)),), ("cell1",))
    m = FoundNet(g, 3).eval()
    f = batch()
    x = m.projections[0](f["a.f2"])
    out = m.cells[0](x, m.projections[1](f["b.f1"]))
    assert torch.allclose(out, torch.nn.functional.layer_norm(x, [4, 8]), atol=1e-5)


def test_found_net_rejects_unknown_op():
    g = Genotype(
        8,
        4,
        FEATS,
        (CellGene(("a.f2", "b.f1"), (StepGene("atention", ("x", "y")),), ("step1",)),),
        ("cell1",),
    )
    with pytest.raises(GenotypeError, match="cells\\[0\\]\\.steps\\[0\\]\\.op: unknown op 'atention'"):
        FoundNet(g, 3)
