"""The backbone pre-training cache: atomic saves, checksummed loads, training only once."""

import os
import stat

import torch
from torch import nn

from bmnas.features.backbones.pretrain import load_cached, pretrained, save_cached, save_state


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_save_state_is_atomic_and_readable_by_others(tmp_path):
    path = tmp_path / "deep" / "w.pt"
    save_state(_net().state_dict(), path)
    save_state(_net(1).state_dict(), path)  # replaces the first
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.pt"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    torch.testing.assert_close(torch.load(path, weights_only=True), _net(1).state_dict())


def test_load_cached_needs_a_matching_checksum(tmp_path):
    path = tmp_path / "w.pt"
    assert load_cached(_net(), path) is None
    sidecar = save_cached(_net(1).state_dict(), path, {"arch": "toy"})
    net = _net()
    assert load_cached(net, path) == sidecar and sidecar["arch"] == "toy"
    torch.testing.assert_close(net.state_dict(), _net(1).state_dict())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert load_cached(_net(), path) is None


def test_pretrained_trains_once_then_loads_frozen(tmp_path):
    calls = []

    def train(model: nn.Module) -> list[float]:
        calls.append(1)
        with torch.no_grad():
            model[0].weight.fill_(0.5)
        return [1.0]

    path = tmp_path / "w.pt"
    first = pretrained(_net(), path, train, {"arch": "toy"})
    second = pretrained(_net(), path, train, {"arch": "toy"})
    assert calls == [1]
    assert not second.training and not any(p.requires_grad for p in second.parameters())
    torch.testing.assert_close(first.state_dict(), second.state_dict())
