"""A damaged or hostile file bmnas wrote is refused in one line, or (a memo of work) rebuilt.

Each case copies one real small run, changes one file the way a failing disk, a hand edit or a
hostile copy would, and drives the command line as a user meets it: ``bmnas predict``, ``show``,
``robustness``, ``run`` resuming, ``ablate`` resuming. A refusal is one ``bmnas: error:`` line naming
the file and the field (exit code 2) and changes nothing; a rebuilt file comes back as it was and
the run's results are those of the undamaged run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bmnas.cli import main as cli
from bmnas.core.data import MAX_OUTPUTS
from bmnas.core.errors import PreparedDataError
from bmnas.core.fileio import FileFormatError, sha256
from bmnas.core.schemas import POOLINGS
from bmnas.engine.rundir import RunDir
from bmnas.features.datasets.prepared import load_or_publish, publish_arrays, read_manifest, write_manifest
from bmnas.features.pooling import POOLING_MODES
from bmnas.features.validate import MAX_CLASSES
from helpers import FAST, make_run, write_generic

MODEL_FIX = "retrain (bmnas train) or restore the file"
METRICS_FIX = (
    "restore the file, or rerun the bmnas run or train command that wrote it (finished stages are not redone)"
)
CKPT_FIX = "delete it (or pass --fresh) to start that stage afresh"


# ------------------------------------------------------------------------------------ the runs
@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    """One finished ``bmnas run`` (search with re-ranking, found network, baselines): (data, run)."""
    return make_run(tmp_path_factory.mktemp("made"))


@pytest.fixture(scope="module")
def made_plain(tmp_path_factory) -> tuple[Path, Path]:
    """A run without re-ranking or baselines: its found network's selection is train_selection.json."""
    root = tmp_path_factory.mktemp("plain")
    data, out = write_generic(root / "d"), root / "run"
    assert cli.main(["run", "--data", str(data), "--out", str(out), *FAST, *PLAIN]) == 0
    return data, out


PLAIN = ["--no-baselines", "--set", "search.rerank=0"]


@pytest.fixture
def run(made, tmp_path) -> Path:
    """A copy of the run, the one each test damages."""
    return Path(shutil.copytree(made[1], tmp_path / "run"))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    return cli.main([*argv]), *capsys.readouterr()


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` but the lock (its holder's pid)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def refused(capsys, run: Path, *argv: str) -> str:
    """Run a command that must be refused: one error line, exit code 2, nothing changed."""
    before = snapshot(run.parent)
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("bmnas: error: "), err
    assert "internal error" not in err and out == ""
    assert snapshot(run.parent) == before
    return err.removeprefix("bmnas: error: ").rstrip("\n")


def edit(path: Path, change) -> None:
    """Change a torch file (``*.pt``) or a JSON file in place, as a hand edit would."""
    torch_file = path.suffix == ".pt"
    d = torch.load(path, weights_only=True) if torch_file else json.loads(path.read_text())
    change(d)
    if torch_file:
        torch.save(d, path)
    else:
        path.write_text(json.dumps(d))


def read(path: Path):
    return json.loads(path.read_text())


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_seconds(value):
    """A JSON value without its ``*seconds`` fields and the environment record (times differ between runs)."""
    if isinstance(value, dict):
        return {
            k: without_seconds(v)
            for k, v in value.items()
            if not k.endswith("seconds") and k != "environment"
        }
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def again(capsys, command: str, made, out: Path, *extra: str) -> list[str]:
    """``bmnas run`` (or ``ablate``) again into ``out``: exit code 0; returns its warning lines."""
    rc, _, err = run_cli(capsys, command, "--data", str(made[0]), "--out", str(out), *FAST, *extra)
    assert rc == 0 and "error" not in err, err
    return [line.removeprefix("bmnas: warning: ") for line in err.splitlines()]


# ------------------------------------------------------------------------------------ model.pt
MODEL_CASES = {
    "no genotype": (lambda d: d.pop("genotype"), "genotype is missing"),
    "10^15 outputs": (
        lambda d: d["task"].update(num_outputs=10**15),
        "task.num_outputs must be an integer in [1, 100000], got 1000000000000000",
    ),
    "string threshold": (
        lambda d: d.update(threshold="x"),
        "threshold must be a finite number in (0, 1), got 'x'",
    ),
    "NaN weights": (
        lambda d: d["state_dict"]["head.classifier.weight"].fill_(float("nan")),
        "weights of head.classifier.weight are not finite",
    ),
    "infinite BatchNorm statistics": (
        lambda d: d["state_dict"]["projections.0.bn.running_var"].fill_(float("inf")),
        "weights of projections.0.bn.running_var are not finite",
    ),
    "a string for a tensor": (
        lambda d: d["state_dict"].update({"projections.0.fc.bias": "x"}),
        "weights of projections.0.fc.bias are a str, not a tensor",
    ),
    "weights of another head": (
        lambda d: d["state_dict"].update({"head.classifier.weight": torch.zeros(5, 64)}),
        "weights of head.classifier.weight are torch.float32 (5, 64); the genotype builds torch.float32 "
        "(3, 64)",
    ),
    "a weight it does not build": (
        lambda d: d["state_dict"].update({"evil": torch.zeros(1)}),
        "the weights hold ['evil'], which it does not build (the genotype's network)",
    ),
    "unknown op": (
        lambda d: d["genotype"]["cells"][0]["steps"][0].update(op="rm_rf"),
        "genotype.cells[0].steps[0].op: unknown op 'rm_rf'",
    ),
    "list as task": (lambda d: d.update(task=[]), "task must be an object, got a list of 0 items"),
    "pooling": (lambda d: d.update(pooling="median"), "pooling must be one of ['max', 'avg'], got 'median'"),
    "too many class names": (
        lambda d: d.update(class_names=["c"] * (MAX_OUTPUTS + 1)),
        "class_names must be a list of at most 100000 items, got a list of 100001 items",
    ),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_a_damaged_model_file_is_refused_by_predict_naming_the_field(run, capsys, case):
    change, why = MODEL_CASES[case]
    edit(run / "model.pt", change)
    found = ("--stage", "train")  # the found network's model.pt, whichever network the run recommends
    err = refused(capsys, run, "predict", str(run), *found, "--out", str(run.parent / "p.csv"))
    if case == "unknown op":  # the message goes on with the registered ops
        assert err.startswith(f"{run}/model.pt: {why}; registered ops: [") and err.endswith(MODEL_FIX)
    else:
        assert err == f"{run}/model.pt: {why}; {MODEL_FIX}"
    assert not (run.parent / "p.csv").exists()
    if case == "NaN weights":  # the same check, whichever command loads the network
        assert refused(capsys, run, "robustness", str(run)) == f"{run}/model.pt: {why}; {MODEL_FIX}"


def test_a_genotype_that_would_allocate_gigabytes_is_refused_before_anything_is_built(run, capsys):
    edit(run / "model.pt", lambda d: d["genotype"].update(C=8192))  # 1.6 GB of weights if built
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    start = time.perf_counter()
    err = refused(capsys, run, "predict", str(run), "--stage", "train", "--out", str(run.parent / "p.csv"))
    assert time.perf_counter() - start < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 400_000  # far below 1.6 GB
    # the first projection's feature (its input channels) is whichever the search picked first
    assert re.fullmatch(
        rf"{re.escape(str(run))}/model\.pt: weights of projections\.0\.fc\.weight are "
        rf"torch\.float32 \(8, (\d+)\); the genotype builds torch\.float32 \(8192, \1\); "
        rf"{re.escape(MODEL_FIX)}",
        err,
    ), err


def test_a_baseline_checkpoint_with_nan_weights_is_refused(run, capsys):
    def poison(d):
        d["model"]["head.classifier.weight"].fill_(float("nan"))

    edit(run / "baseline_sum.ckpt.pt", poison)
    err = refused(capsys, run, "predict", str(run), "--stage", "baseline_sum", "--out", str(run / "p.csv"))
    assert err == (
        f"{run}/baseline_sum.ckpt.pt: weights of head.classifier.weight are not finite; rerun the bmnas run "
        f"or train command that trained it, or restore the file"
    )


def test_a_damaged_config_yaml_is_refused_when_the_network_is_loaded(run, capsys):
    (run / "config.yaml").write_text("- a list\n")
    err = refused(capsys, run, "predict", str(run), "--out", str(run.parent / "p.csv"))
    fix = "restore the file, or rerun the command that wrote it"
    assert err == f"{run}/config.yaml: must be an object, got a list of 1 items; {fix}"


def test_an_intact_copy_still_predicts_as_the_run_did(run, capsys):
    rc, out, err = run_cli(
        capsys, "predict", str(run), "--stage", "train", "--out", str(run.parent / "p.csv")
    )
    assert rc == 0 and err == "" and out.startswith("12 predictions of ")
    metrics = json.loads(out.splitlines()[1].removeprefix("metrics: "))
    assert metrics["accuracy"] == read(run / "metrics.json")["test"]["accuracy"]


# ------------------------------------------------------------------------------------ metrics.json
METRICS_CASES = {
    "a list": (lambda m: [1, 2], "must be an object, got a list of 2 items"),
    "baselines a list": (
        lambda m: {**m, "baselines": [1, 2]},
        "baselines must be an object of at most 10000 entries, got a list of 2 items",
    ),
    "string val": (
        lambda m: {**m, "baselines": {**m["baselines"], "sum": {**m["baselines"]["sum"], "val": "x"}}},
        "baselines.sum.val must be null or a finite number, got 'x'",
    ),
    "no metric in a row": (
        lambda m: {**m, "baselines": {**m["baselines"], "sum": {**m["baselines"]["sum"], "test": {}}}},
        "baselines.sum.test has no 'accuracy' (the run's metric)",
    ),
    "params total": (
        lambda m: {**m, "params": {"total": -1}},
        "params.total must be an integer >= 0, got -1",
    ),
    "recommended elsewhere": (
        lambda m: {**m, "recommended": {"method": "../../x", "reason": ""}},
        "recommended.method must be a name of 1 to 255 characters, without '/' and not starting with '.', "
        "got '../../x'",
    ),
}


@pytest.mark.parametrize("case", METRICS_CASES)
def test_a_damaged_metrics_json_is_refused_by_show(run, capsys, case):
    change, why = METRICS_CASES[case]
    m = read(run / "metrics.json")
    (run / "metrics.json").write_text(json.dumps(change(m)))
    err = refused(capsys, run, "show", str(run))
    assert err == f"{run}/metrics.json: {why}; {METRICS_FIX}"


def test_robustness_and_the_recommended_network_read_metrics_through_the_same_check(run, capsys):
    edit(run / "metrics.json", lambda m: m.update(baselines={"sum": 1}))
    why = f"{run}/metrics.json: baselines.sum must be an object, got 1; {METRICS_FIX}"
    assert refused(capsys, run, "robustness", str(run)) == why
    out = str(run.parent / "p.csv")
    assert refused(capsys, run, "predict", str(run), "--stage", "recommended", "--out", out) == why


def test_a_damaged_genotype_json_is_refused_by_show(run, capsys):
    (run / "genotype.json").write_text("[1]")
    assert refused(capsys, run, "show", str(run)) == f"{run}/genotype.json: expected a JSON object, got list"


# ------------------------------------------------------------------------------------ memos: redone
def test_a_damaged_train_selection_is_measured_again_with_a_warning(made_plain, tmp_path, capsys):
    run = Path(shutil.copytree(made_plain[1], tmp_path / "run"))
    selection, metrics = (read(run / n) for n in ("train_selection.json", "metrics.json"))
    (run / "train_selection.json").write_text("[1, 2]")
    warnings = again(capsys, "run", made_plain, run, *PLAIN)
    why = "must be an object, got a list of 2 items; measuring the selection again"
    assert f"{run}/train_selection.json: {why}" in warnings
    assert without_seconds(read(run / "train_selection.json")) == without_seconds(selection)
    assert without_seconds(read(run / "metrics.json")) == without_seconds(metrics)


def test_a_string_curve_never_reaches_metrics_json(run, made, capsys):
    metrics = read(run / "metrics.json")
    edit(run / "baseline_sum_selection.json", lambda d: d.update(curve=["x", "y"]))
    warnings = again(capsys, "run", made, run)
    why = "curve[0] must be a finite number, got 'x'; measuring the selection again"
    assert f"{run}/baseline_sum_selection.json: {why}" in warnings
    after = read(run / "metrics.json")
    assert isinstance(after["baselines"]["sum"]["val"], float)
    assert without_seconds(after) == without_seconds(metrics)


def test_a_damaged_rerank_row_is_redone_and_the_log_rebuilt(run, made, capsys):
    rows = rows_of(run / "rerank.jsonl")
    genotype, metrics = (run / "genotype.json").read_bytes(), read(run / "metrics.json")
    damaged = [*rows[:1], {**rows[1], "val": "x"}, *rows[2:]]
    (run / "rerank.jsonl").write_text("".join(json.dumps(r) + "\n" for r in damaged))
    warnings = again(capsys, "run", made, run)
    why = "val must be a finite number, got 'x'; re-ranking that candidate again"
    assert f"{run}/rerank.jsonl, line 2: {why}" in warnings
    after = rows_of(run / "rerank.jsonl")
    assert len(after) == len(rows) and after[-1]["rank"] == 1  # the redone candidate, appended
    assert sorted(map(json.dumps, without_seconds(after))) == sorted(map(json.dumps, without_seconds(rows)))
    assert (run / "genotype.json").read_bytes() == genotype
    assert without_seconds(read(run / "metrics.json")) == without_seconds(metrics)
    assert not [w for w in again(capsys, "run", made, run) if "rerank.jsonl" in w]  # the log was rebuilt


# ------------------------------------------------------------------------------------ resuming: refused
def test_a_damaged_fingerprint_is_refused_by_field(run, made, capsys):
    edit(run / "fingerprint.json", lambda d: d["data"]["sizes"].update(train="x"))
    err = refused(capsys, run, "run", "--data", str(made[0]), "--out", str(run), *FAST)
    fix = "restore it, or use --fresh (discards this run's results) or another --out"
    assert err == f"{run}/fingerprint.json: data.sizes.train must be an integer >= 0, got 'x'; {fix}"


HISTORY_CASES = {
    "string score": (
        lambda h: h[0]["val"].update(accuracy="x"),
        "state.history[0].val.accuracy must be a number, got 'x'",
    ),
    "broken genotype": (
        lambda h: h[1]["genotype"].update(C=-1),
        "state.history[1].genotype: genotype.C: must be an integer in [1, 8192], got -1",
    ),
    "an epoch lost": (lambda h: h.pop(0), "state.history holds epochs [2], not 1..2"),
}


@pytest.mark.parametrize("case", HISTORY_CASES)
def test_a_damaged_search_history_in_the_checkpoint_is_refused(run, made, capsys, case):
    change, why = HISTORY_CASES[case]
    edit(run / "search.ckpt.pt", lambda c: change(c["state"]["history"]))
    err = refused(capsys, run, "run", "--data", str(made[0]), "--out", str(run), *FAST)
    assert err == f"{run}/search.ckpt.pt: damaged checkpoint: {why}; {CKPT_FIX}"


def test_checkpoint_weights_of_another_shape_are_refused_when_resumed(run, made, capsys):
    edit(run / "train.ckpt.pt", lambda c: c["model"].update({"head.classifier.weight": torch.zeros(1)}))
    rc, _, err = run_cli(capsys, "run", "--data", str(made[0]), "--out", str(run), *FAST)
    line = err.splitlines()[-1]
    assert rc == 2 and line.startswith(
        f"bmnas: error: {run}/train.ckpt.pt: damaged checkpoint (model does not"
    )
    assert line.endswith(CKPT_FIX) and "internal error" not in err


def test_a_damaged_history_file_is_refused_by_line_and_field(run, made):
    lines = (run / "history.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    (run / "history.jsonl").write_text("\n".join([lines[0], json.dumps({**row, "epoch": "2"})]) + "\n")
    with pytest.raises(FileFormatError) as err:
        RunDir(run, create=False).read_history()
    assert str(err.value) == f"{run}/history.jsonl, line 2: epoch must be an integer >= 1, got '2'"
    undamaged = RunDir(made[1], create=False).read_history("train_history.jsonl")  # the other history reads
    assert RunDir(run, create=False).read_history("train_history.jsonl") == undamaged and undamaged


# ------------------------------------------------------------------------------------ ablate, SMBO
ABLATE = ["--methods", "late_fusion,smbo", "--seeds", "1", "--smbo-budget", "3", "--smbo-epochs", "1"]


@pytest.fixture(scope="module")
def ablated(made, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ablate") / "out"
    assert cli.main(["ablate", "--data", str(made[0]), "--out", str(out), *FAST, *ABLATE]) == 0
    return out


def test_a_damaged_ablation_result_is_run_again(ablated, made, tmp_path, capsys):
    out = Path(shutil.copytree(ablated, tmp_path / "out"))
    results = rows_of(out / "ablate" / "results.jsonl")
    assert [r["method"] for r in results] == ["late_fusion", "smbo"]
    table = (out / "ablation.md").read_text().split("| search s")[0]
    (out / "ablate" / "results.jsonl").write_text(
        json.dumps({**results[0], "seed": "one"}) + "\n" + json.dumps(results[1]) + "\n"
    )
    warnings = again(capsys, "ablate", made, out, *ABLATE)
    path = out / "ablate" / "results.jsonl"
    assert (
        f"{path}, line 1: seed must be an integer in [0, 4294967295], got 'one'; running that job again"
        in warnings
    )
    after = rows_of(path)
    assert [r["method"] for r in after] == ["smbo", "late_fusion"]  # the damaged row gone, the job redone
    assert without_seconds(after[1]) == without_seconds(results[0])
    assert (out / "ablation.md").read_text().split("| search s")[0] == table


def test_damaged_smbo_rounds_are_run_again_from_the_first_damaged_one(ablated, made, tmp_path, capsys):
    out = Path(shutil.copytree(ablated, tmp_path / "out"))
    logs = list(out.rglob("smbo.jsonl"))
    assert len(logs) == 1
    log, results = logs[0], rows_of(out / "ablate" / "results.jsonl")
    rounds = rows_of(log)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    # killed while training SMBO's winner: its result is not written yet; and round 1 is damaged
    (out / "ablate" / "results.jsonl").write_text(json.dumps(results[0]) + "\n")
    bad = {**rounds[1], "genotype": {**rounds[1]["genotype"], "C": 5}}
    log.write_text("".join(json.dumps(r) + "\n" for r in [rounds[0], bad, rounds[2]]))
    warnings = again(capsys, "ablate", made, out, *ABLATE)
    why = "genotype is not one of this search space (other C, L or features, or more Cells or steps)"
    assert f"{log}, line 2: {why}; running that round and the later ones again" in warnings
    assert without_seconds(rows_of(log)) == without_seconds(rounds)  # the same rounds, redone
    assert without_seconds(rows_of(out / "ablate" / "results.jsonl")[1]) == without_seconds(results[1])


# ------------------------------------------------------------------------------------ prepared data
def test_a_prepared_manifest_that_lies_about_its_files_is_refused_and_prepared_again(tmp_path, caplog):
    folder = tmp_path / "prepared"
    arrays = {"train.label": np.arange(4)}
    publish_arrays(folder, arrays, format=1)
    assert read_manifest(folder, format=1)["files"].keys() == {"train.label.npy"}
    manifest = json.loads((folder / "manifest.json").read_text())
    cases = {
        "escape": (
            {**manifest, "files": {"../../etc/passwd": "0" * 64}},
            "files has the key '../../etc/passwd'",
        ),
        "checksum": (
            {**manifest, "files": {"train.label.npy": "0" * 64}},
            "sha256 is not the checksum of its files (damaged or edited)",
        ),
        "list": ([], "must be an object, got a list of 0 items"),
    }
    for damaged, why in cases.values():
        (folder / "manifest.json").write_text(json.dumps(damaged))
        with pytest.raises(PreparedDataError) as err:
            read_manifest(folder, format=1)
        assert str(err.value).startswith(f"{folder}/manifest.json: ") and why in str(err.value)

    def write(staging: Path) -> None:
        np.save(staging / "train.label.npy", arrays["train.label"], allow_pickle=False)
        write_manifest(staging, {"train.label.npy": sha256(staging / "train.label.npy")}, format=1)

    with caplog.at_level(logging.WARNING, logger="bmnas.features.datasets.prepared"):
        rebuilt = load_or_publish(folder, write, "toy data")
    assert rebuilt["sha256"] == manifest["sha256"] and rebuilt["files"] == manifest["files"]
    assert f"toy data at {folder} is unusable" in caplog.text and "preparing it again" in caplog.text
    assert load_or_publish(folder, lambda staging: pytest.fail("prepared twice"), "toy data") == rebuilt


def test_the_bounds_agree_with_the_checks_of_the_data():
    assert MAX_OUTPUTS == MAX_CLASSES and POOLINGS == POOLING_MODES
