"""The README's Python example runs as written and does what it says."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bmnas


def readme_block(marker: str) -> str:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    start = text.index(f"<!-- example: {marker}")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


@pytest.fixture(scope="module")
def api_example(tmp_path_factory):
    """The README's Python API example, run once in a fresh directory: (its names, the directory)."""
    tmp_path = tmp_path_factory.mktemp("readme-api")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        ns: dict = {}
        exec(compile(readme_block("python api"), "README.md", "exec"), ns)
    return ns, tmp_path


def test_readme_python_api_example(api_example):
    ns, tmp_path = api_example
    found, result, report = ns["found"], ns["result"], ns["report"]
    assert (tmp_path / "runs" / "py_search" / "genotype.json").exists()
    assert bmnas.Genotype.load(tmp_path / "runs" / "py_search" / "genotype.json") == found.genotype
    # bmnas.train is the evaluation stage: the refit lasts the best val epoch of the selection phase
    assert result.epochs == 1 + max(range(3), key=lambda i: (result.val_curve[i], -i))
    # bmnas.run: every method of `bmnas run`, and the recommendation is the best fusion on val
    assert set(report.rows) == {
        "unimodal:a", "unimodal:b", "late_fusion", "sum", "concat_fc", "linear_probe", "searched"
    }  # fmt: skip
    fusions = {n: report.rows[n]["val"] for n in ("searched", "late_fusion", "sum", "concat_fc")}
    assert report.recommended == max(fusions, key=lambda n: (fusions[n], n == "searched"))
    assert report.rows["searched"]["test"]["accuracy"] == pytest.approx(
        __import__("json").loads((tmp_path / "runs" / "py_run" / "metrics.json").read_text())["test"][
            "accuracy"
        ]
    )


def test_a_run_made_from_python_is_one_every_command_takes(api_example, monkeypatch, capsys):
    """The README's ``bmnas.run(data, cfg, "runs/py_run")`` writes what ``bmnas run`` writes, so
    ``show``, ``predict`` and ``robustness`` work on it as on a command-line run."""
    from bmnas.cli.main import main

    _, tmp_path = api_example
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "py_run"
    for name in ("config.yaml", "fingerprint.json", ".bmnas-run", "model.pt", "metrics.json"):
        assert (run / name).is_file(), name
    assert {p.name for p in (run / "plots").iterdir()} >= {"search_curves.png", "arch_weights.png"}
    assert bmnas.Config.from_sources(run / "config.yaml").data.dir == "planted"
    assert main(["show", str(run)]) == 0
    assert "searched" in capsys.readouterr().out
    assert main(["predict", str(run), "--out", "preds.csv", "--quiet"]) == 0
    assert len((tmp_path / "preds.csv").read_text().splitlines()) == 1 + len(
        __import__("numpy").load("planted/test.npz")["label"]
    )
    assert main(["robustness", str(run), "--noise", "0.5", "--quiet"]) == 0
    assert (run / "robustness.png").is_file()
    probe = __import__("json").loads((run / "metrics.json").read_text())["baselines"]["linear_probe"]
    line = f"chance: 1/K = 1/2: 0.5000; linear probe on the clean test split: {probe['test']['accuracy']:.4f}"
    assert line in capsys.readouterr().out.splitlines()
    # the same command resumes it: the config and data recorded by bmnas.run are the command's
    small = ["model.C=8", "model.L=4", "search.epochs=3", "train.epochs=3"]
    assert (
        main(["run", "--data", "planted", "--out", str(run), "--quiet", *(f"--set={s}" for s in small)]) == 0
    )


def test_readme_register_op_example_works_after_import_bmnas(tmp_path):
    """``bmnas.ops`` is a lazy attribute: the README's op example needs nothing but ``import bmnas``."""
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    code = readme_block("register op")
    assert code.startswith("import torch\nfrom torch import nn\n\nimport bmnas\n")  # no bmnas submodule
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "('zero', 'sum', 'attention', 'product') 9.0\n"
