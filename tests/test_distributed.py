"""A real two-process gloo group on the CPU: ranks agree, match one process, resume; torchrun CLI.

What equality holds: each rank computes on rows ``batch[rank::2]`` and the gradients are
averaged, so a distributed step equals a one-process step whose loss is the mean of the two
shards' losses, each shard through the network on its own (BatchNorm's batch statistics are a
shard's: "ghost batches"). Parameters then agree to float32 rounding. A one-process run over the
whole global batch differs by exactly that BatchNorm statistic, so it is not compared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bmnas.core.config import Config
from bmnas.engine.augment import drop_modalities
from bmnas.engine.distributed import SINGLE, Ranks, current
from bmnas.engine.loop import Context, batch_indices, drop_shard, evaluate, loss_fn, optimizer_step
from bmnas.engine.rundir import RunDir
from bmnas.features.synthetic import planted_interaction
from bmnas.method.search import build_hypernet, search
from helpers import write_generic

WORLD = 2
SEARCH = [
    "model.C=8",
    "model.L=4",
    "model.cells=1",
    "model.steps=1",
    "model.dropout=0.0",
    "search.epochs=4",
    "search.batch_size=64",
    "search.arch_lr=1e-2",
    "search.rerank=0",
    "search.modality_dropout=0.3",
    "device=cpu",
]


def _worker(rank: int, init: str, out: str, job: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=WORLD)
    try:
        result = JOBS[job](Path(out))
        torch.save(result, Path(out) / f"{job}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path: Path, job: str) -> list[dict]:
    init = tmp_path / f"{job}.init"
    mp.spawn(_worker, args=(str(init), str(tmp_path), job), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"{job}.rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _no_writes() -> None:
    """On ranks other than 0, any write to a run directory fails the test."""
    if current().main:
        return

    def refuse(*_a, **_k):
        raise AssertionError(f"rank {current().rank} wrote to the run directory")

    for name in ("save_checkpoint", "write_history", "write_json", "write_jsonl", "write_config"):
        setattr(RunDir, name, refuse)


def _search_job(out: Path) -> dict:
    _no_writes()
    data = planted_interaction(n=900, L=4, seed=5)
    cfg = Config.from_sources(None, SEARCH)
    straight = search(data, cfg, RunDir(out / "straight", create=False), progress=False)
    dist.barrier()
    resumed_dir = out / "resumed"
    search(data, cfg, RunDir(resumed_dir, create=False), progress=False, stop_after=2)  # "killed"
    resumed = search(data, cfg, RunDir(resumed_dir, create=False), progress=False)
    return {
        "genotype": straight.genotype.to_dict(),
        "history": [h["genotype"] for h in straight.history],
        "val": [h["val"] for h in straight.history],
        "params": {k: v.clone() for k, v in straight.hypernet.state_dict().items()},
        "resumed_genotype": resumed.genotype.to_dict(),
        "resumed_params": {k: v.clone() for k, v in resumed.hypernet.state_dict().items()},
    }


STEPS_CFG = ["model.C=8", "model.L=4", "model.cells=2", "model.steps=2", "model.dropout=0.0"]


def _global_batches(n: int) -> list[np.ndarray]:
    return batch_indices(n, 32, torch.Generator().manual_seed(1), 2 * WORLD)


def _steps(ranks: Ranks) -> tuple[dict, dict]:
    """Weight and architecture steps on the same global batches; one process when ``ranks`` is SINGLE."""
    data = planted_interaction(n=300, L=4, seed=2)
    cfg = Config.from_sources(None, STEPS_CFG)
    torch.manual_seed(0)
    net = build_hypernet(data, cfg)
    w_opt = torch.optim.Adam(net.weight_parameters(), lr=1e-2)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=1e-2)
    train, task = data["train"], data.task
    for idx in _global_batches(len(train)):
        for opt, frozen in ((w_opt, net.arch_parameters()), (a_opt, net.weight_parameters())):
            if ranks.active:
                feats, y = train.batch(idx[ranks.rank :: ranks.world])
                optimizer_step(net, task, feats, y, opt, freeze=frozen, ranks=ranks)
            else:  # the mean of the shards' losses, each shard through the network alone
                for p in frozen:
                    p.requires_grad_(False)
                opt.zero_grad(set_to_none=True)
                shards = [train.batch(idx[r::WORLD]) for r in range(WORLD)]
                loss = sum(loss_fn(task, net(feats), y) for feats, y in shards) / WORLD
                loss.backward()
                opt.step()
                for p in frozen:
                    p.requires_grad_(True)
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    # BatchNorm's running statistics differ (two shard passes per step here, one per rank there):
    # the sharded evaluation is compared on a network in the same state everywhere
    torch.manual_seed(1)
    return params, evaluate(build_hypernet(data, cfg), data["val"], task, 16, ctx=Context(ranks=ranks))


def _steps_job(out: Path) -> dict:
    params, scores = _steps(current())
    return {"params": params, "scores": scores}


JOBS = {"search": _search_job, "steps": _steps_job}


def test_two_processes_agree_resume_and_only_rank_0_writes(tmp_path):
    for name in ("straight", "resumed"):
        (tmp_path / name).mkdir()
    r0, r1 = _spawn(tmp_path, "search")
    assert r0["genotype"] == r1["genotype"]
    assert r0["history"] == r1["history"]  # the same genotype after every epoch
    assert r0["val"] == r1["val"]  # metrics of the whole val split on every rank
    assert r0["params"].keys() == r1["params"].keys()
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k  # bitwise: identical updates
    # the "killed" search resumed to the same end as the uninterrupted one
    assert r0["resumed_genotype"] == r0["genotype"]
    for k in r0["params"]:
        torch.testing.assert_close(r0["resumed_params"][k], r0["params"][k], rtol=0, atol=1e-6)
    for name in ("straight", "resumed"):
        run = tmp_path / name
        assert json.loads((run / "genotype.json").read_text())["cells"] == r0["genotype"]["cells"]
        assert len((run / "history.jsonl").read_text().splitlines()) == 4


def test_two_processes_equal_one_process_on_the_same_shards(tmp_path):
    r0, r1 = _spawn(tmp_path, "steps")
    ref_params, ref_scores = _steps(SINGLE)
    for k, ref in ref_params.items():
        assert torch.equal(r0["params"][k], r1["params"][k]), k
        torch.testing.assert_close(r0["params"][k], ref, rtol=1e-4, atol=1e-5)
    gap = max(float((r0["params"][k] - v).abs().max()) for k, v in ref_params.items())
    assert gap < 1e-5, gap
    # evaluation over shards gathers the whole split: the same metrics as one process
    assert r0["scores"]["accuracy"] == r1["scores"]["accuracy"] == pytest.approx(ref_scores["accuracy"])
    assert r0["scores"]["loss"] == pytest.approx(ref_scores["loss"], rel=1e-4)


def test_modality_dropout_shards_are_the_masks_of_the_global_batch():
    feats = {"a.x": torch.randn(10, 2, 3), "b.y": torch.randn(10, 1, 3)}
    whole = drop_modalities(feats, 0.5, torch.Generator().manual_seed(4))
    for rank in range(WORLD):
        ranks = Ranks(rank, WORLD)
        mine = {k: v[rank::WORLD] for k, v in feats.items()}
        part = drop_shard(mine, 10, 0.5, torch.Generator().manual_seed(4), ranks)
        for k in feats:
            assert torch.equal(part[k], whole[k][rank::WORLD])
    assert any(bool((whole[k] == 0).all(dim=(1, 2)).any()) for k in whole)  # some modality was dropped


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun"
)
def test_torchrun_cli_search_on_two_processes(tmp_path):
    data = write_generic(tmp_path / "data")
    out = tmp_path / "run"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "bmnas", "search"]
    cmd += ["--data", str(data), "--out", str(out), "--device", "cpu", "--quiet"]
    for s in ("search.epochs=2", "model.C=8", "model.L=4", "search.batch_size=16", "search.rerank=0"):
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best genotype") == 1  # rank 0 alone reports
    assert (out / "genotype.json").is_file()
    assert len((out / "history.jsonl").read_text().splitlines()) == 2


def test_one_process_commands_refuse_torchrun(tmp_path, monkeypatch, capsys):
    from bmnas.cli.main import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    data = write_generic(tmp_path / "data")
    assert main(["run", "--data", str(data), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    want = "bmnas run runs in one process; under torchrun use `bmnas search` or `bmnas train`"
    assert err == f"bmnas: error: {want}\n"
    assert not (tmp_path / "r").exists()
