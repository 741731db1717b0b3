"""Static-buffer training steps (engine/graphs.py): eager on the CPU equal today's step; on CUDA the
captured replay equals eager within float tolerance, and a capture that fails falls back to eager."""

from __future__ import annotations

import copy
import dataclasses
import logging

import numpy as np
import pytest
import torch
from torch import nn

from bmnas.core.config import Config, ConfigError
from bmnas.core.data import TaskInfo
from bmnas.core.genotype import DeriveRules
from bmnas.engine.graphs import StepFunction, describe
from bmnas.engine.loop import (
    CPU,
    AdamSettings,
    Context,
    build_optimizer,
    cosine_restarts,
    evaluate,
    forward_batches,
    graphs_mode,
    optimizer_step,
)
from bmnas.engine.replay import ForwardFunction, forward_function, forward_functions
from bmnas.features.synthetic import planted_interaction
from bmnas.method.search import _bilevel_steps, _setup, search
from bmnas.method.train import build_model, fit, with_recipe

CUDA = torch.cuda.is_available()
TASK = TaskInfo("multiclass", 3)
SMALL = ["model.C=8", "model.L=4", "model.cells=1", "model.steps=1", "search.batch_size=64"]


class Tiny(nn.Module):
    """Two features, a hidden layer with BatchNorm and dropout: what a step must carry exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(3, 8)
        self.bn, self.drop, self.head = nn.BatchNorm1d(8), nn.Dropout(0.0), nn.Linear(8, 3)
        self.gate = nn.Parameter(torch.zeros(2))

    def forward(self, x: dict) -> torch.Tensor:
        w = torch.softmax(self.gate, 0)
        return self.head(self.drop(self.bn(w[0] * self.a(x["a"]) + w[1] * self.b(x["b"]))))


def _batches(n: int, sizes: list[int], device: str = "cpu") -> list[tuple[dict, torch.Tensor]]:
    g = torch.Generator().manual_seed(n)
    out = []
    for b in sizes:
        x = {"a": torch.randn(b, 4, generator=g), "b": torch.randn(b, 3, generator=g)}
        y = torch.randint(3, (b,), generator=g)
        out.append(({k: v.to(device) for k, v in x.items()}, y.to(device)))
    return out


def _run(mode: str, device: str = "cpu", steps: int = 9, fused: bool = True) -> tuple[nn.Module, list[float]]:
    """``steps`` weight steps (gate frozen) under a cosine schedule, the last batch short."""
    torch.manual_seed(0)
    model = Tiny().to(device)
    weights = [p for n, p in model.named_parameters() if n != "gate"]
    opt = build_optimizer(weights, AdamSettings(1e-2, 1e-4, fused=fused))
    sched = cosine_restarts(opt, 4, 1, 2, 1e-4)
    ctx = dataclasses.replace(CPU, device=torch.device(device), graphs=mode)
    step = StepFunction(model, TASK, opt, ctx, freeze=[model.gate])
    losses = []
    for x, y in _batches(1, [16] * (steps - 1) + [5], device):
        loss = optimizer_step(model, TASK, x, y, opt, [model.gate]) if mode == "today" else step(x, y)
        sched.step()
        losses.append(float(loss))
    return model, losses


@pytest.mark.parametrize("fused", [True, False])
def test_static_buffer_step_run_eagerly_equals_todays_step(fused):
    ref, ref_losses = _run("today", fused=fused)
    got, losses = _run("buffers", fused=fused)
    assert losses == ref_losses
    for (name, a), b in zip(ref.state_dict().items(), got.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert got.gate.detach().tolist() == [0.0, 0.0]  # frozen: never stepped


def test_static_buffer_step_keeps_its_buffers_and_lr_tensor_follows_the_schedule():
    torch.manual_seed(0)
    model = Tiny()
    opt = build_optimizer(model.parameters(), AdamSettings(1e-2, fused=True))
    sched = cosine_restarts(opt, 4, 1, 1, 0.0)
    step = StepFunction(model, TASK, opt, dataclasses.replace(CPU, graphs="buffers"))
    (x, y), (x2, y2), (xs, ys) = _batches(2, [16, 16, 5])
    step(x, y)
    buf = step.inputs["a"]
    sched.step()
    step(x2, y2)
    assert step.inputs["a"] is buf and torch.equal(buf, x2["a"])  # copied into, not replaced
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(1e-2 * (1 + np.cos(np.pi / 4)) / 2, rel=1e-6)
    step(xs, ys)  # the short batch: eager, the buffers untouched
    assert torch.equal(step.inputs["a"], x2["a"])
    assert describe(step) == {"mode": "buffers", "size": 16, "captured": False, "failed": None}
    with pytest.raises(ValueError, match="features changed"):
        step({"a": x["a"]}, y)


def test_graphs_mode_resolves_auto_on_off():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [graphs_mode(s, cpu) for s in ("auto", "on", "off")] == ["off", "buffers", "off"]
    assert [graphs_mode(s, cuda) for s in ("auto", "on", "off")] == ["capture", "capture", "off"]
    with pytest.raises(ConfigError, match="cuda_graphs"):
        Config.from_sources(None, ["cuda_graphs=sometimes"])


def _cpu_config(graphs: str, *sets: str) -> Config:
    """The small test config on the CPU with ``cuda_graphs=graphs`` (``on``: the static-buffer path,
    run eagerly) and ``sets``."""
    return Config.from_sources(None, [*SMALL, "device=cpu", f"cuda_graphs={graphs}", *sets])


def _search_params(graphs: str, epochs: int = 2) -> tuple[dict, list]:
    data = planted_interaction(n=300, L=4, seed=1)  # 300 train rows: the last batch is short
    cfg = _cpu_config(graphs, "search.warmup_epochs=1", "search.modality_dropout=0.2")
    s = _setup(data, cfg, progress=False)
    losses = [_bilevel_steps(s, e, warm=e > 1) for e in range(1, epochs + 1)]
    return {k: v.clone() for k, v in s.net.state_dict().items()}, losses


def test_search_steps_through_static_buffers_equal_todays_search():
    ref, ref_losses = _search_params("off")
    got, losses = _search_params("on")  # on a CPU: the static-buffer steps, eagerly
    assert losses == ref_losses
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6, msg=k)


def test_fit_through_static_buffers_equals_todays_fit():
    data = planted_interaction(n=200, L=4, seed=2)
    out = {}
    for graphs in ("off", "on"):
        cfg = _cpu_config(graphs, "train.batch_size=48", "train.modality_dropout=0.2")
        s = _setup(data, cfg, progress=False)
        genotype = with_recipe(s.net.genotype(DeriveRules.of(cfg.search)), cfg)
        model = build_model(genotype, data, cfg, data["train"])
        state = fit(model, data["train"], data, cfg, 3, val=data["val"])  # scored through evaluate
        out[graphs] = (
            {k: v.clone() for k, v in model.state_dict().items()},
            [h["train_loss"] for h in state["history"]],
            state["val"],
        )
    assert out["on"][1] == out["off"][1]
    assert len(out["on"][2]) == 3
    np.testing.assert_allclose(out["on"][2], out["off"][2], rtol=0, atol=1e-6)
    for k, v in out["off"][0].items():
        torch.testing.assert_close(out["on"][0][k], v, rtol=0, atol=1e-6, msg=k)


def _eval_model(device: str = "cpu") -> nn.Module:
    """A :class:`Tiny` with running statistics away from (0, 1): eval mode must read them."""
    torch.manual_seed(3)
    model = Tiny()
    model.bn.running_mean.normal_()
    model.bn.running_var.uniform_(0.5, 2.0)
    return model.to(device)


def _logits(model: nn.Module, x: dict, graphs: str, batch_size: int = 16, min_rows: int = 2) -> torch.Tensor:
    n = len(x["a"])
    batches = forward_batches(
        model,
        n,
        lambda b: ({k: v[b] for k, v in x.items()}, None),
        batch_size,
        min_rows=min_rows,
        graphs=graphs,
    )
    return torch.cat([out for _, out in batches])


@pytest.mark.parametrize("n", [37, 33, 16, 9])  # a short last batch; one row joined to the batch before; …
def test_eval_forward_through_static_buffers_equals_todays_forward(n):
    model = _eval_model()
    x = _batches(n, [n])[0][0]
    ref = _logits(model, x, "off")
    got = _logits(model, x, "buffers")
    assert got.shape == (n, 3) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    assert model.training  # the train/eval mode is restored
    (fn,) = forward_functions(model)
    assert fn.size == min(n, 16) and fn.mode == "buffers" and not fn.captured


def test_eval_forward_function_pads_the_short_batch_and_is_kept_across_evaluations():
    model = _eval_model()
    x = _batches(5, [37])[0][0]
    _logits(model, x, "buffers")
    (fn,) = forward_functions(model)
    buf = fn.inputs["a"]
    assert torch.equal(buf[:5], x["a"][32:]) and torch.equal(
        buf[5:], x["a"][21:32]
    )  # padded: last batch's rest
    _logits(model, x, "buffers")  # the next evaluation: the same function and buffers
    assert forward_functions(model) == [fn] and fn.inputs["a"] is buf and fn.calls == 6
    assert forward_function(model, {k: v[:16] for k, v in x.items()}, "buffers") is fn
    assert forward_function(model, {k: v[:8] for k, v in x.items()}, "buffers") is not fn  # another size
    with pytest.raises(ValueError, match="capture or buffers"):
        ForwardFunction(16, "off")


def test_evaluate_through_static_buffers_equals_todays_evaluate():
    data = planted_interaction(n=300, L=4, seed=4)
    cfg = Config.from_sources(None, SMALL + ["device=cpu"])
    net = _setup(data, cfg, progress=False).net
    val = data["val"]
    assert len(val) % 32 != 0
    ref = evaluate(net, val, data.task, 32)
    got = evaluate(net, val, data.task, 32, ctx=dataclasses.replace(CPU, graphs="buffers"))
    assert ref.keys() == got.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=0, abs=1e-6), k
    assert [fn.size for fn in forward_functions(net)] == [32]


def test_search_with_cuda_graphs_on_a_cpu_equals_the_eager_search():
    data = planted_interaction(n=300, L=4, seed=5)
    out = {}
    for graphs in ("off", "on"):
        cfg = _cpu_config(
            graphs,
            "search.epochs=3",
            "search.warmup_epochs=1",
            "search.eval_batch_size=32",
            "search.rerank=2",
            "search.rerank_epochs=1",
            "train.eval_batch_size=32",
        )
        out[graphs] = search(data, cfg, progress=False)
    ref, got = out["off"], out["on"]
    assert got.genotype == ref.genotype
    assert len(ref.candidates) == 2  # the re-ranked candidates' fold scores: through evaluate too
    for a, b in zip(ref.candidates, got.candidates, strict=True):
        assert b["genotype"] == a["genotype"]
        np.testing.assert_allclose(b["curve"], a["curve"], rtol=0, atol=1e-6)
    for a, b in zip(ref.history, got.history, strict=True):
        assert b["val"].keys() == a["val"].keys()
        for k, v in a["val"].items():
            assert b["val"][k] == pytest.approx(v, rel=0, abs=1e-6), k


# ------------------------------------------------------------------ CUDA only


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device")
def test_captured_steps_equal_eager_steps_on_cuda():
    ref, ref_losses = _run("buffers", "cuda", steps=12)
    got, losses = _run("capture", "cuda", steps=12)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(ref.state_dict().items(), got.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


class _Syncs(Tiny):
    def forward(self, x: dict) -> torch.Tensor:
        if float(x["a"].sum()) > 1e30:  # a host sync: not capturable
            raise AssertionError("unreachable")
        return super().forward(x)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device")
def test_a_failed_capture_warns_and_steps_eagerly(caplog):
    torch.manual_seed(0)
    model = _Syncs().cuda()
    ref = copy.deepcopy(model)
    opt = build_optimizer(model.parameters(), AdamSettings(1e-2, fused=True))
    ref_opt = build_optimizer(ref.parameters(), AdamSettings(1e-2, fused=True))
    ctx = Context(torch.device("cuda"), graphs="capture")
    step = StepFunction(model, TASK, opt, ctx, warmup=1)
    ref_step = StepFunction(ref, TASK, ref_opt, dataclasses.replace(ctx, graphs="buffers"))
    with caplog.at_level(logging.WARNING, logger="bmnas.engine.graphs"):
        for x, y in _batches(3, [16] * 4, "cuda"):
            step(x, y)
            ref_step(x, y)
    assert step.failed is not None and not step.captured
    assert "capture of a training step failed" in caplog.text
    for a, b in zip(ref.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_captured_eval_forward_equals_the_eager_forward_on_cuda(precision):
    model = _eval_model("cuda")
    ctx = Context(torch.device("cuda"), precision=precision, graphs="capture")
    x = _batches(7, [101], "cuda")[0][0]  # 7 batches of 16 (the last padded): warm-up, capture, replays
    run = lambda graphs: torch.cat(  # noqa: E731
        [
            o
            for _, o in forward_batches(
                model, 101, lambda b: ({k: v[b] for k, v in x.items()}, None), 16, ctx.amp, graphs=graphs
            )
        ]
    )
    ref = run("off")
    for _ in range(2):  # the second evaluation replays the graph the first captured
        torch.testing.assert_close(run("capture"), ref, rtol=1e-5, atol=1e-5)
    (fn,) = forward_functions(model)
    assert fn.captured and fn.failed is None
    graph = fn.graph
    with torch.no_grad():  # weights copied in place (load_state_dict): the same graph, the new weights
        model.load_state_dict(
            {k: v * 0.5 if k.startswith("head") else v for k, v in model.state_dict().items()}
        )
    ref = run("off")
    torch.testing.assert_close(run("capture"), ref, rtol=1e-5, atol=1e-5)
    assert fn.graph is graph
    model.head.weight.data = model.head.weight.data.clone() * 2  # a new address: captured again
    ref = run("off")
    torch.testing.assert_close(run("capture"), ref, rtol=1e-5, atol=1e-5)
    assert fn.captured and fn.graph is not graph


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device")
def test_a_failed_eval_capture_warns_and_runs_eagerly(caplog):
    torch.manual_seed(0)
    model = _Syncs().cuda().eval()
    x = _batches(8, [64], "cuda")[0][0]
    with torch.no_grad():
        ref = model(x)
    with caplog.at_level(logging.WARNING, logger="bmnas.engine.replay"):
        got = _logits(model, x, "capture")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    (fn,) = forward_functions(model)
    assert fn.failed is not None and not fn.captured
    assert "capture of an evaluation forward failed" in caplog.text
