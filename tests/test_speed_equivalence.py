"""The fast hypernet (issue 6) computes exactly the maths of a plain loop over every edge and op.

The reference below uses the hypernet's own modules (projections, ops, Cell outputs, head) but none
of its speed-ups: every edge of every slot is a scalar product with the full predecessor, ``zero``
edges and the ``zero`` op are materialised, weights come from ``softmax`` rather than the sigmoid
shortcut, and nothing is stacked or batched. Forward outputs and the gradients of every weight and
every architecture parameter must agree, in both input modes, with and without ``zero`` in the pool.
"""

import pytest
import torch

from bmnas.core.genotype import FeatureSpec
from bmnas.space.hypernet import HyperNet
from bmnas.space.ops import ZERO, dropout, dropout_mask, get_op

FEATS = (
    FeatureSpec("a.f1", 5, 1),
    FeatureSpec("a.f2", 6, 4),
    FeatureSpec("b.f1", 7, 4),
    FeatureSpec("b.f2", 3, 1),
    FeatureSpec("c.f1", 4, 4),
)
ALL_OPS = ("zero", "sum", "attention", "linear_glu", "concat_fc")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is fastest, and robust when other processes load the machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reference_forward(net: HyperNet, feats: dict) -> torch.Tensor:
    arch, L = net.arch, net.L
    projections = zip(net.features, net.projections, strict=True)
    states = [proj(feats[f.name]).expand(-1, L, -1) for f, proj in projections]
    cells: list[torch.Tensor] = []
    for n, cell in enumerate(net.cells):
        preds = states + cells
        keep = arch.alpha[n].softmax(-1)  # (S, K + n, {identity, zero})
        slots = [
            sum(keep[s, i, 0] * p + keep[s, i, 1] * torch.zeros_like(p) for i, p in enumerate(preds))
            for s in range(keep.shape[0])
        ]
        x, y = slots[0], slots[-1]
        inner = [x, y]
        op_w = arch.gamma[n].softmax(-1)
        for m, mixed in enumerate(cell.steps):
            b = arch.betas(n)[m].softmax(-1)
            step_slots = [
                sum(b[s, i, 0] * t + b[s, i, 1] * torch.zeros_like(t) for i, t in enumerate(inner))
                for s in range(b.shape[0])
            ]
            out = torch.zeros_like(x)
            for f, name in enumerate(net.ops):
                if name == ZERO:
                    out = out + op_w[m, f] * torch.zeros_like(x)
                    continue
                args = [step_slots[min(s, len(step_slots) - 1)] for s in range(get_op(name).arity)]
                out = out + op_w[m, f] * mixed[name](*args)
            inner.append(out)
        outs = inner[-cell.inner_multiplier :]
        z = outs[0] if cell.output.reduce is None else cell.output.reduce(torch.cat(outs, dim=-1))
        cells.append(cell.output.norm(z + x))
    return net.head(cells[-net.multiplier :])


def build(mode: str, ops, num_steps: int = 2, inner_multiplier: int = 1, num_cells: int = 3) -> HyperNet:
    torch.manual_seed(0)
    net = HyperNet(
        FEATS,
        num_outputs=3,
        C=8,
        L=4,
        num_cells=num_cells,
        num_steps=num_steps,
        ops=ops,
        inner_multiplier=inner_multiplier,
        dropout=0.0,
        input_mode=mode,
    ).double()
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()  # far from uniform, so that a wrong weight shows
    return net


def batch(B: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {f.name: torch.randn(B, f.length, f.channels, generator=g, dtype=torch.float64) for f in FEATS}


def grads(net: HyperNet, out: torch.Tensor) -> dict:
    net.zero_grad(set_to_none=True)
    w = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
    (out * w).sum().backward()
    return {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("mode", ["separate", "shared"])
@pytest.mark.parametrize("ops", [ALL_OPS, ALL_OPS[1:]], ids=["with-zero", "without-zero"])
@pytest.mark.parametrize(("num_steps", "inner_multiplier"), [(1, 1), (3, 2)], ids=["M1", "M3-concat2"])
def test_fast_hypernet_equals_plain_loop_reference(mode, ops, num_steps, inner_multiplier):
    net = build(mode, ops, num_steps, inner_multiplier)
    f = batch()
    for training in (True, False):  # batch statistics (train) and running statistics (eval)
        net.train(training)
        fast = net(f)
        g_fast = grads(net, fast)
        ref = reference_forward(net, f)
        g_ref = grads(net, ref)
        assert torch.allclose(fast, ref, rtol=1e-9, atol=1e-10)
        assert g_fast.keys() == g_ref.keys()
        for name in g_ref:
            assert torch.allclose(g_fast[name], g_ref[name], rtol=1e-8, atol=1e-10), name
        arch_grads = [g_fast[n] for n, _ in net.arch.named_parameters(prefix="arch")]
        assert all(torch.any(g != 0) for g in arch_grads)


def test_frozen_groups_get_no_gradient_and_the_rest_the_reference_gradient():
    """The search's two steps: weights frozen (arch step) and α, β, γ frozen (weight step)."""
    net = build("separate", ALL_OPS)
    f = batch(seed=1)
    ref = grads(net, reference_forward(net, f))
    for frozen in (net.weight_parameters(), net.arch_parameters()):
        for p in frozen:
            p.requires_grad_(False)
        net.zero_grad(set_to_none=True)
        out = net(f)
        (out * torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        for name, p in net.named_parameters():
            if p.requires_grad:
                assert torch.allclose(p.grad, ref[name], rtol=1e-8, atol=1e-10), name
            else:
                assert p.grad is None
            p.requires_grad_(True)


def test_vector_only_and_map_only_features():
    for lengths in ((1, 1), (4, 4)):
        feats = (FeatureSpec("a.f", 3, lengths[0]), FeatureSpec("b.f", 5, lengths[1]))
        torch.manual_seed(0)
        net = HyperNet(feats, 2, C=4, L=4, num_cells=2, num_steps=2, ops=ALL_OPS, dropout=0.0).double()
        g = torch.Generator().manual_seed(0)
        f = {s.name: torch.randn(5, s.length, s.channels, generator=g, dtype=torch.float64) for s in feats}
        assert torch.allclose(net(f), reference_forward(net, f), rtol=1e-9, atol=1e-10)


def test_dropout_mask_distribution_and_reproducibility():
    x = torch.ones(200_000)
    torch.manual_seed(3)
    m1 = dropout_mask(x, 0.25)
    torch.manual_seed(3)
    m2 = dropout_mask(x, 0.25)
    assert torch.equal(m1, m2)
    values = m1.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.75)
    assert abs((m1 == 0).double().mean().item() - 0.25) < 0.005
    assert not torch.equal(m1, dropout_mask(x, 0.25))  # a fresh mask each call


def test_dropout_mask_decides_ties_of_the_top_byte_with_the_low_bits():
    """p = 25.5 / 256: a uniform 32-bit u is dropped iff u < p·2³², i.e. its top byte < 25, or = 25
    with the low 24 bits < 2²³. Keeping (dropping) all ties would give 25 / 256 (26 / 256)."""
    torch.manual_seed(0)
    m = dropout_mask(torch.empty(2_000_000), 25.5 / 256)
    assert abs((m == 0).double().mean().item() - 25.5 / 256) < 0.001


def test_dropout_matches_nn_dropout_semantics():
    x = torch.randn(64, 8, 16, requires_grad=True)
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))
    y = dropout(x, 0.3, training=True)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.7)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.to(x.dtype) / 0.7)


def test_optimizer_step_moves_only_the_unfrozen_group():
    """The search's two steps share engine.loop.optimizer_step (also timed by benchmarks/search_speed.py)."""
    from bmnas.core.data import TaskInfo
    from bmnas.engine.loop import optimizer_step

    net = build("separate", ALL_OPS).float()
    f = {k: v.float() for k, v in batch().items()}
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    task = TaskInfo("multiclass", 3)
    weights, arch = net.weight_parameters(), net.arch_parameters()
    for params, frozen in ((weights, arch), (arch, weights)):
        opt = torch.optim.Adam(params, lr=0.1)
        before = [p.detach().clone() for p in net.parameters()]
        loss = optimizer_step(net, task, f, y, opt, freeze=frozen)
        assert not loss.requires_grad
        moved = {id(p) for p, b in zip(net.parameters(), before, strict=True) if not torch.equal(p, b)}
        assert moved == {id(p) for p in params if p.requires_grad}
        assert all(p.requires_grad for p in frozen)  # restored
