"""SMBO and ``bmnas ablate``: a valid genotype and a cost; the table, the plot, and resumption."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import bmnas.studies.ablate as ablate_mod
from bmnas.cli.main import main
from bmnas.core import locks
from bmnas.core.config import Config
from bmnas.core.genotype import Genotype
from bmnas.engine import saved_predictions
from bmnas.engine.rundir import RunError
from bmnas.features.pipeline import load_data
from bmnas.features.synthetic import planted_interaction
from bmnas.report.stats import paired_difference
from bmnas.space.found import FoundNet
from bmnas.studies.ablate import (
    METHODS,
    AblationOptions,
    Job,
    ablate,
    expand_methods,
    parse_seeds,
    plan,
    summarize,
)
from bmnas.studies.smbo import SMBOConfig, encode, smbo
from helpers import write_generic

TINY = [
    "model.C=8",
    "model.L=4",
    "model.dropout=0.0",
    "search.epochs=1",
    "search.batch_size=64",
    "train.epochs=1",
    "train.batch_size=64",
]
SMBO = SMBOConfig(budget=3, initial=2, candidates=16, epochs=1, trees=8)


@pytest.fixture(scope="module")
def data():
    return planted_interaction(n=160, L=4, channels=8, seed=0)


HOLD_LOCK = (
    "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
    "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, f'{os.getpid()}'.encode()); print('locked', flush=True); "
    "time.sleep(60)"
)


def test_smbo_returns_a_valid_genotype_and_its_cost_and_resumes(data, tmp_path):
    cfg = Config.from_sources(None, TINY)
    log = tmp_path / "smbo.jsonl"
    r = smbo(data, cfg, SMBO, log=log, progress=False)
    assert len(r.history) == 3 and [h["round"] for h in r.history] == [0, 1, 2]
    assert [h["predicted"] is None for h in r.history] == [True, True, False]  # surrogate from round 2
    assert r.seconds == pytest.approx(sum(h["seconds"] for h in r.history)) and r.seconds > 0
    assert r.score == max(h["score"] for h in r.history) and r.metric == "accuracy"
    assert len({json.dumps(h["genotype"], sort_keys=True) for h in r.history}) == 3  # no repeats
    assert FoundNet(r.genotype, 2).param_counts()["total"] > 0
    assert len(log.read_text().splitlines()) == 3
    again = smbo(data, cfg, SMBO, log=log, progress=False)  # nothing left: same answer, no new round
    assert again.genotype == r.genotype and again.seconds == r.seconds
    assert len(log.read_text().splitlines()) == 3
    # a killed run resumes from its log and makes the same choices
    log2 = tmp_path / "cut.jsonl"
    log2.write_text("".join(line + "\n" for line in log.read_text().splitlines()[:2]))
    resumed = smbo(data, cfg, SMBO, log=log2, progress=False)
    assert [h["genotype"] for h in resumed.history] == [h["genotype"] for h in r.history]


def test_encoding_is_one_hot_of_fixed_length(data):
    cfg = Config.from_sources(None, TINY)
    hist = smbo(data, cfg, SMBOConfig(budget=1, initial=1, epochs=1), progress=False).history
    g = Genotype.from_dict(hist[0]["genotype"])
    ops = cfg.model.ops
    v = encode(g, 2, 2, ops)
    K = len(data.feature_names)
    assert v.shape == (2 * (2 * (K + 1) + 2 * (len(ops) + 2 * 3)),)
    assert set(np.unique(v)) <= {0.0, 1.0}
    zero_steps = sum(s.op == "zero" for c in g.cells for s in c.steps)
    assert v.sum() == 2 * 2 + 4 + 2 * (4 - zero_steps)  # 2 inputs per Cell, 1 op + 2 inputs per step


def test_plan_methods_and_seeds(data):
    assert expand_methods(METHODS, data)[:3] == ["unimodal:a", "unimodal:b", "late_fusion"]
    assert expand_methods(["smbo", "unimodal:b", "sum"], data) == ["unimodal:b", "sum", "smbo"]
    with pytest.raises(ValueError, match="unknown method"):
        expand_methods(["darts"], data)
    jobs = plan(["sum", "random"], AblationOptions(seeds=(0, 1), random_samples=2))
    assert jobs == [
        Job("sum", 0),
        Job("random", 0, 0),
        Job("random", 0, 1),
        Job("sum", 1),
        Job("random", 1, 0),
        Job("random", 1, 1),
    ]
    assert parse_seeds("3", base=2) == (2, 3, 4) and parse_seeds("0,5") == (0, 5)
    with pytest.raises(ValueError):
        parse_seeds("0,0")


def test_summary_mean_and_sample_std():
    rows = [
        {
            "method": "m",
            "test": {"accuracy": a},
            "params": {"total": 10, "fusion": 6},
            "search_seconds": 1.0,
            "train_seconds": 2.0,
        }
        for a in (0.5, 0.7)
    ]
    (s,) = summarize(rows, ["m", "absent"], "accuracy")
    assert (s.runs, s.mean, s.params) == (2, pytest.approx(0.6), 10)
    assert s.std == pytest.approx(np.sqrt(0.02))  # ddof = 1
    assert summarize(rows[:1], ["m"], "accuracy")[0].std == 0.0


def test_ablate_writes_table_csv_plot_and_resumes(data, tmp_path, monkeypatch):
    cfg = Config.from_sources(None, TINY)
    opts = AblationOptions(seeds=(0,), random_samples=2, smbo=SMBO)
    res = ablate(data, cfg, tmp_path, opts, progress=False)
    names = [
        "unimodal:a",
        "unimodal:b",
        "late_fusion",
        "linear_probe",
        "sum",
        "concat_fc",
        "mha",
        "aoa",
        "random",
        "searched",
        "searched_paper",
        "searched_shared",
        "searched_no_zero",
        "smbo",
    ]
    assert [r.method for r in res.rows] == names
    for r in res.rows:
        assert r.runs == (2 if r.method == "random" else 1)
        assert r.method == "random" or r.std == 0.0  # a single seed
        assert 0.0 <= r.mean <= 1.0 and r.params > 0 and r.train_seconds > 0
        assert (r.search_seconds > 0) == (r.method.startswith("searched") or r.method == "smbo")
    assert res.cost_ratio == pytest.approx(res.rows[-1].search_seconds / res.rows[-5].search_seconds)
    md = (tmp_path / "ablation.md").read_text()
    table = md.split("\n\n")[0]  # the paired differences follow
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + len(names)
    assert "| searched | " in md.split("Paired differences")[1]
    assert "| sum | " in md and "Search cost, SMBO / BM-NAS" in md
    with (tmp_path / "ablation.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [t["method"] for t in table] == names and float(table[4]["std"]) == 0.0
    assert (tmp_path / "ablation.png").stat().st_size > 1000
    lines = (tmp_path / "ablate" / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(names) + 1  # random: 2 samples
    for line in lines:  # every run, the probe and the random samples too, kept its test predictions
        row = json.loads(line)
        job = Job(row["method"], row["seed"], row["sample"])
        saved = saved_predictions.load(tmp_path / "ablate" / job.key / saved_predictions.FILE)
        assert saved.metrics()["accuracy"] == row["test"]["accuracy"]
        assert np.array_equal(saved.labels, data["test"].labels)
    probe = json.loads(lines[3])
    assert probe["method"] == "linear_probe" and probe["C"] in (0.001, 0.01, 0.1, 1.0, 10.0)
    row = json.loads(lines[4])
    assert row["method"] == "sum" and Genotype.from_dict(row["genotype"]).cells[0].steps[0].op == "sum"
    paper = json.loads(lines[11])
    assert paper["method"] == "searched_paper"
    paper_ckpt = torch.load(
        tmp_path / "ablate" / "searched_paper" / "seed0" / "search.ckpt.pt", weights_only=False
    )
    assert paper_ckpt["config"]["search"]["distinct_steps"] is False
    assert paper_ckpt["config"]["search"]["zero_output"] is True
    shared = json.loads(lines[12])
    assert shared["method"] == "searched_shared"
    ckpt = torch.load(
        tmp_path / "ablate" / "searched_shared" / "seed0" / "search.ckpt.pt", weights_only=False
    )
    assert ckpt["config"]["model"]["input_mode"] == "shared"
    hist = (tmp_path / "ablate" / "searched_shared" / "seed0" / "history.jsonl").read_text()
    assert "zero" in json.loads(hist.splitlines()[0])["ops"]
    no_zero = (tmp_path / "ablate" / "searched_no_zero" / "seed0" / "history.jsonl").read_text()
    assert "zero" not in json.loads(no_zero.splitlines()[0])["ops"]

    # rerun: every entry is done, nothing is trained again
    calls = []
    real = ablate_mod.run_job
    monkeypatch.setattr(ablate_mod, "run_job", lambda job, *a, **k: calls.append(job) or real(job, *a, **k))
    again = ablate(data, cfg, tmp_path, opts, progress=False)
    assert calls == [] and again.rows == res.rows
    # drop one finished entry (as if killed before it was written): only that one runs again
    (tmp_path / "ablate" / "results.jsonl").write_text("\n".join(lines[:5] + lines[6:]) + "\n")
    ablate(data, cfg, tmp_path, opts, progress=False)
    assert calls == [Job("concat_fc", 0)]
    # a second seed adds only that seed's runs
    calls.clear()
    two = ablate(
        data, cfg, tmp_path, AblationOptions(methods=("sum",), seeds=(0, 1), smbo=SMBO), progress=False
    )
    assert calls == [Job("sum", 1)] and [(r.method, r.runs) for r in two.rows] == [("sum", 2)]
    # another configuration refuses to mix results, unless fresh
    other = Config.from_sources(None, TINY + ["model.C=16"])
    with pytest.raises(RunError, match="another configuration"):
        ablate(
            data, other, tmp_path, AblationOptions(methods=("sum",), seeds=(0,), smbo=SMBO), progress=False
        )
    calls.clear()
    fresh = ablate(
        data,
        other,
        tmp_path,
        AblationOptions(methods=("sum",), seeds=(0,), smbo=SMBO),
        progress=False,
        fresh=True,
    )
    assert calls == [Job("sum", 0)] and len(fresh.results) == 1


def test_cli_ablate(tmp_path, capsys):
    d = write_generic(tmp_path / "d")
    out = tmp_path / "run"
    args = [
        "ablate",
        "--data",
        str(d),
        "--out",
        str(out),
        "--seeds",
        "1",
        "--methods",
        "unimodal,late_fusion,aoa",
        "--quiet",
        *[x for kv in TINY for x in ("--set", kv)],
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for name in ("unimodal:image", "unimodal:audio", "late_fusion", "aoa"):
        assert f"| {name} |" in printed
    assert (
        (out / "ablation.md").exists() and (out / "ablation.csv").exists() and (out / "ablation.png").exists()
    )
    assert main([*args, "--methods", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_cli_ablate_paired_intervals_are_the_stats_of_the_saved_predictions(tmp_path, capsys, monkeypatch):
    d = write_generic(tmp_path / "d", n=(60, 30, 40))
    out = tmp_path / "run"
    args = ["ablate", "--data", str(d), "--out", str(out), "--seeds", "2", "--quiet"]
    args += ["--methods", "late_fusion,sum,linear_probe,searched", *[x for kv in TINY for x in ("--set", kv)]]
    assert main(args) == 0
    printed = capsys.readouterr().out
    with (out / "ablation.csv").open() as f:
        summary = {r["method"]: r for r in csv.DictReader(f)}
    hand = ("late_fusion", "sum")
    by_val = max(hand, key=lambda m: float(summary[m]["val_mean"]))
    by_test = max(hand, key=lambda m: float(summary[m]["mean"]))
    with (out / "ablation_paired.csv").open() as f:
        paired = list(csv.DictReader(f))
    expected = [(by_val, "val, test")] if by_val == by_test else [(by_val, "val"), (by_test, "test")]
    assert [(p["method"], p["against"], p["chosen_by"]) for p in paired] == [
        ("searched", m, k) for m, k in [*expected, ("linear_probe", "")]
    ]
    labels = np.load(d / "test.npz")["label"]

    def predicted(method, seed):
        saved = saved_predictions.load(out / "ablate" / method / f"seed{seed}" / saved_predictions.FILE)
        assert np.array_equal(saved.labels, labels)  # the test split's rows, in order
        return saved.predicted

    for p in paired:
        assert p["seeds"] == "0;1"
        want = paired_difference(
            "accuracy",
            [predicted("searched", s) for s in (0, 1)],
            [predicted(p["against"], s) for s in (0, 1)],
            labels,
        )
        assert (float(p["mean"]), float(p["lo"]), float(p["hi"])) == (want.mean, want.lo, want.hi)
        assert [float(x) for x in p["per_seed"].split(";")] == list(want.per_seed)
        assert p["verdict"] == want.verdict
        line = f"| searched | {p['against']} | {p['chosen_by'] or '–'} | {want.mean:+.4f} | "
        line += f"[{want.lo:+.4f}, {want.hi:+.4f}] | {' '.join(f'{x:+.4f}' for x in want.per_seed)} | 2 | "
        assert line + f"{want.verdict} |" in printed
    assert "Paired differences on the 40 test rows" in printed

    # an ablation written before bmnas kept predictions: the missing ones are computed again, the
    # runs resume (nothing is trained again) and their result rows stay
    results = (out / "ablate" / "results.jsonl").read_text()
    (out / "ablate" / "sum" / "seed1" / saved_predictions.FILE).unlink()
    (out / "ablate" / "linear_probe" / "seed0" / saved_predictions.FILE).write_bytes(b"damaged")
    calls = []
    real = ablate_mod.run_job
    monkeypatch.setattr(ablate_mod, "run_job", lambda job, *a, **k: calls.append(job) or real(job, *a, **k))
    assert main(args) == 0
    assert sorted(calls, key=str) == [Job("linear_probe", 0), Job("sum", 1)]
    assert (out / "ablate" / "results.jsonl").read_text() == results
    with (out / "ablation_paired.csv").open() as f:
        assert list(csv.DictReader(f)) == paired  # the same predictions again


def test_multilabel_paired_difference_is_in_weighted_f1(tmp_path):
    d = write_generic(tmp_path / "d", n=(60, 30, 40), multilabel=True)
    cfg = Config.from_sources(None, [*TINY, f"data.dir={d}", "train.select_folds=0", "search.rerank=0"])
    data = load_data(cfg, tmp_path / "cache", progress=False)
    opts = AblationOptions(methods=("sum", "searched"), seeds=(0,), smbo=SMBO)
    res = ablate(data, cfg, tmp_path / "out", opts, progress=False)
    (c,) = res.comparisons
    test = {r["method"]: r["test"]["f1_weighted"] for r in res.results}
    assert (c.method, c.against, c.chosen_by, c.seeds) == ("searched", "sum", "val, test", (0,))
    assert c.difference.metric == "f1_weighted"
    assert c.difference.per_seed == pytest.approx((test["searched"] - test["sum"],), abs=1e-12)
    assert c.difference.lo <= c.difference.mean <= c.difference.hi


def test_lock_and_duplicate_rows(data, tmp_path):
    cfg = Config.from_sources(None, TINY)
    opts = AblationOptions(methods=("unimodal:a",), seeds=(0,), smbo=SMBO)
    lock = tmp_path / "ablate" / "lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(  # another process holds the ablation's lock
        [sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=rf"in use by another ablation \(process {holder.pid}\)"):
            ablate(data, cfg, tmp_path, opts, progress=False)
    finally:
        holder.kill()
        holder.wait()
    res = ablate(data, cfg, tmp_path, opts, progress=False)  # the kernel dropped the dead process's lock
    assert res.rows[0].runs == 1 and locks.try_lock(lock)  # and ablate released its own
    locks.release(lock)
    results = tmp_path / "ablate" / "results.jsonl"
    results.write_text(results.read_text() * 2)  # e.g. two runs that raced before locks existed
    again = ablate(data, cfg, tmp_path, opts, progress=False)
    assert again.rows == res.rows and len(again.results) == 1
