"""The command line end to end on the generic format: files of a run, train from a genotype, resume."""

import json

import numpy as np
import pytest
import yaml

from bmnas.cli.main import main
from bmnas.core.genotype import Genotype
from helpers import FAST, write_generic


def test_run_writes_a_complete_run_directory(tmp_path, capsys):
    data = write_generic(tmp_path / "d")
    out = tmp_path / "run"
    assert main(["run", "--data", str(data), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    baselines = ("unimodal:image", "unimodal:audio", "late_fusion", "sum", "concat_fc", "linear_probe")
    for name in (*baselines, "searched"):
        assert f" {name} " in printed
    assert "* recommended: " in printed
    assert " cv accuracy " in printed and "highest 3-fold CV (train + val) accuracy" in printed  # the default
    assert "genotype chosen by re-ranking " in printed and "hypernet's best epoch" in printed
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["search"]["epochs"] == 2 and cfg["data"]["dir"] == str(data)
    g = Genotype.load(out / "genotype.json")
    assert len(g.cells) == 2
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    m = json.loads((out / "metrics.json").read_text())
    # the test accuracy is that of the refit network's predictions: recompute it from model.pt
    from bmnas.serve.predict import load

    test = np.load(data / "test.npz")
    labels = test["label"]
    pred = load(out).predict({k: test[k] for k in test.files if k != "label"}).predicted
    assert m["test"]["accuracy"] == pytest.approx(float((pred == labels).mean()))
    assert m["params"]["total"] == m["params"]["fusion"] + m["params"]["classifier"] > 0
    assert m["search_seconds"] > 0 and m["train_seconds"] > 0
    assert set(m["baselines"]) == set(baselines)
    # the recommended network is the best on val among the searched one and the hand-made fusions
    fusions = {
        "searched": m["val"],
        **{n: m["baselines"][n]["val"] for n in ("late_fusion", "sum", "concat_fc")},
    }
    assert m["recommended"]["method"] == max(fusions, key=lambda n: (fusions[n], n == "searched"))
    assert fusions[m["recommended"]["method"]] >= fusions["late_fusion"]
    assert Genotype.load(out / "recommended_genotype.json").to_dict() == m["recommended"]["genotype"]
    assert (out / "search.ckpt.pt").exists() and (out / "train.ckpt.pt").exists()
    assert {p.name for p in (out / "plots").iterdir()} == {
        "search_curves.png",
        "arch_weights.png",
        "search_diagnostics.png",
        "genotype.png",
    }
    # collapse diagnostics per epoch: normalised entropies in [0, 1], op shares summing to 1
    for h in history:
        assert set(h["entropy"]) == {"alpha", "beta", "gamma"}
        assert abs(sum(h["op_share"].values()) - 1.0) < 1e-6

    # a second call resumes: nothing left to do, same genotype and metrics
    assert main(["run", "--data", str(data), "--out", str(out), *FAST]) == 0
    assert Genotype.load(out / "genotype.json") == g
    assert json.loads((out / "metrics.json").read_text())["test"] == m["test"]

    # the evaluation stage alone, from a genotype file, into another directory
    out2 = tmp_path / "train_only"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(out2),
                "--genotype",
                str(out / "genotype.json"),
                *FAST,
            ]
        )
        == 0
    )
    assert json.loads((out2 / "metrics.json").read_text())["test"] == m["test"]
    assert main(["show", str(out)]) == 0
    assert "cell1: x=" in capsys.readouterr().out


def test_yaml_config_and_overrides(tmp_path):
    data = write_generic(tmp_path / "d")
    conf = tmp_path / "c.yaml"
    conf.write_text("model:\n  C: 8\n  L: 4\n  cells: 1\n  steps: 1\nsearch:\n  epochs: 1\n")
    out = tmp_path / "r"
    assert (
        main(
            [
                "search",
                "--data",
                str(data),
                "--out",
                str(out),
                "--config",
                str(conf),
                "--set",
                "search.batch_size=8",
                "--quiet",
            ]
        )
        == 0
    )
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["model"]["cells"], cfg["search"]["batch_size"], cfg["search"]["epochs"]) == (1, 8, 1)
    assert len(Genotype.load(out / "genotype.json").cells) == 1


def test_show_prints_the_results_table_and_version(tmp_path, capsys):
    data = write_generic(tmp_path / "d")
    out = tmp_path / "run"
    assert main(["run", "--data", str(data), "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert shown.startswith("cell1: ")
    assert f"{m['test']['accuracy']:.4f}" in shown and "late_fusion" in shown
    assert f"* recommended: {m['recommended']['method']}" in shown
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("bmnas 0.")


def test_verbose_shows_debug_lines_and_quiet_shows_only_warnings(tmp_path, capsys, caplog):
    """--quiet / --verbose before the command (global) or after it; logging is set up by main only."""
    data = write_generic(tmp_path / "d")
    argv = ["search", "--data", str(data), "--set", "search.epochs=1", "--set", "search.rerank=0"]
    argv += ["--set", "model.C=8", "--set", "model.L=4"]
    seen = {}
    for name, before, after in [
        ("verbose", ["--verbose"], []),
        ("default", [], []),
        ("quiet", [], ["--quiet"]),
    ]:
        caplog.clear()
        assert main([*before, *argv, "--out", str(tmp_path / name), *after]) == 0
        levels = {r.levelname for r in caplog.records if r.name.startswith("bmnas")}
        seen[name] = capsys.readouterr().err, levels
    err, levels = seen["verbose"]
    assert "bmnas: debug: bmnas.cli.options: configuration:" in err and "bmnas: data " in err
    assert {"DEBUG", "INFO"} <= levels
    err, levels = seen["default"]
    assert (
        f"bmnas: data {data}: multiclass with 3 outputs; 4 features; train 40, val 12, test 12 samples" in err
    )
    assert "INFO" in levels and "DEBUG" not in levels and "bmnas: debug:" not in err
    err, levels = seen["quiet"]
    assert all(line.startswith("bmnas: warning: ") for line in err.splitlines()), err  # no bars, no info
    assert levels <= {"WARNING"}
    with pytest.raises(SystemExit):
        main(["--quiet", "--verbose", *argv, "--out", str(tmp_path / "both")])


COMMANDS = [
    "run",
    "search",
    "train",
    "ablate",
    "sweep",
    "pretrain",
    "export",
    "show",
    "predict",
    "export-model",
    "robustness",
    "config",
]


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_command_in_plain_text_and_ends_with_examples(capsys):
    import shlex

    from bmnas.cli.main import build_parser
    from bmnas.cli.options import EXAMPLES

    top = _help([], capsys)
    assert "``" not in top and ":func:" not in top  # plain text, not reStructuredText
    for command in COMMANDS:
        assert f"\n    {command} " in top or f"\n    {command}\n" in top, command
    assert "\nExamples:\n  bmnas " in top
    for command in COMMANDS:
        text = _help([command], capsys)
        examples = text[text.index("\nExamples:\n") :].splitlines()[2:]
        assert 1 <= len(examples) <= 3 and all(e.startswith("  bmnas ") for e in examples), text
        assert "configs/" not in text
    assert set(EXAMPLES) == {None, *COMMANDS}
    for line, _ in (row for rows in EXAMPLES.values() for row in rows):
        if "--help" not in line:
            build_parser().parse_args(shlex.split(line)[1:])  # every example is a valid command line


def test_help_and_importing_the_command_line_load_no_torch():
    """Every command imports its work when it runs: `bmnas --help` (and each command's) stays fast."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, contextlib, io\n"
        "from bmnas.cli.main import main\n"
        f"for argv in [[], *([c] for c in {COMMANDS!r})]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "        main([*argv, '--help'])\n"
        "    assert 'Examples:' in out.getvalue(), argv\n"
        "loaded = [m for m in ('torch', 'matplotlib') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_debug_is_taken_before_or_after_the_command(tmp_path, monkeypatch, capsys):
    import bmnas.cli.serve
    from bmnas.cli.main import build_parser

    parse = build_parser().parse_args
    run = ["run", "--data", "DIR", "--out", "o"]
    flags = [
        (o.debug, o.quiet)
        for o in (parse(run), parse(["--debug", *run]), parse([*run, "--debug", "--quiet"]))
    ]
    assert flags == [(False, False), (True, False), (True, True)]

    def buggy(args):
        return {}["nothing"]

    monkeypatch.setattr(bmnas.cli.serve, "show_command", buggy)
    monkeypatch.delenv("BMNAS_DEBUG", raising=False)
    assert main(["show", str(tmp_path)]) == 1  # without --debug: one line, no traceback
    assert capsys.readouterr().err.startswith("bmnas: internal error: KeyError: 'nothing' (at test_cli.py:")
    for argv in (["--debug", "show", str(tmp_path)], ["show", str(tmp_path), "--debug"]):
        with pytest.raises(KeyError, match="nothing"):  # with it: the traceback, wherever it stands
            main(argv)


def test_ablate_option_defaults_are_the_librarys():
    """The parser keeps torch-free copies of ablate's methods and SMBO budget; they are the library's."""
    from bmnas.cli.main import build_parser
    from bmnas.studies.ablate import METHODS
    from bmnas.studies.smbo import SMBOConfig

    args = build_parser().parse_args(["ablate", "--data", "DIR", "--out", "o"])
    assert args.methods.split(",") == list(METHODS)
    assert (args.smbo_budget, args.smbo_epochs) == (SMBOConfig.budget, SMBOConfig.epochs) == (20, 2)


@pytest.mark.parametrize("command", COMMANDS)
def test_ctrl_c_in_any_command_is_one_line_and_exit_130(command, tmp_path, monkeypatch, capsys):
    import importlib

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = str(tmp_path / "out")
    data = ["--data", str(tmp_path / "d")]
    argv = {
        "show": [out],
        "predict": [out, "--out", str(tmp_path / "p.csv")],
        "export-model": [out, "--out", str(tmp_path / "m.pt")],
        "robustness": [out],
        "pretrain": data,
        "export": [*data, "--out", out],
        "sweep": [*data, "--out", out],
    }.get(command, [*data, "--out", out, "--fresh"])
    if command in ("predict", "export-model", "robustness"):  # loading the run's trained network
        module = {"export-model": "export"}.get(command, command)
        monkeypatch.setattr(importlib.import_module(f"bmnas.serve.{module}"), "load", interrupted)
    elif command == "show":
        monkeypatch.setattr(importlib.import_module("bmnas.engine.rundir"), "RunDir", interrupted)
    elif command == "config":
        argv = []
        monkeypatch.setattr(importlib.import_module("bmnas.cli.configure"), "resolved", interrupted)
    else:  # every command that reads data, as it starts reading (patched where no module binds it)
        monkeypatch.setattr(importlib.import_module("bmnas.cli.options"), "builder_options", interrupted)
    assert main([command, *argv]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bmnas: interrupted") and "Traceback" not in err, err
    assert "rerun the same command" in err
    if "--fresh" in argv:
        assert f"saved in {out}: rerun the same command without --fresh to resume" in err
    if command == "sweep":
        assert f"finished trials are saved in {out}: rerun the same command to resume" in err
