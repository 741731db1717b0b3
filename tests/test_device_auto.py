"""``device: auto`` measures: the pure choice from step times, the probe (candidates injected, so it
runs on a CPU-only machine), the line it logs, and a run that probes equals one with its device set."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from bmnas.cli.main import main
from bmnas.cli.search import ran_on
from bmnas.core.config import Config
from bmnas.engine import device as device_mod
from bmnas.engine.device import DeviceChoice, DeviceError, auto_candidates, faster_device, time_steps
from bmnas.engine.rundir import RunDir, RunError
from bmnas.features.synthetic import planted_interaction
from bmnas.method import placement as placement_mod
from bmnas.method import search as search_mod
from bmnas.method.placement import place
from bmnas.method.run import train_found
from helpers import FAST, write_generic

CUDA_CPU = {"cuda": "cuda", "cpu": "cpu"}
STAND_IN = {"gpu": "cpu", "cpu": "cpu"}  # a second candidate that is the CPU under another name


def test_the_faster_device_wins_counting_the_cpus_workers():
    assert faster_device({"cuda": 0.0031, "cpu": 0.041}) == "cuda"
    assert faster_device({"cuda": 0.0147, "cpu": 0.009}) == "cpu"  # a tiny network: the CPU is faster
    # 41 ms / 16 workers = 2.6 ms a network-step on the CPU, against 3.1 ms on the GPU
    assert faster_device({"cuda": 0.0031, "cpu": 0.041}, {"cpu": 16}) == "cpu"
    assert faster_device({"cuda": 0.0031, "cpu": 0.041}, {"cpu": 13}) == "cuda"  # 3.15 ms > 3.1 ms
    assert faster_device({"cuda": 0.01, "cpu": 0.02}, {"cpu": 2}) == "cpu"  # a tie goes to the CPU
    assert faster_device({"cpu": 0.02, "cuda:1": 0.01, "cuda:0": 0.01}) == "cuda:1"  # else the first


@pytest.mark.parametrize(
    "seconds, side, match",
    [
        ({}, None, "no candidate device was timed"),
        ({"cuda": 0.0, "cpu": 0.1}, None, r"positive seconds, got \{'cuda': 0.0\}"),
        ({"cuda": math.nan, "cpu": 0.1}, None, "positive seconds"),
        ({"cuda": 0.1, "cpu": 0.1}, {"cpu": 0}, "side by side must be >= 1"),
    ],
)
def test_faster_device_refuses_what_is_not_a_timing(seconds, side, match):
    with pytest.raises(DeviceError, match=match):
        faster_device(seconds, side)


def test_the_choice_reads_as_one_line_with_its_timings():
    search = DeviceChoice.measured("search", {"cuda": 0.0031, "cpu": 0.041}, CUDA_CPU)
    assert search.line() == "device auto: search on cuda (cuda 3.1 ms/step, cpu 41 ms/step)"
    assert search.device == "cuda"
    assert search.to_dict() == {"device": "cuda", "chosen": "cuda", "ms_per_step": {"cuda": 3.1, "cpu": 41.0}}
    ev = DeviceChoice.measured("evaluation", {"cuda": 0.0147, "cpu": 0.0123}, CUDA_CPU, {"cpu": 2})
    assert ev.line() == "device auto: evaluation on cpu (cuda 15 ms/step, cpu 12 ms/step / 2 workers)"
    assert ev.device == "cpu" and ev.to_dict()["side_by_side"] == {"cpu": 2}
    assert DeviceChoice("search", "cuda:1", "cuda:1").line() == "device auto: search on cuda:1 (not probed)"


def test_time_steps_warms_up_then_times_the_mean_step():
    calls = []
    seconds = time_steps(lambda: calls.append(1), torch.device("cpu"), warmup=3, steps=4)
    assert len(calls) == 7 and 0 < seconds < 0.01
    with pytest.raises(ValueError, match="steps must be >= 1"):
        time_steps(lambda: None, torch.device("cpu"), steps=0)


def test_without_a_gpu_there_is_one_candidate_and_no_probe(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_candidates() == {"cpu": "cpu"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert auto_candidates() == CUDA_CPU


def _never(*_):
    raise AssertionError("probed")


@pytest.mark.parametrize("setting, candidates", [("auto", {"cpu": "cpu"}), ("cpu", STAND_IN)])
def test_an_explicit_device_or_a_cpu_only_machine_never_probes(monkeypatch, setting, candidates):
    monkeypatch.setattr(placement_mod, "auto_candidates", lambda: candidates)
    monkeypatch.setattr(placement_mod, "time_steps", _never)
    data = planted_interaction(n=60, L=4, seed=0)
    p = place(data, Config.from_sources(None, ["model.C=8", "model.L=4", f"device={setting}"]), _never)
    assert (p.search.device, p.evaluation.device) == (setting, setting)
    assert not p.search.probed and not p.evaluation.probed
    assert p.to_dict() == {"setting": setting, "search": {"device": "cpu"}, "evaluation": {"device": "cpu"}}


def test_the_probe_times_each_phase_on_each_candidate_and_logs_the_choice(monkeypatch, caplog):
    monkeypatch.setattr(placement_mod, "auto_candidates", lambda: STAND_IN)
    timed = []
    times = iter([0.004, 0.041, 0.0147, 0.0123])  # search: gpu, cpu; evaluation: gpu, cpu

    def fake(step, device):
        step()  # the real probe step runs once
        timed.append(torch.get_num_threads())
        return next(times)

    monkeypatch.setattr(placement_mod, "time_steps", fake)
    data = planted_interaction(n=80, L=4, seed=0)
    cfg = Config.from_sources(None, ["model.C=8", "model.L=4", "search.batch_size=16", "device=auto"])
    rng = torch.get_rng_state()
    with device_mod.thread_policy(2), caplog.at_level(logging.INFO, logger="bmnas.method.placement"):
        p = place(data, cfg, lambda: 2)
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random stream is untouched
    assert timed == [2, 2, 1, 1]  # the evaluation's CPU steps timed on a worker's single thread
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("device auto")]
    assert lines == [
        "device auto: search on gpu (gpu 4 ms/step, cpu 41 ms/step)",
        "device auto: evaluation on cpu (gpu 15 ms/step / 2 workers, cpu 12 ms/step / 2 workers)",
    ]
    assert p.config(cfg, "search").device == "cpu"  # the stand-in's device
    assert p.to_dict()["evaluation"]["ms_per_step"] == {"gpu": 14.7, "cpu": 12.3}


def test_a_real_probe_runs_and_leaves_the_settings(monkeypatch):
    monkeypatch.setattr(placement_mod, "auto_candidates", lambda: STAND_IN)
    monkeypatch.setattr(placement_mod, "time_steps", lambda step, d: time_steps(step, d, warmup=1, steps=2))
    data = planted_interaction(n=80, L=4, seed=0)
    cfg = Config.from_sources(
        None, ["model.C=8", "model.L=4", "search.batch_size=16", "cuda_graphs=on", "device=auto"]
    )
    precision = torch.get_float32_matmul_precision()
    p = place(data, cfg)
    assert p.search.probed and set(p.search.seconds) == {"gpu", "cpu"}
    assert all(0 < t < 5 for t in p.evaluation.seconds.values())
    assert torch.get_float32_matmul_precision() == precision


def _results(out) -> dict:
    """What a run computed, without its timings and its device record."""
    drop = {"seconds", "train_seconds", "search_seconds", "data_seconds", "environment", "devices"}

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if k not in drop}
        return [clean(x) for x in v] if isinstance(v, list) else v

    files = {"genotype.json", "recommended_genotype.json", "metrics.json"}
    files |= {p.name for p in out.glob("*.jsonl")}
    got = {}
    for name in sorted(files):
        text = (out / name).read_text()
        rows = [json.loads(x) for x in text.splitlines()] if name.endswith("l") else json.loads(text)
        got[name] = clean(rows)
    weights = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    got["model.pt"] = {k: v.numpy().tolist() for k, v in weights.items()}
    return got


def test_a_run_that_probes_gives_the_files_of_its_device_set_explicitly(monkeypatch, tmp_path):
    monkeypatch.setattr(placement_mod, "auto_candidates", lambda: STAND_IN)
    monkeypatch.setattr(placement_mod, "time_steps", lambda step, d: time_steps(step, d, warmup=1, steps=2))
    data = write_generic(tmp_path / "d")
    sets = ["--set", "search.rerank=2", "--set", "train.select_folds=2", "--set", "workers=1"]
    for device in ("auto", "cpu"):
        argv = ["run", "--data", str(data), "--out", str(tmp_path / device), "--device", device]
        fast = [a for a in FAST if a != "--quiet"]  # run.log keeps the info lines the terminal shows
        assert main([*argv, *fast, *sets, "--no-baselines"]) == 0
    auto, cpu = tmp_path / "auto", tmp_path / "cpu"
    assert _results(auto) == _results(cpu)
    log = (auto / "run.log").read_text()
    assert "device auto: search on " in log and "device auto: evaluation on " in log
    assert "device auto" not in (cpu / "run.log").read_text()
    devices = json.loads((auto / "metrics.json").read_text())["devices"]
    assert devices["setting"] == "auto" and set(devices["search"]["ms_per_step"]) == {"gpu", "cpu"}
    assert json.loads((cpu / "metrics.json").read_text())["devices"]["search"] == {"device": "cpu"}
    assert np.isfinite(list(devices["evaluation"]["ms_per_step"].values())).all()


def _fast_probe(monkeypatch):
    monkeypatch.setattr(placement_mod, "auto_candidates", lambda: STAND_IN)
    monkeypatch.setattr(placement_mod, "time_steps", lambda step, d: time_steps(step, d, warmup=1, steps=1))


def test_a_search_without_reranking_probes_the_search_alone(monkeypatch):
    _fast_probe(monkeypatch)
    data = planted_interaction(n=80, L=4, seed=0)
    sets = ["model.C=8", "model.L=4", "search.batch_size=16", "search.epochs=1", "search.rerank=0"]
    sets.append("device=auto")  # BMNAS_TEST_DEVICE sets another default
    found = search_mod.search(data, Config.from_sources(None, sets), progress=False)
    assert found.placement.search.probed and not found.placement.evaluation.probed
    assert found.placement.evaluation.device == "auto"  # untouched: nothing of it ran


def test_bmnas_train_probes_the_evaluation_of_its_genotype(monkeypatch, tmp_path):
    _fast_probe(monkeypatch)
    data = planted_interaction(n=80, L=4, seed=0)
    cfg = Config.from_sources(
        None, ["model.C=8", "model.L=4", "train.epochs=1", "train.select_folds=0", "device=auto"]
    )
    genotype = search_mod.build_hypernet(data, cfg).genotype(search_mod.DeriveRules.of(cfg.search))
    train_found(genotype, data, cfg, tmp_path / "t", progress=False)
    devices = json.loads((tmp_path / "t" / "metrics.json").read_text())["devices"]
    assert devices["setting"] == "auto" and set(devices) == {"setting", "evaluation"}
    assert devices["evaluation"]["device"] == "cpu" and set(devices["evaluation"]["ms_per_step"]) == {
        "gpu",
        "cpu",
    }


def test_the_model_card_names_the_device_of_each_phase():
    devices = {"setting": "auto", "search": {"device": "cuda"}, "evaluation": {"device": "cpu"}}
    assert ran_on({"devices": devices}) == "search cuda, evaluation cpu"
    assert ran_on({"devices": {"setting": "auto", "evaluation": {"device": "cpu"}}}) == "cpu"
    assert ran_on({}) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_probe_times_cuda_against_the_cpu(caplog):
    data = planted_interaction(n=300, L=4, seed=0)
    cfg = Config.from_sources(None, ["model.C=16", "model.L=4", "device=auto"])
    with caplog.at_level(logging.INFO, logger="bmnas.method.placement"):
        p = place(data, cfg)
    assert set(p.search.seconds) == set(p.evaluation.seconds) == {"cuda", "cpu"}
    assert p.search.device == faster_device(p.search.seconds)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("device auto")]
    assert len(lines) == 2 and lines[0].startswith("device auto: search on ")


def test_a_resumed_run_keeps_the_devices_its_start_measured(monkeypatch, tmp_path, caplog):
    _fast_probe(monkeypatch)
    data = planted_interaction(n=80, L=4, seed=0)
    cfg = Config.from_sources(None, ["model.C=8", "model.L=4", "search.batch_size=16", "device=auto"])
    run = RunDir(tmp_path / "r")
    first = place(data, cfg, run=run)
    saved = json.loads((run.path / "devices.json").read_text())
    assert saved == first.to_dict() and set(saved) == {"setting", "search", "evaluation"}
    monkeypatch.setattr(placement_mod, "time_steps", _never)  # resumed: nothing is timed again
    with caplog.at_level(logging.INFO, logger="bmnas.method.placement"):
        again = place(data, cfg, _never, run=run)
    assert again.to_dict() == first.to_dict()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("device auto")]
    assert len(lines) == 2 and all(x.endswith("; measured when this run began)") for x in lines)
    (run.path / "devices.json").write_text('{"setting": "auto", "search": {"device": 3}}')
    with pytest.raises(RunError, match=r"devices.json.*search\.device.*delete it"):
        place(data, cfg, run=run)
