"""``workers``: independent networks trained side by side in worker processes give what one by one gives."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from bmnas.cli.main import main
from bmnas.core.config import Config, ConfigError
from bmnas.core.genotype import Genotype
from bmnas.engine.workers import AUTO_MIN_JOB, AUTO_MIN_WORK, WorkerError, resolve_workers
from bmnas.method.train import select_epochs
from bmnas.space import ops
from bmnas.space.baselines import baseline
from bmnas.space.ops import register_op
from helpers import FAST, linear_blobs, write_generic

SRC = Path(__file__).resolve().parents[1] / "src"


@register_op("test_fails_in_a_worker")
class FailsInAWorker(nn.Module):
    """Sum in the parent; raises in a worker process (a job that crashes)."""

    def __init__(self, C: int, L: int, dropout: float = 0.0):
        super().__init__()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if os.environ.get("BMNAS_TEST_PARENT") != str(os.getpid()):
            raise RuntimeError("boom")
        return x + y


@register_op("test_dies_in_a_worker")
class DiesInAWorker(FailsInAWorker):
    """Sum in the parent; ends its worker process at once (a worker killed mid-job)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if os.environ.get("BMNAS_TEST_PARENT") != str(os.getpid()):
            os._exit(3)
        return x + y


@pytest.fixture
def sendable_ops(monkeypatch):
    """Only ops a worker can import (another test file may have registered one in a function)."""

    def sendable(spec) -> bool:
        try:
            pickle.dumps(spec)
        except (pickle.PicklingError, AttributeError, TypeError):
            return False
        return True

    monkeypatch.setattr(ops, "_OPS", {n: s for n, s in ops._OPS.items() if sendable(s)})
    monkeypatch.setenv("BMNAS_TEST_PARENT", str(os.getpid()))


def _strip(x):
    """A run's JSON without wall times, for comparison."""
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if "seconds" not in k and k not in ("environment",)}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _lines(path: Path) -> list[dict]:
    return [_strip(json.loads(line)) for line in path.read_text().splitlines()]


def _rows(path: Path) -> list[dict]:
    rows = [_strip(json.loads(line)) for line in path.read_text().splitlines()]
    return sorted(rows, key=lambda r: r["rank"])


def _close(a, b, tol=1e-6) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tol
    return a == b


SMALL = ["--set", "train.epochs=3"]
LOUD = [a for a in FAST if a != "--quiet"]  # info records (how many workers) go to run.log


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    """``bmnas run`` with ``workers=1`` (one network at a time): (data dir, run dir)."""
    root = tmp_path_factory.mktemp("serial")
    data = write_generic(root / "d")
    out = root / "run"
    assert main(["run", "--data", str(data), "--out", str(out), *LOUD, *SMALL, "--set", "workers=1"]) == 0
    return data, out


def test_two_workers_give_the_same_run_as_one(serial_run, tmp_path, sendable_ops):
    data, one = serial_run
    two = tmp_path / "run"
    assert main(["run", "--data", str(data), "--out", str(two), *LOUD, *SMALL, "--set", "workers=2"]) == 0
    assert "2 worker processes started" in (two / "run.log").read_text()
    assert "worker processes started" not in (one / "run.log").read_text()
    a, b = _rows(one / "rerank.jsonl"), _rows(two / "rerank.jsonl")
    assert len(a) == 8 and _close(a, b)
    stages = sorted(p.name for p in one.glob("baseline_*_selection.json"))
    assert len(stages) == 5 and stages == sorted(p.name for p in two.glob("baseline_*_selection.json"))
    for name in stages:
        assert _close(
            _strip(json.loads((one / name).read_text())), _strip(json.loads((two / name).read_text()))
        )
    m1, m2 = (_strip(json.loads((r / "metrics.json").read_text())) for r in (one, two))
    assert m1["genotype"] == m2["genotype"] and m1["recommended"] == m2["recommended"]
    assert _close(m1["test"], m2["test"]) and _close(m1["baselines"], m2["baselines"])
    for name in ["train_history.jsonl", *(p.name for p in one.glob("baseline_*_history.jsonl"))]:
        assert _close(_lines(one / name), _lines(two / name)), name


def _workers_of(pid: int) -> set[int]:
    """The worker processes (``spawn_main``, not the resource tracker) started by ``pid``."""
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                out.add(int(child))
    return out


@pytest.mark.slow  # two runs in subprocesses, each starting its workers: about 20 s
def test_a_run_stopped_mid_reranking_with_workers_resumes_to_the_same_rows(serial_run, tmp_path):
    data, one = serial_run
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bmnas", "run", "--data", str(data), "--out", str(out), *FAST, *SMALL]
    cmd += ["--set", "workers=2", "--set", "train.epochs=3"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = out / "rerank.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before re-ranking had begun"
    workers = _workers_of(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    kept = log.read_text().count("\n")
    assert 1 <= kept < 8, "stopped mid re-ranking"
    time.sleep(0.5)
    assert not [p for p in workers if Path(f"/proc/{p}").exists()], "the workers were stopped"
    assert subprocess.run(cmd, env=env, capture_output=True, text=True).returncode == 0
    assert _close(_rows(one / "rerank.jsonl"), _rows(log))
    m1, m2 = (_strip(json.loads((r / "metrics.json").read_text())) for r in (one, out))
    assert m1["genotype"] == m2["genotype"] and _close(m1["test"], m2["test"])


def _net(op: str) -> tuple[Genotype, object]:
    """The fixed ``sum`` fusion of two blobs with its op replaced by ``op``, and the blobs."""
    data = linear_blobs(n=(60, 30, 30))
    g = baseline("sum", data.specs(), 8, 1, 2, 0).to_dict()
    text = json.dumps(g).replace('"op": "sum"', f'"op": "{op}"')
    assert op in text
    return Genotype.from_dict(json.loads(text)), data


def test_a_job_that_fails_in_a_worker_is_named_in_one_line(sendable_ops):
    g, data = _net("test_fails_in_a_worker")
    cfg = Config.from_sources(None, ["model.C=8", "model.L=1", "train.epochs=1", "workers=2"])
    with pytest.raises(WorkerError) as err:
        select_epochs(g, data, cfg, desc="candidate 3/8")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("candidate 3/8 · fold ") and "failed in a worker process: RuntimeError: boom" in msg
    one = Config.from_sources(None, ["model.C=8", "model.L=1", "train.epochs=1", "workers=1"])
    assert len(select_epochs(g, data, one).curve) == 1  # in this process the op works: the serial path


def test_a_worker_that_dies_is_named(sendable_ops):
    g, data = _net("test_dies_in_a_worker")
    cfg = Config.from_sources(None, ["model.C=8", "model.L=1", "train.epochs=1", "workers=2"])
    with pytest.raises(WorkerError, match=r"a worker process died .* while running: sum net · fold \d/3"):
        select_epochs(g, data, cfg, desc="sum net")


def test_auto_uses_the_idle_cores_for_big_jobs_only():
    big = max(AUTO_MIN_WORK, 24 * AUTO_MIN_JOB)
    assert resolve_workers(0, 24, big, cores=2, busy=0.2) == 2
    assert resolve_workers(0, 24, big, cores=2, busy=1.6) == 1  # another process holds a core
    assert resolve_workers(0, 24, AUTO_MIN_WORK - 1, cores=2, busy=0.0) == 1  # starting costs more
    assert resolve_workers(0, 1000, AUTO_MIN_WORK, cores=2, busy=0.0) == 1  # many tiny jobs
    assert resolve_workers(0, 3, 3 * big, cores=16, busy=0.0) == 3  # at most one per job
    assert resolve_workers(1, 24, big, cores=16, busy=0.0) == 1
    assert resolve_workers(4, 2, 0, cores=1, busy=1.0) == 2  # as set, at most one per job


def test_workers_must_be_a_count():
    with pytest.raises(ConfigError, match=r"workers: must be in \[0, 1024\]"):
        Config.from_sources(None, ["workers=-1"])
