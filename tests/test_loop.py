"""The one batch loop, evaluation loop and optimiser builder of engine.loop, against hand-written loops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bmnas.core.config import Config
from bmnas.core.data import TaskInfo
from bmnas.engine.augment import drop_modalities
from bmnas.engine.distributed import SINGLE
from bmnas.engine.loop import (
    AdamSettings,
    ModalityDropout,
    batch_indices,
    build_optimizer,
    cosine_restarts,
    forward_batches,
    split_batches,
    train_epoch,
)
from bmnas.features.backbones.pretrain import (
    Pretrainer,
    accuracy,
    merges_last_row,
    train_classifier,
    weights_key,
)
from bmnas.features.datasets.base import RawDataset, RawSplit

TASK = TaskInfo("multiclass", 3)


class Plain(nn.Module):
    """Two modalities concatenated into an MLP with BatchNorm and dropout (RNG and buffers matter)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3)
        )
        self.modes: list[bool] = []

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        self.modes.append(self.training)
        return self.net(torch.cat([feats["a.x"], feats["b.y"]], dim=1))


def _data(n: int = 77):
    rng = np.random.default_rng(0)
    x = {"a.x": torch.from_numpy(rng.normal(size=(n, 3)).astype(np.float32))}
    x["b.y"] = torch.from_numpy(rng.normal(size=(n, 2)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, n))
    return x, y


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = Plain()
    opt = build_optimizer(model.parameters(), AdamSettings(1e-2, 1e-4))
    return model, opt, cosine_restarts(opt, 5, 1, 2, 1e-5), torch.Generator().manual_seed(7)


def test_train_epoch_equals_a_hand_written_loop():
    x, y = _data()
    gather = lambda idx: ({k: v[idx] for k, v in x.items()}, y[idx])  # noqa: E731

    model, opt, sched, gen = _setup()
    got = []
    for _ in range(2):
        batches = batch_indices(len(y), 16, gen)
        got.append(
            train_epoch(model, batches, gather, TASK, opt, schedule=sched, dropout=ModalityDropout(0.3, gen))
        )

    ref, ref_opt, ref_sched, ref_gen = _setup()
    want = []
    for _ in range(2):
        ref.train()
        total = 0.0
        for idx in batch_indices(len(y), 16, ref_gen):
            feats = drop_modalities({k: v[idx] for k, v in x.items()}, 0.3, ref_gen)
            loss = F.cross_entropy(ref(feats), y[idx])
            ref_opt.zero_grad(set_to_none=True)
            loss.backward()
            ref_opt.step()
            ref_sched.step()
            total += loss.item() * len(idx)
        want.append(total / len(y))

    assert [e.rows for e in got] == want and [e.steps for e in got] == [0.0, 0.0]
    assert want[1] < want[0]  # it learns
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # parameters and BatchNorm statistics, bitwise
    assert not torch.equal(model.net[0].weight, _setup()[0].net[0].weight)  # and they moved
    assert torch.equal(gen.get_state(), ref_gen.get_state())  # the same draws from the shared generator
    assert sched.get_last_lr() == ref_sched.get_last_lr()


def test_after_step_follows_each_step_and_its_values_are_averaged():
    x, y = _data(40)
    model, opt, _, _ = _setup()
    first = model.net[0].weight.detach().clone()
    seen = []

    def after(i: int, loss: torch.Tensor) -> float | None:
        seen.append((i, float(loss), torch.equal(model.net[0].weight, first)))
        return float(i) if i % 2 == 0 else None

    batches = split_batches(np.arange(40), 10)
    out = train_epoch(
        model, batches, lambda idx: ({k: v[idx] for k, v in x.items()}, y[idx]), TASK, opt, after_step=after
    )
    assert [i for i, _, _ in seen] == [0, 1, 2, 3]
    assert not any(same for _, _, same in seen)  # the weight step has already been taken
    assert out.steps == (0 + 2) / 4
    assert out.rows == pytest.approx(sum(loss for _, loss, _ in seen) * 10 / 40, rel=1e-6)


def test_frozen_parameters_do_not_move_and_stay_trainable():
    x, y = _data(40)
    model, opt, _, _ = _setup()
    head = list(model.net[4].parameters())
    before = [p.detach().clone() for p in head]
    train_epoch(
        model,
        split_batches(np.arange(40), 20),
        lambda i: ({k: v[i] for k, v in x.items()}, y[i]),
        TASK,
        opt,
        freeze=head,
    )
    assert all(torch.equal(p, b) for p, b in zip(head, before, strict=True))
    assert all(p.requires_grad for p in head)
    assert not torch.equal(model.net[0].weight, _setup()[0].net[0].weight)


def test_modality_dropout_draws_masks_over_the_networks_inputs_only():
    feats = {"a.x": torch.ones(6, 2), "b.y": torch.ones(6, 2), "c.z": torch.ones(6, 2)}
    out = ModalityDropout(0.5, torch.Generator().manual_seed(3), ("a.x", "c.z"))(feats, 6, SINGLE)
    want = drop_modalities({"a.x": feats["a.x"], "c.z": feats["c.z"]}, 0.5, torch.Generator().manual_seed(3))
    assert list(out) == ["a.x", "c.z"]
    assert all(torch.equal(out[k], want[k]) for k in out)
    assert ((out["a.x"][:, 0] > 0) | (out["c.z"][:, 0] > 0)).all()  # each sample keeps a modality


def test_a_lone_last_row_joins_the_batch_before():
    assert [len(b) for b in split_batches(np.arange(129), 64)] == [64, 65]
    assert [len(b) for b in split_batches(np.arange(130), 64)] == [64, 64, 2]
    assert [len(b) for b in split_batches(np.arange(1), 64)] == [1]
    assert [len(b) for b in split_batches(np.arange(9), 4, min_rows=2)] == [4, 5]
    assert [len(b) for b in batch_indices(9, 4, None, min_rows=1)] == [4, 4, 1]
    assert (merges_last_row(129, 64), merges_last_row(65, 64), merges_last_row(128, 64)) == (
        True,
        True,
        False,
    )
    assert merges_last_row(1, 64) is False


def test_pretraining_trains_on_every_row_with_the_loop():
    """train_classifier: sorted batches of a seeded permutation, a lone last row joined, mean loss per row."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(21, 4)).astype(np.float32)
    y = rng.integers(0, 3, 21)

    def net():
        torch.manual_seed(5)
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    model = net()
    losses = train_classifier(
        model,
        x,
        y,
        multilabel=False,
        epochs=2,
        to_tensor=torch.from_numpy,
        batch_size=10,
        seed=2,
        device="cpu",
    )

    ref = net()
    torch.manual_seed(2)
    order_rng = np.random.default_rng(2)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3, weight_decay=1e-4)
    want = []
    for _ in range(2):
        order = order_rng.permutation(21)
        batches = [np.sort(order[:10]), np.sort(order[10:])]  # 10 + 11: the 21st row joined
        total = 0.0
        for idx in batches:
            loss = F.cross_entropy(ref(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        want.append(total / 21)
    assert losses == want
    for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_forward_batches_is_eval_mode_in_order_and_restores_the_mode():
    x, y = _data(25)
    model, _, _, _ = _setup()
    model.train()
    outs = list(forward_batches(model, 25, lambda b: ({k: v[b] for k, v in x.items()}, y[b]), 10, min_rows=1))
    assert [len(o) for _, o in outs] == [10, 10, 5] and model.modes == [False] * 3 and model.training
    assert torch.equal(torch.cat([labels for labels, _ in outs]), y)
    model.eval()
    whole = model({k: v for k, v in x.items()})
    torch.testing.assert_close(torch.cat([o for _, o in outs]), whole, rtol=1e-5, atol=1e-6)
    assert not any(o.requires_grad for _, o in outs)
    # pre-training's accuracy reads the same loop: top-1 of the argmax
    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(3))
        lin.bias.zero_()
    xs = np.eye(3, dtype=np.float32)[[0, 1, 2, 2, 1]]
    assert accuracy(lin, xs, np.array([0, 1, 2, 0, 0]), batch_size=2) == 3 / 5


def test_the_optimiser_builder_reads_the_config_fields():
    cfg = Config.from_sources(None, ["train.lr=0.005", "train.weight_decay=0.01", "search.arch_lr=0.002"])
    w = nn.Linear(2, 2)
    train = build_optimizer(w.parameters(), AdamSettings.of(cfg.train)).param_groups[0]
    assert (train["lr"], train["weight_decay"], train["betas"], train["fused"]) == (
        0.005,
        0.01,
        (0.9, 0.999),
        None,
    )
    arch = build_optimizer(w.parameters(), AdamSettings.arch(cfg.search)).param_groups[0]
    assert (arch["lr"], arch["weight_decay"], tuple(arch["betas"]), arch["fused"]) == (
        0.002,
        1e-3,
        (0.5, 0.999),
        True,
    )
    assert isinstance(
        build_optimizer(w.parameters(), AdamSettings.of(cfg.search, fused=True)), torch.optim.Adam
    )


@pytest.mark.parametrize(("n", "joined"), [(20, False), (21, True)])
def test_weights_of_a_joined_lone_row_are_cached_under_their_own_key(tmp_path, n, joined):
    """Weights older bmnas trained otherwise (k · batch + 1 rows: the lone row) get a key of their own."""
    rng = np.random.default_rng(0)
    split = RawSplit({"m": rng.normal(size=(n, 4)).astype(np.float32)}, rng.integers(0, 3, n))
    raw = RawDataset("toy", {"train": split}, {"sha256": "0" * 64}, ("a", "b", "c"))
    pre = Pretrainer(raw, tmp_path, "toy", seed=0, progress=False, epochs=1, batch_size=10)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    pre.classifier(net, "m", None, name="toy", key={"arch": "toy"}, to_tensor=torch.from_numpy)
    (sidecar,) = (tmp_path / "toy" / "backbones").glob("toy-*.json")
    meta = json.loads(sidecar.read_text())
    base = {"arch": "toy", "data": "0" * 64, "seed": 0, "epochs": 1}
    assert sidecar.stem == "toy-" + weights_key(**base, **({"last_row": "joined"} if joined else {}))
    assert meta.get("last_row") == ("joined" if joined else None) and len(meta["losses"]) == 1
