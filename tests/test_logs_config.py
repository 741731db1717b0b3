"""Logs people read: --logger csv|tensorboard|mlflow, RUN_DIR/run.log, plain progress lines, the model
card and environment, `bmnas config`, portable locks."""

import csv
import dataclasses
import importlib
import io
import json
import os
import sys
import types

import pytest
import yaml

from bmnas.cli.main import main
from bmnas.core.config import Config, ConfigError, doc_of, preset
from helpers import FAST, write_generic

LOUD = [a for a in FAST if a != "--quiet"]  # info lines and progress shown


def _csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One `bmnas run --logger csv` (module-wide: about 10 s), its printed output and stderr."""
    tmp = tmp_path_factory.mktemp("logged")
    data, out = write_generic(tmp / "d"), tmp / "run"
    printed, errors = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = printed, errors
    try:
        code = main(["run", "--data", str(data), "--out", str(out), "--logger", "csv", *LOUD])
    finally:
        sys.stdout, sys.stderr = saved
    assert code == 0, errors.getvalue()
    return out, data, printed.getvalue(), errors.getvalue()


def test_csv_logger_holds_every_row_the_run_wrote_once(finished_run):
    out, _, _, _ = finished_run
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    search = _csv(out / "logs" / "search.csv")
    assert [int(r["step"]) for r in search] == [h["epoch"] for h in history] == [1, 2]
    for row, h in zip(search, history, strict=True):
        assert float(row["val.accuracy"]) == pytest.approx(h["val"]["accuracy"])
        assert float(row["entropy.alpha"]) == pytest.approx(h["entropy"]["alpha"])
        assert "genotype.C" not in row  # architectures are not numbers to plot
    rerank = [json.loads(line) for line in (out / "rerank.jsonl").read_text().splitlines()]
    assert [float(r["val"]) for r in _csv(out / "logs" / "rerank.csv")] == [r["val"] for r in rerank]
    selection = json.loads((out / "baseline_sum_selection.json").read_text())
    curve = [float(r["val_accuracy"]) for r in _csv(out / "logs" / "baseline_sum_selection.csv")]
    assert curve == pytest.approx(selection["curve"])
    train = [json.loads(line) for line in (out / "train_history.jsonl").read_text().splitlines()]
    assert [float(r["train_loss"]) for r in _csv(out / "logs" / "train.csv")] == pytest.approx(
        [r["train_loss"] for r in train]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    (final,) = _csv(out / "logs" / "metrics.csv")
    assert float(final["test.accuracy"]) == pytest.approx(metrics["test"]["accuracy"])


def test_resumed_run_appends_to_run_log_and_logs_no_row_twice(finished_run):
    out, data, _, _ = finished_run
    before = (out / "run.log").read_text()
    assert main(["run", "--data", str(data), "--out", str(out), "--logger", "csv", *FAST]) == 0
    after = (out / "run.log").read_text()
    assert after.startswith(before) and after.count(" start: bmnas run ") == 2
    assert len(_csv(out / "logs" / "search.csv")) == 2  # the finished epochs were not logged again


def test_run_log_has_dated_log_lines_and_printed_tables_but_no_bars(finished_run):
    out, _, printed, errors = finished_run
    lines = (out / "run.log").read_text().splitlines()
    assert all(len(line) > 20 and line[4] == "-" and line[13] == ":" for line in lines), lines[:3]
    text = "\n".join(lines)
    assert " info bmnas.cli.options: data " in text
    assert " info bmnas.method.search: search epoch 2: " in text
    assert " print: * recommended: " in text and " print: cell1: " in text
    assert "select epochs" not in text  # bars go to the terminal only
    assert "* recommended: " in printed
    # stderr is not a terminal here: bars are plain dated lines, never carriage-return frames
    assert "\r" not in errors
    assert "bmnas: train concat_fc · select epochs · fold 3/3: 2/2 (100%)" in errors


def test_model_card_and_environment(finished_run):
    out, data, _, _ = finished_run
    m = json.loads((out / "metrics.json").read_text())
    env = m["environment"]
    assert env["bmnas"] == importlib.import_module("bmnas").__version__
    assert env["python"] == ".".join(map(str, sys.version_info[:3])) and env["device"] == "cpu"
    assert env["command"].startswith(f"bmnas run --data {data} --out {out} ")
    assert env["started"] <= env["ended"]
    from bmnas.core.schema import load_json
    from bmnas.core.schemas import METRICS

    assert load_json(out / "metrics.json", METRICS)["environment"] == env  # the schema reads it
    card = (out / "README.md").read_text()
    assert card.startswith("<!-- bmnas model card")
    assert "![the genotype as a graph](plots/genotype.png)" in card
    assert f"- samples: train {m['data']['sizes']['train']:,}" in card
    assert f"Recommended: **{m['recommended']['method']}**" in card
    assert f"| {m['baselines']['late_fusion']['test']['accuracy']:.4f} |" in card
    assert "cell1: x=" in card and f"| torch | {env['torch']} |" in card


def test_fresh_removes_bmnas_logs_and_card_but_never_a_users_readme(tmp_path, capsys):
    data, out = write_generic(tmp_path / "d"), tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), "--logger", "csv", *FAST]
    out.mkdir()
    (out / ".bmnas-run").write_text('{"format": "bmnas.run", "version": 1}')
    (out / "README.md").write_text("# my notes\n")
    assert main(["search", *argv[1:]]) == 0
    assert main(argv) == 0
    assert (out / "README.md").read_text() == "# my notes\n"  # the user's: kept, no card
    assert "is not bmnas' model card" in capsys.readouterr().err
    assert (out / "logs" / "train.csv").is_file() and (out / "run.log").is_file()
    (out / "README.md").unlink()
    assert main(argv) == 0 and (out / "README.md").read_text().startswith("<!-- bmnas model card")
    assert main(["search", *argv[1:], "--fresh", "--set", "search.epochs=1"]) == 0
    assert not (out / "logs" / "train.csv").exists() and not (out / "README.md").exists()


class _FakeMLflow(types.ModuleType):
    def __init__(self):
        super().__init__("mlflow")
        self.calls = []

    def start_run(self, run_name):
        self.calls.append(("start", run_name))

    def log_params(self, params):
        self.calls.append(("params", params))

    def log_metrics(self, values, step):
        self.calls.append(("metrics", step, values))

    def end_run(self):
        self.calls.append(("end",))


def test_mlflow_and_tensorboard_adapters(tmp_path, monkeypatch):
    from bmnas.report.loggers import RowFeed, create_loggers

    fake = _FakeMLflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    (logger,) = create_loggers(["mlflow"], tmp_path / "r1", {"search": {"epochs": 3}})
    feed = RowFeed([logger])
    rows = [{"epoch": 1, "train_loss": 0.5, "val": {"accuracy": 0.75}, "genotype": {"C": 8}}]
    feed(tmp_path / "history.jsonl", rows, True)
    feed(tmp_path / "history.jsonl", [*rows, {**rows[0], "epoch": 2}], True)  # only epoch 2 is new
    feed.close()
    assert fake.calls == [
        ("start", "r1"),
        ("params", {"search.epochs": "3"}),
        ("metrics", 1, {"search.epoch": 1.0, "search.train_loss": 0.5, "search.val.accuracy": 0.75}),
        ("metrics", 2, {"search.epoch": 2.0, "search.train_loss": 0.5, "search.val.accuracy": 0.75}),
        ("end",),
    ]

    class Writer:
        def __init__(self, log_dir):
            self.log_dir, self.scalars = log_dir, []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    board = types.ModuleType("torch.utils.tensorboard")
    board.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "tensorboard", types.ModuleType("tensorboard"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", board)
    (tb,) = create_loggers(["tensorboard"], tmp_path / "r2", {})
    RowFeed([tb])(tmp_path / "rerank.jsonl", [{"rank": 0, "val": 0.5, "curve": [0.1]}], False)
    assert tb.writer.log_dir == str(tmp_path / "r2" / "logs")
    assert tb.writer.scalars == [("rerank/rank", 0.0, 1), ("rerank/val", 0.5, 1)]


def test_missing_extra_and_unknown_logger_are_one_line(tmp_path, monkeypatch, capsys):
    data = write_generic(tmp_path / "d")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # not installed
    argv = ["search", "--data", str(data), "--out", str(tmp_path / "r"), *FAST]
    assert main([*argv, "--logger", "csv,mlflow"]) == 2
    err = capsys.readouterr().err
    assert err == "bmnas: error: --logger mlflow needs mlflow: pip install 'bmnas[mlflow]'\n"
    assert main([*argv, "--logger", "wandb"]) == 2
    assert "--logger 'wandb': unknown logger; choose from csv, tensorboard, mlflow" in capsys.readouterr().err
    assert not (tmp_path / "r" / "genotype.json").exists()


def test_plain_progress_lines_every_tenth_or_thirty_seconds(capsys):
    from bmnas.core.progress import PlainBar, label

    now = [0.0]
    bar = PlainBar(total=100, desc=label("sum", None, "fold 1/3"), clock=lambda: now[0])
    for _ in range(100):
        now[0] += 0.5  # 50 s in all: a line per 10 % once 3 s have passed since the last
        bar.update()
    bar.set_postfix(loss="0.1")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 1)[1] for line in lines][:2] == [
        "sum · fold 1/3: 10/100 (10%)",
        "sum · fold 1/3: 20/100 (20%)",
    ]
    assert len(lines) == 10 and lines[-1].endswith("100/100 (100%)")
    slow = PlainBar(total=1000, desc="x", clock=lambda: now[0])
    now[0] += 31
    slow.update()
    slow.update()  # no time passed: no line
    slow.close()
    assert capsys.readouterr().err.count("x: ") == 2  # the 30 s line and the end


def test_bmnas_config_prints_commented_yaml_that_reads_back(tmp_path, capsys):
    assert main(["config", "--dataset", "mmimdb", "--set", "search.epochs=3"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    keys = [line for line in lines if not line.lstrip().startswith("#")]
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("#"):
            above = lines[i - 1]
            assert above.lstrip().startswith("# ") and len(above.strip()) > 4, line  # every key explained
    cfg = Config.from_dict(yaml.safe_load(text))
    expected = Config.from_sources(None, ["search.epochs=3"], base=preset("mmimdb"))
    assert cfg == dataclasses.replace(expected, data=dataclasses.replace(expected.data, dataset="mmimdb"))
    assert len(keys) == 7 + 4 + sum(  # seed, threads, workers, device, precision, cuda_graphs, deterministic
        len(dataclasses.fields(s)) for s in (cfg.data, cfg.model, cfg.search, cfg.train)
    )
    (tmp_path / "c.yaml").write_text(text)
    assert main(["config", "--config", str(tmp_path / "c.yaml")]) == 0
    assert capsys.readouterr().out == text
    assert "# search epochs (a weight step and an α/β/γ step per batch)\n  epochs: 3\n" in text
    assert doc_of(type(cfg.train), "epochs") == "training epochs"


def test_unknown_keys_say_did_you_mean(tmp_path, capsys):
    assert main(["config", "--set", "search.epoch=3"]) == 2
    assert "search: unknown key(s) ['epoch'] (did you mean 'epochs'?)" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("modle:\n  C: 8\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['modle'\] \(did you mean 'model'\?\)"):
        Config.from_sources(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"\['zzz'\]; valid keys"):  # nothing close: no guess
        Config.from_sources(None, ["zzz=1"])


def test_locks_import_and_lock_without_fcntl(tmp_path, monkeypatch):
    """On Windows there is no fcntl: the module imports and locks byte 0 with msvcrt."""
    held = set()

    def locking(fd, mode, n):
        if mode == fake.LK_UNLCK:
            held.discard(fd)
        elif held:  # another descriptor holds it
            raise OSError(36, "Resource deadlock avoided")
        else:
            held.add(fd)

    fake = types.SimpleNamespace(LK_NBLCK=2, LK_UNLCK=0, locking=locking)
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    import bmnas.core.locks as real

    try:
        locks = importlib.reload(real)
        assert locks.fcntl is None
        assert locks.try_lock(tmp_path / "a.lock") and held
        assert (tmp_path / "a.lock").read_text().strip().isdigit()
        fd = os.open(tmp_path / "b.lock", os.O_RDWR | os.O_CREAT)
        assert not locks._lock(fd, wait=False)  # another descriptor: refused at once
        locks.release(tmp_path / "a.lock")
        assert not held and locks._lock(fd, wait=False)
    finally:
        monkeypatch.undo()
        importlib.reload(real)
