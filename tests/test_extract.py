"""Feature extraction: hooks on named submodules, pooling per batch, errors on bad layer paths."""

import numpy as np
import pytest
import torch
from torch import nn

from bmnas.features.backbones.base import Backbone
from bmnas.features.extract import LayerPathError, extract_features, resolve_layers, torch_threads
from bmnas.features.pooling import pool_feature


class Toy(nn.Module):
    """(B, 3, 8, 8) -> stem map (4, 8, 8) -> block.conv map (6, 4, 4) -> seq (6, 16) -> fc (5,)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential()
        self.block.add_module("conv", nn.Conv2d(4, 6, 3, stride=2, padding=1))
        self.block.add_module("bn", nn.BatchNorm2d(6))
        self.seq = nn.Flatten(2)  # (B, 6, 16): a sequence
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(96, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.seq(self.block(self.stem(x))))


LAYERS = {"stem": "stem", "block": "block.conv", "seq": "seq", "fc": "fc"}


def _toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy()


def _inputs(n: int = 10) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 8, 8)).astype(np.float32)


def test_names_shapes_and_values_match_a_manual_forward():
    net, x = _toy(), _inputs()
    feats = extract_features(Backbone("image", net, LAYERS), x, length=4, batch_size=3, progress=False)
    assert list(feats) == ["image.stem", "image.block", "image.seq", "image.fc"]
    assert {k: v.shape for k, v in feats.items()} == {
        "image.stem": (10, 4, 4),
        "image.block": (10, 4, 6),
        "image.seq": (10, 4, 6),
        "image.fc": (10, 1, 5),
    }
    assert all(v.dtype == np.float32 for v in feats.values())
    net.eval()
    with torch.no_grad():
        t = torch.from_numpy(x)
        stem = net.stem(t)
        conv = net.block.conv(stem)
        seq = net.seq(net.block(stem))
        fc = net.fc(seq)
    for name, raw in [("stem", stem), ("block", conv), ("seq", seq), ("fc", fc)]:
        np.testing.assert_allclose(feats[f"image.{name}"], pool_feature(raw, 4).numpy(), rtol=1e-5, atol=1e-6)


def test_batch_size_and_pooling_mode():
    net, x = _toy(), _inputs(7)
    bb = Backbone("image", net, LAYERS)
    a = extract_features(bb, x, length=4, batch_size=2, progress=False)
    b = extract_features(bb, x, length=4, batch_size=100, progress=False)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
    avg = extract_features(bb, x, length=4, pooling="avg", progress=False)
    assert not np.allclose(avg["image.stem"], a["image.stem"])
    np.testing.assert_allclose(avg["image.fc"], a["image.fc"], rtol=1e-5, atol=1e-6)  # vectors: no pooling


def test_eval_mode_and_hooks_are_restored():
    net = _toy().train()
    extract_features(Backbone("image", net, LAYERS), _inputs(4), length=2, progress=False)
    assert net.training  # mode restored; dropout was off during extraction (checked above)
    assert all(not m._forward_hooks for m in net.modules())


def test_bad_layer_path_lists_the_available_modules():
    with pytest.raises(LayerPathError, match=r"no submodule 'block\.conv2'.*block\.conv.*block\.bn"):
        extract_features(
            Backbone("image", _toy(), {"x": "block.conv2"}), _inputs(2), length=2, progress=False
        )
    with pytest.raises(LayerPathError, match="no forward_intermediates"):
        resolve_layers(_toy(), {"x": "forward_intermediates:0"})


def test_a_module_that_runs_twice_is_an_error():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(self.lin(x))

    with pytest.raises(RuntimeError, match="ran twice"):
        extract_features(Backbone("v", Twice(), {"l": "lin"}), np.zeros((2, 3)), length=2, progress=False)


def test_tuple_outputs_and_dict_preprocessing():
    class Rnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(4, 6, batch_first=True)

        def forward(self, tokens: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            out, _ = self.gru(tokens * scale)
            return out

    def prep(batch: np.ndarray) -> dict[str, torch.Tensor]:
        t = torch.as_tensor(np.asarray(batch), dtype=torch.float32)
        return {"tokens": t, "scale": torch.ones(1)}

    torch.manual_seed(0)
    bb = Backbone("text", Rnn(), {"gru": "gru"}, preprocess=prep)
    x = np.random.default_rng(1).standard_normal((5, 9, 4))
    feats = extract_features(bb, x, length=3, progress=False)
    # the GRU's output is (B, T, C): taken as is, so C_in=9 "channels" over T=6 -> (5, 3, 9)
    assert feats["text.gru"].shape == (5, 3, 9)


def test_forward_intermediates_contract():
    class Timmish(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stages = nn.ModuleList([nn.Conv1d(2, 3, 1), nn.Conv1d(3, 4, 1), nn.Conv1d(4, 5, 1)])

        def forward_intermediates(self, x, indices, intermediates_only=False):
            outs = []
            for i, stage in enumerate(self.stages):
                x = stage(x)
                if i in indices:
                    outs.append(x)
            return outs

    torch.manual_seed(0)
    net = Timmish()
    layers = {"s0": "forward_intermediates:0", "s2": "forward_intermediates:2", "hooked": "stages.1"}
    x = np.random.default_rng(2).standard_normal((4, 2, 6)).astype(np.float32)
    feats = extract_features(Backbone("seq", net, layers), x, length=3, progress=False)
    assert {k: v.shape for k, v in feats.items()} == {
        "seq.s0": (4, 3, 3),
        "seq.s2": (4, 3, 5),
        "seq.hooked": (4, 3, 4),
    }
    with torch.no_grad():
        s0 = net.stages[0](torch.from_numpy(x))
    np.testing.assert_allclose(feats["seq.s0"], pool_feature(s0, 3).numpy(), rtol=1e-6)


def test_torch_threads_is_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
