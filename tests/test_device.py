"""Devices, precision and the thread policy: clear errors, the device code path on the CPU, bf16 ≈ fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bmnas.cli.main import main
from bmnas.core.config import Config, ConfigError
from bmnas.core.errors import BmnasError
from bmnas.engine.device import (
    LARGE_STEP,
    DeviceError,
    DeviceSplit,
    autocast,
    choose_threads,
    on_device,
    resolve_device,
)
from bmnas.engine.loop import evaluate
from bmnas.features.synthetic import planted_interaction
from bmnas.method.search import build_hypernet, search
from helpers import PLANTED, write_generic


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_a_missing_gpu_is_a_clear_error(no_gpu):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"device 'cuda': this machine has no usable CUDA GPU") as err:
        resolve_device("cuda")
    assert isinstance(err.value, BmnasError) and "\n" not in str(err.value)


def test_a_gpu_index_past_the_last_one_names_the_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"has 2 CUDA GPU\(s\), cuda:0..cuda:1"):
        resolve_device("cuda:2")


def test_device_and_precision_are_checked_in_the_config():
    assert Config().device == "auto" and Config().precision == "fp32"
    assert Config.from_sources(None, ["device=cuda:3"]).device == "cuda:3"
    with pytest.raises(ConfigError, match="device: must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        Config.from_sources(None, ["device=tpu"])
    with pytest.raises(ConfigError, match="precision: must be fp32 or bf16, got 'fp16'"):
        Config.from_sources(None, ["precision=fp16"])


def test_cli_device_flag_without_a_gpu_is_one_line(no_gpu, tmp_path, capsys):
    data = write_generic(tmp_path / "data")
    argv = ["search", "--data", str(data), "--out", str(tmp_path / "r"), "--device", "cuda", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bmnas: error: device 'cuda': this machine has no usable CUDA GPU")
    assert err.count("\n") == 1


def test_cli_device_cpu_is_recorded(tmp_path, capsys):
    data = write_generic(tmp_path / "data")
    out = tmp_path / "r"
    sets = ["search.epochs=1", "model.C=8", "model.L=4", "search.batch_size=16", "search.rerank=0"]
    argv = ["search", "--data", str(data), "--out", str(out), "--device", "cpu", "--quiet"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    assert "device: cpu" in (out / "config.yaml").read_text()


def test_on_device_keeps_a_cpu_split_and_serves_the_same_batches():
    data = planted_interaction(n=200, L=4, seed=0)
    split = data["val"]
    assert on_device(split, torch.device("cpu")) is split  # the CPU path is the old one, untouched
    idx = np.array([3, 0, 7, 7, 1])
    want, want_y = split.batch(idx)
    paged = DeviceSplit(split, torch.device("cpu"))
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in split.features.items()}
    resident = DeviceSplit(split, torch.device("cpu"), tensors, torch.from_numpy(split.labels))
    for served in (paged, resident):
        feats, y = served.batch(idx)
        assert torch.equal(y, want_y)
        assert all(torch.equal(feats[k], want[k]) for k in want)
    cfg = Config.from_sources(None, ["model.C=8", "model.L=4"])
    torch.manual_seed(0)
    net = build_hypernet(data, cfg)
    plain = evaluate(net, split, data.task, 16)
    assert evaluate(net, resident, data.task, 16) == plain
    assert evaluate(net, paged, data.task, 16) == plain


def test_bf16_forward_matches_fp32_within_two_percent():
    data = planted_interaction(n=300, L=4, seed=1)
    cfg = Config.from_sources(None, ["model.C=16", "model.L=4"])
    torch.manual_seed(0)
    net = build_hypernet(data, cfg).eval()
    feats, _ = data["val"].batch(np.arange(len(data["val"])))
    with torch.no_grad():
        fp32 = net(feats)
        with autocast(torch.device("cpu"), "bf16"):
            bf16 = net(feats)
    assert bf16.dtype == torch.bfloat16  # autocast did run the linear layers in bf16
    rel = float((bf16.float() - fp32).norm() / fp32.norm())
    assert rel < 0.02, rel  # bf16 keeps 8 mantissa bits: ~0.4% per op


def test_bf16_search_finds_the_planted_pair_like_fp32():
    data = planted_interaction(n=3000, L=4, seed=0)
    fp32 = search(
        data, Config.from_sources(None, [*PLANTED, "search.rerank=0", "device=cpu"]), progress=False
    )
    bf16 = search(
        data,
        Config.from_sources(None, [*PLANTED, "search.rerank=0", "device=cpu", "precision=bf16"]),
        progress=False,
    )
    assert set(bf16.genotype.cells[0].inputs) == set(fp32.genotype.cells[0].inputs) == {"a.f2", "b.f1"}
    acc32, acc16 = fp32.history[-1]["val"]["accuracy"], bf16.history[-1]["val"]["accuracy"]
    assert abs(acc16 - acc32) <= 0.03, (acc32, acc16)


def test_thread_policy():
    small, large = LARGE_STEP - 1, LARGE_STEP
    assert choose_threads(small, cores=16, busy=0.0) == 1  # small ops: sync costs more than it saves
    assert choose_threads(large, cores=16, busy=0.0) == 16
    assert choose_threads(large, cores=16, busy=5.2) == 11  # leave the busy cores alone
    assert choose_threads(large, cores=2, busy=1.0) == 1
    assert choose_threads(large, cores=2, busy=7.0) == 1  # never fewer than one
