"""``bmnas sweep`` end to end: an Optuna study in SQLite, best config and genotype, resume, errors."""

import csv
import json
import sys

import pytest
import yaml

from bmnas.cli.main import main
from bmnas.core.config import Config
from bmnas.core.genotype import Genotype
from helpers import write_generic

optuna = pytest.importorskip("optuna")

FAST = [
    "--set",
    "search.epochs=2",
    "--set",
    "search.rerank=2",
    "--set",
    "train.epochs=2",
    "--set",
    "search.batch_size=16",
    "--quiet",
]


def _sweep(data, out, trials, *extra):
    return main(["sweep", "--data", str(data), "--out", str(out), "--trials", str(trials), *FAST, *extra])


def _study(out):
    return optuna.load_study(study_name="bmnas", storage=f"sqlite:///{out / 'study.db'}")


def _count_searches(monkeypatch):
    import bmnas.studies.sweep

    calls = []
    real = bmnas.studies.sweep.search

    def counted(data, cfg, run, *a, **k):
        calls.append(run.path.name)
        return real(data, cfg, run, *a, **k)

    monkeypatch.setattr(bmnas.studies.sweep, "search", counted)  # where the sweep looks it up
    return calls


def test_sweep_writes_the_study_and_its_best_trial(tmp_path, capsys):
    data, out = write_generic(tmp_path / "d"), tmp_path / "sweep"
    assert _sweep(data, out, 3) == 0
    printed = capsys.readouterr().out
    study = _study(out)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.number for t in complete] == [0, 1, 2]
    best = study.best_trial
    # best_config.yaml is the best trial's configuration: the base settings plus its sampled values
    cfg = Config.from_dict(yaml.safe_load((out / "best_config.yaml").read_text()))
    assert cfg.to_dict() == best.user_attrs["config"]
    assert (cfg.model.cells, cfg.model.steps, cfg.model.C, cfg.model.L) == (
        best.params["model.cells"],
        best.params["model.steps"],
        best.params["model.C"],
        best.params["model.L"],
    )
    assert (cfg.search.lr, cfg.search.arch_lr, cfg.model.dropout) == (
        best.params["search.lr"],
        best.params["search.arch_lr"],
        best.params["model.dropout"],
    )
    assert (cfg.search.epochs, cfg.search.rerank, cfg.data.dir) == (2, 2, str(data))
    # genotype.json is the genotype the best trial's search wrote
    g = Genotype.load(out / "genotype.json")
    assert g == Genotype.load(out / "trials" / str(best.number) / "genotype.json")
    assert g.to_dict() == best.user_attrs["genotype"]
    assert len(g.cells) == best.params["model.cells"]
    # each objective is the val score of the re-ranked candidate the search chose, never test
    for t in complete:
        run = out / "trials" / str(t.number)
        chosen = Genotype.load(run / "genotype.json").to_dict()
        rows = [json.loads(line) for line in (run / "rerank.jsonl").read_text().splitlines()]
        assert len(rows) == 2
        [row] = [r for r in rows if r["genotype"] == chosen]
        assert t.value == row["val"] and t.user_attrs["source"] == row["source"]
        assert t.value == max(r["val"] for r in rows)
    with (out / "trials.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [int(r["number"]) for r in table] == [0, 1, 2]
    assert [float(r["value"]) for r in table] == [t.value for t in complete]
    assert [int(r["model.C"]) for r in table] == [t.params["model.C"] for t in complete]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the objective is named by how it was scored: 3-fold CV over train + val by default, not "val"
    assert f"best: trial {best.number}, 3-fold CV (train + val) {best.value:.4f}" in printed
    assert {t.user_attrs["scored_by"] for t in complete} == {"3-fold CV (train + val)"}


def test_sweep_resumes_and_skips_a_killed_trial(tmp_path, monkeypatch, capsys):
    data, out = write_generic(tmp_path / "d"), tmp_path / "sweep"
    calls = _count_searches(monkeypatch)
    assert _sweep(data, out, 2) == 0
    assert calls == ["0", "1"]
    first = {t.number: t.value for t in _study(out).trials}
    # a worker killed in the middle of trial 2: the trial stays RUNNING, its lock is free
    killed = _study(out).ask()
    (out / "trials" / str(killed.number)).mkdir()
    (out / "trials" / str(killed.number) / ".lock").write_text("12345\n")
    capsys.readouterr()
    assert _sweep(data, out, 3) == 0
    assert calls == ["0", "1", "3"]  # earlier trials not rerun; one more complete trial
    assert (
        f"bmnas: warning: sweep: trials [{killed.number}] were killed; marked failed"
        in capsys.readouterr().err
    )
    study = _study(out)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert {t.number: t.value for t in study.trials[:2]} == first
    # the study is already complete: the same command runs nothing and rewrites the outputs
    assert _sweep(data, out, 3) == 0 and calls == ["0", "1", "3"]
    assert Genotype.load(out / "genotype.json").to_dict() == study.best_trial.user_attrs["genotype"]
    # a worker with another configuration may not join the study
    capsys.readouterr()
    assert _sweep(data, out, 4, "--set", "search.epochs=3") == 2
    err = capsys.readouterr().err
    assert "study 'bmnas'" in err and "another configuration" in err and "search.epochs: 2 -> 3" in err
    assert calls == ["0", "1", "3"]


def test_sweep_refuses_an_invalid_space(tmp_path, capsys):
    data = write_generic(tmp_path / "d")
    space = tmp_path / "space.yaml"
    space.write_text("model.steps: [1, 2]\nsearch.lr: {low: 0.001, high: 0.01, log: true}\n")
    code = _sweep(data, tmp_path / "s", 2, "--space", str(space), "--set", "model.inner_multiplier=2")
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("bmnas: error: space: the combination {'model.steps': 1, 'search.lr': 0.001}")
    assert "model.inner_multiplier: must be <= steps (1)" in err
    assert not (tmp_path / "s" / "study.db").exists()


def test_sweep_without_optuna_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    data = write_generic(tmp_path / "d")
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    assert _sweep(data, tmp_path / "s", 2) == 2
    assert capsys.readouterr().err == (
        "bmnas: error: bmnas sweep needs optuna: pip install 'bmnas[sweep]' (or pip install optuna)\n"
    )


def test_two_workers_share_one_study(tmp_path):
    """Two processes started together on one ``--out``: one study, no trial run twice."""
    import os
    import re
    import subprocess

    data, out = write_generic(tmp_path / "d"), tmp_path / "sweep"
    cmd = [sys.executable, "-m", "bmnas", "sweep", "--data", str(data), "--out", str(out), "--trials", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    not_quiet = [a for a in FAST if a != "--quiet"]  # each worker logs its trials as info lines
    workers = [
        subprocess.Popen(
            [*cmd, *not_quiet], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    logs = [w.communicate(timeout=300)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    ran = [{int(n) for n in re.findall(r"bmnas: sweep trial (\d+):", log)} for log in logs]
    study = _study(out)
    complete = {t.number for t in study.trials if t.state.name == "COMPLETE"}
    assert not ran[0] & ran[1] and ran[0] | ran[1] == complete
    assert len(complete) in (4, 5)  # a trial still running when the 4th completes also finishes
    assert study.user_attrs["worker_starts"] == 2
    assert Genotype.load(out / "genotype.json").to_dict() == study.best_trial.user_attrs["genotype"]


def test_vector_features_leave_L_out_of_the_space(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "d"
    data.mkdir()
    for split, n in (("train", 30), ("val", 10), ("test", 10)):
        label = np.arange(n) % 3
        feats = {"a.v": rng.normal(size=(n, 5)), "b.v": rng.normal(size=(n, 4))}
        np.savez(data / f"{split}.npz", label=label, **{k: v.astype(np.float32) for k, v in feats.items()})
    out = tmp_path / "sweep"
    assert _sweep(data, out, 1) == 0
    [trial] = _study(out).trials
    assert sorted(trial.params) == [
        "model.C",
        "model.cells",
        "model.dropout",
        "model.steps",
        "search.arch_lr",
        "search.lr",
    ]
    assert yaml.safe_load((out / "best_config.yaml").read_text())["model"]["L"] == 1
