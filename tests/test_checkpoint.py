"""The epoch runner and the checkpoint every loop uses: a killed loop resumes to the same numbers."""

import json

import torch
from torch import nn

from bmnas.core.config import Config
from bmnas.engine.checkpoint import Checkpoint
from bmnas.engine.loop import new_state, run_epochs
from bmnas.engine.rundir import RunDir

X, Y = torch.randn(40, 5, generator=torch.Generator().manual_seed(0)), torch.arange(40) % 3


class Toy:
    """A linear classifier, Adam, a schedule and a shuffle generator; dropout draws from torch's RNG."""

    def __init__(self, seed: int):
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Dropout(0.3), nn.Linear(5, 3))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=0.05)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=3, gamma=0.5)
        self.shuffle = torch.Generator().manual_seed(seed)

    def checkpoint(self, run: RunDir | None, identity=None) -> Checkpoint:
        objects = {"model": self.model, "opt": self.opt, "sched": self.sched}
        return Checkpoint(run, "toy", Config(), objects, self.shuffle, "toy_history.jsonl", identity)

    def epoch(self, epoch: int, state: dict) -> dict:
        total = 0.0
        for idx in torch.randperm(40, generator=self.shuffle).split(8):
            loss = nn.functional.cross_entropy(self.model(X[idx]), Y[idx])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.sched.step()
            total += loss.item()
        state["best"] = min(state["best"], total)
        return {"epoch": epoch, "loss": total}


def _losses(state: dict) -> list[float]:
    return [h["loss"] for h in state["history"]]


def test_a_killed_loop_resumes_to_the_same_epochs_and_weights(tmp_path):
    toy = Toy(seed=1)
    straight = run_epochs(new_state(best=float("inf")), 5, toy.epoch, toy.checkpoint(None))

    run = RunDir(tmp_path)
    first = Toy(seed=1)
    killed = run_epochs(new_state(best=float("inf")), 5, first.epoch, first.checkpoint(run), stop_after=2)
    assert killed["epoch"] == 2 and _losses(killed) == _losses(straight)[:2]

    again = Toy(seed=7)  # other initial weights, RNG and generator: all must come from the checkpoint
    ckpt = again.checkpoint(run)
    state = ckpt.load()
    assert state["epoch"] == 2 and state["best"] == killed["best"]
    reported = []
    resumed = run_epochs(state, 5, again.epoch, ckpt, report=reported.append)
    assert _losses(resumed) == _losses(straight) and resumed["best"] == straight["best"]
    assert [r["epoch"] for r in reported] == [3, 4, 5] and all(r["seconds"] >= 0 for r in reported)
    for a, b in zip(again.model.parameters(), toy.model.parameters(), strict=True):
        assert torch.equal(a, b)
    rows = [json.loads(line) for line in (tmp_path / "toy_history.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == _losses(straight)
    saved = torch.load(tmp_path / "toy.ckpt.pt", weights_only=True)
    assert saved["state"]["epoch"] == 5 and set(saved) >= {"model", "opt", "sched", "shuffle", "torch_rng"}


def test_a_checkpoint_of_another_identity_is_not_resumed(tmp_path):
    run = RunDir(tmp_path)
    toy = Toy(seed=1)
    run_epochs(new_state(best=float("inf")), 1, toy.epoch, toy.checkpoint(run, {"genotype": {"cells": [1]}}))
    assert Toy(seed=2).checkpoint(run, {"genotype": {"cells": [2]}}).load() is None
    assert Toy(seed=2).checkpoint(run, {"genotype": {"cells": [1]}}).load()["epoch"] == 1


def test_without_a_run_directory_nothing_is_written_or_resumed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    toy = Toy(seed=1)
    ckpt = toy.checkpoint(None)
    state = run_epochs(new_state(best=float("inf")), 2, toy.epoch, ckpt)
    assert state["epoch"] == 2 and ckpt.load() is None and ckpt.path is None
    assert list(tmp_path.iterdir()) == []
