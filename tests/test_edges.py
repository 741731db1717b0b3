"""Bad inputs at the edges end in one ``bmnas: error:`` line or the correct result, never an internal error.

Each case drives the command line in a temp dir as a user meets it: empty files and non-positive
sizes, non-finite noise, big-endian arrays, multilabel labels never positive, a full disk, the
temporaries a killed ``predict``/``export-model`` left, ``show`` on a ``train --genotype`` run,
plots of thousands of series, and a model file extension bmnas does not know.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bmnas.cli import main as cli
from bmnas.core.genotype import Genotype
from bmnas.features.generic import NPZ_FIX, load_generic_dir
from helpers import FAST, make_run, table_stand_in, write_generic, write_photos

HOUR = 3600


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A finished ``bmnas run`` (no baselines) on small generic data: (data dir, run dir)."""
    return make_run(tmp_path_factory.mktemp("edges"), baselines=False)


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit code and stderr of one command; an argparse refusal (SystemExit) counts as its code."""
    capsys.readouterr()
    try:
        rc = cli.main([*argv])
    except SystemExit as exit_:
        rc = exit_.code
    return rc, capsys.readouterr().err


def last_line(err: str) -> str:
    return err.rstrip("\n").splitlines()[-1]


# ------------------------------------------------------------------- 1. empty inputs, sizes < 1
def test_predict_refuses_an_empty_file_and_a_file_without_rows(trained, tmp_path, capsys):
    data, run = trained
    out = tmp_path / "p.csv"
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    rc, err = run_cli(capsys, "predict", str(run), "--data", str(empty), "--out", str(out))
    why = f"cannot be read as .npz (EOFError: No data left in file); {NPZ_FIX}"
    assert (rc, err) == (2, f"bmnas: error: {empty}: {why}\n")
    rows = tmp_path / "rows.npz"
    np.savez(rows, **{k: v[:0] for k, v in np.load(data / "test.npz").items()})
    rc, err = run_cli(capsys, "predict", str(run), "--data", str(rows), "--out", str(out))
    names = ["image.map", "image.vec", "audio.seq", "audio.video"]
    why = f"no samples (0 rows in {names}); give a file with at least one sample"
    assert (rc, err) == (2, f"bmnas: error: {rows}: {why}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.npz", "rows.npz"]  # nothing written


@pytest.mark.parametrize("size", ["0", "-1", "two"])
def test_a_batch_size_below_one_is_refused_while_parsing(trained, tmp_path, capsys, size):
    data, run = trained
    out = tmp_path / "p.csv"
    rc, err = run_cli(
        capsys, "predict", str(run), "--data", str(data), "--out", str(out), "--batch-size", size
    )
    why = f"must be a whole number >= 1, got {size!r}" if size == "two" else f"must be >= 1, got {size}"
    assert rc == 2 and last_line(err) == f"bmnas predict: error: argument --batch-size: {why}"
    assert not out.exists()  # a header-only CSV once


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("sweep", "--trials"),
        ("ablate", "--random-samples"),
        ("ablate", "--smbo-budget"),
        ("ablate", "--smbo-epochs"),
    ],
)
def test_every_size_option_is_refused_below_one_while_parsing(tmp_path, capsys, command, flag):
    out = tmp_path / "o"
    rc, err = run_cli(capsys, command, "--data", str(tmp_path), "--out", str(out), flag, "0")
    assert rc == 2 and last_line(err) == f"bmnas {command}: error: argument {flag}: must be >= 1, got 0"
    assert not out.exists()


def test_the_batch_size_changes_no_prediction(trained, tmp_path, capsys):
    data, run = trained
    for size in ("1", "5"):
        argv = ["predict", str(run), "--data", str(data), "--out", str(tmp_path / f"{size}.csv")]
        assert run_cli(capsys, *argv, "--batch-size", size)[0] == 0
    one, five = (np.loadtxt(tmp_path / f"{size}.csv", delimiter=",", skiprows=1) for size in ("1", "5"))
    assert one.shape == (12, 2 + 1 + 3)  # every test sample: index, prediction, label, 3 probabilities
    assert one[:, :3].tolist() == five[:, :3].tolist()
    np.testing.assert_allclose(one[:, 3:], five[:, 3:], rtol=0, atol=1e-6)  # batched sums round apart


# ------------------------------------------------------------------- 2. noise levels
@pytest.mark.parametrize("sigma", ["nan", "inf", "1e39", "-1", "0", "lots"])
def test_a_noise_level_outside_its_range_is_refused_while_parsing(trained, tmp_path, capsys, sigma):
    _, run = trained
    rc, err = run_cli(capsys, "robustness", str(run), "--noise", "0.5", sigma, "--out", str(tmp_path / "r"))
    shown = repr(sigma) if sigma == "lots" else sigma
    why = f"a noise level σ is a number in (0, 100] (multiples of each feature's train std), got {shown}"
    assert rc == 2 and last_line(err) == f"bmnas robustness: error: argument --noise: {why}"
    assert not (tmp_path / "r").exists()


def test_the_largest_noise_level_is_taken(trained, tmp_path, capsys):
    _, run = trained
    rc, _ = run_cli(capsys, "robustness", str(run), "--noise", "100", "--out", str(tmp_path / "r"), "--quiet")
    assert rc == 0
    rows = json.loads((tmp_path / "r" / "robustness.json").read_text())
    assert "noise:100" in json.dumps(rows)


# ------------------------------------------------------------------- 3. big-endian arrays
def big_endian_copy(src: Path, dst: Path) -> Path:
    """``src``'s generic files with every number array stored big-endian (``>f4``, ``>f8``, ``>i8``)."""
    dst.mkdir()
    for split in ("train", "val", "test"):
        z = dict(np.load(src / f"{split}.npz"))
        z["audio.seq"] = z["audio.seq"].astype(np.float64)  # a >f8 one too
        np.savez(dst / f"{split}.npz", **{k: v.astype(v.dtype.newbyteorder(">")) for k, v in z.items()})
    assert np.load(dst / "train.npz")["image.map"].dtype.str == ">f4"
    return dst


def test_big_endian_arrays_give_the_features_of_native_ones(trained, tmp_path, capsys):
    data, run = trained
    big = big_endian_copy(data, tmp_path / "big")
    native, swapped = load_generic_dir(data, 4), load_generic_dir(big, 4)
    for split in ("train", "val", "test"):
        for name, arr in native[split].features.items():
            np.testing.assert_array_equal(swapped[split].features[name], arr)
            assert swapped[split].features[name].dtype == np.float32
        np.testing.assert_array_equal(swapped[split].labels, native[split].labels)
    # through the command line: the exported features and the predictions are the native ones'
    for src, out in ((data, "native"), (big, "big")):
        argv = ["export", "--data", str(src), "--out", str(tmp_path / f"{out}_features"), "--quiet"]
        assert run_cli(capsys, *argv)[0] == 0
        argv = ["predict", str(run), "--data", str(src), "--out", str(tmp_path / f"{out}.csv"), "--quiet"]
        assert run_cli(capsys, *argv)[0] == 0
    for split in ("train", "val", "test"):
        a, b = (np.load(tmp_path / f"{out}_features" / f"{split}.npz") for out in ("native", "big"))
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert (tmp_path / "big.csv").read_text() == (tmp_path / "native.csv").read_text()


# ------------------------------------------------------------------- 4. multilabel positives
@pytest.mark.parametrize("case", ["all zero", "a label never positive in train"])
def test_multilabel_labels_never_positive_are_refused(tmp_path, capsys, case):
    data = write_generic(tmp_path / "d", multilabel=True)
    z = dict(np.load(data / "train.npz"))
    if case == "all zero":
        z["label"] = np.zeros_like(z["label"])
        why = (
            "split 'train': every label is 0 (no sample has a positive label in any of its 4 columns); its "
            "F1 is undefined: fix the labels or re-split the data"
        )
    else:
        z["label"][:, [1, 3]] = 0
        why = (
            "split 'train': label column(s) 1, 3 (of 4) are never positive; a label the model never trains "
            "on cannot be predicted: drop those columns, fix the labels or re-split the data"
        )
    np.savez(data / "train.npz", **z)
    out = tmp_path / "o"
    rc, err = run_cli(capsys, "search", "--data", str(data), "--out", str(out), *FAST)
    assert (rc, err) == (2, f"bmnas: error: {why}\n")
    assert not out.exists()


def test_a_multilabel_split_without_any_positive_label_is_refused(tmp_path, capsys):
    data = write_generic(tmp_path / "d", multilabel=True)
    z = dict(np.load(data / "val.npz"))
    np.savez(data / "val.npz", **{**z, "label": np.zeros_like(z["label"])})
    rc, err = run_cli(capsys, "search", "--data", str(data), "--out", str(tmp_path / "o"), *FAST)
    assert rc == 2 and err.startswith("bmnas: error: split 'val': every label is 0 (no sample has"), err


# ------------------------------------------------------------------- 5. a full disk
SEARCH = ["--set", "search.epochs=2", "--set", "search.rerank=0", "--set", "model.C=8"]
SEARCH += ["--set", "model.L=4", "--set", "search.batch_size=16", "--quiet"]


def _results(out: Path) -> tuple[str, list[dict]]:
    """The genotype and the history of a search, without its timings."""
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if "second" not in k and "time" not in k} for r in rows]
    return (out / "genotype.json").read_text(), rows


def test_a_full_disk_is_one_line_naming_the_file_and_the_rerun_resumes_exactly(
    trained, tmp_path, capsys, monkeypatch
):
    data, _ = trained
    whole = tmp_path / "whole"
    assert run_cli(capsys, "search", "--data", str(data), "--out", str(whole), *SEARCH)[0] == 0
    real, calls = torch.save, []

    def fills_the_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the checkpoint after epoch 2: epoch 1's is on disk
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    out = tmp_path / "full"
    rc, err = run_cli(capsys, "search", "--data", str(data), "--out", str(out), *SEARCH)
    why = "no space left on device: free space and rerun the same command to resume"
    assert (rc, err) == (2, f"bmnas: error: cannot write {out / 'search.ckpt.pt'}: {why}\n")
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no partial file
    assert torch.load(out / "search.ckpt.pt", weights_only=True)["state"]["epoch"] == 1
    monkeypatch.setattr(torch, "save", real)
    assert run_cli(capsys, "search", "--data", str(data), "--out", str(out), *SEARCH)[0] == 0
    assert _results(out) == _results(whole)


REFUSED = {
    errno.EDQUOT: "disk quota exceeded: free space (or raise the quota) and rerun the same command to resume",
    errno.EROFS: "read-only file system: write to a writable location, or remount it read-write",
    errno.EACCES: "permission denied: make its folder writable, or write to another location",
}


@pytest.mark.parametrize(("code", "why"), list(REFUSED.items()))
def test_a_refused_output_write_names_the_output_file(trained, tmp_path, capsys, monkeypatch, code, why):
    from bmnas.report import tables

    def refused(fh, *args, **kwargs):
        raise OSError(code, os.strerror(code))

    data, run = trained
    monkeypatch.setattr(tables.csv, "writer", refused)
    out = tmp_path / "p.csv"
    rc, err = run_cli(capsys, "predict", str(run), "--data", str(data), "--out", str(out))
    assert (rc, err) == (2, f"bmnas: error: cannot write {out}: {why}\n")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_outside_bmnas_writers_still_names_the_file(trained, tmp_path, capsys, monkeypatch):
    from bmnas.serve import predict

    _, run = trained
    where = str(tmp_path / "somewhere" / "file")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", where)

    monkeypatch.setattr(predict, "load", full)
    rc, err = run_cli(capsys, "predict", str(run), "--out", str(tmp_path / "p.csv"))
    why = "no space left on device: free space and rerun the same command to resume"
    assert (rc, err) == (2, f"bmnas: error: cannot write {where}: {why}\n")


# ------------------------------------------------------------------- 6. stale temporaries
def leftovers(folder: Path, name: str, user_file: Path) -> dict[str, Path]:
    """What killed writes of ``folder/name`` left, and look-alikes bmnas must not touch."""
    paths = {
        "stale": folder / f".{name}.abcd1234.tmp",  # a killed write, an hour ago
        "fresh": folder / f".{name}.efgh5678.tmp",  # a live writer's
        "other output": folder / ".other.csv.abcd1234.tmp",
        "not mkstemp's": folder / f".{name}.mine.tmp",
        "user's": folder / "draft.tmp",
        "folder": folder / f".{name}.dir12345.tmp",
        "link": folder / f".{name}.link1234.tmp",
    }
    for key, p in paths.items():
        if key == "folder":
            p.mkdir()
        elif key == "link":
            p.symlink_to(user_file)
        else:
            p.write_text(key)
        if key != "fresh":
            os.utime(p, (time.time() - HOUR,) * 2, follow_symlinks=False)
    return paths


@pytest.mark.parametrize("command", ["predict", "export-model"])
def test_a_stale_temporary_of_the_output_is_removed_and_nothing_else(trained, tmp_path, capsys, command):
    data, run = trained
    folder = tmp_path / "outputs"
    folder.mkdir()
    user_file = tmp_path / "mine.txt"
    user_file.write_text("my notes")
    name = "p.csv" if command == "predict" else "m.pt"
    paths = leftovers(folder, name, user_file)
    sidecar = folder / ".p.metrics.json.zyxw9876.tmp"  # predict also writes p.metrics.json
    sidecar.write_text("stale")
    os.utime(sidecar, (time.time() - HOUR,) * 2)
    extra = ["--data", str(data)] if command == "predict" else []
    assert run_cli(capsys, command, str(run), *extra, "--out", str(folder / name), "--quiet")[0] == 0
    assert (folder / name).is_file()
    assert not paths["stale"].exists()
    assert sidecar.exists() == (command != "predict")
    for key in ("fresh", "other output", "not mkstemp's", "user's"):
        assert paths[key].read_text() == key
    assert paths["folder"].is_dir() and paths["link"].is_symlink() and user_file.read_text() == "my notes"


# ------------------------------------------------------------------- 7. show on a train run
def test_show_prints_the_genotype_and_metrics_of_a_train_genotype_run(trained, tmp_path, capsys):
    data, run = trained
    genotype = tmp_path / "g.json"
    genotype.write_text((run / "genotype.json").read_text())
    out = tmp_path / "t"
    argv = ["train", "--data", str(data), "--out", str(out), "--genotype", str(genotype), *FAST]
    assert run_cli(capsys, *argv)[0] == 0
    assert not (out / "genotype.json").exists()
    assert cli.main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert shown.startswith(Genotype.load(genotype).describe() + "\n\n")
    assert f"{metrics['test']['accuracy']:.4f}" in shown and f"all figures: {out / 'metrics.json'}" in shown
    rc, err = run_cli(capsys, "show", str(tmp_path))  # neither genotype.json nor metrics.json
    assert (rc, err) == (2, f"bmnas: error: {tmp_path / 'genotype.json'}: no such genotype file\n")


# ------------------------------------------------------------------- 8. plots of many series
def _sum_cell(x: str, y: str) -> dict:
    return {"inputs": [x, y], "steps": [{"op": "sum", "inputs": ["x", "y"]}], "concat": ["step1"]}


def history_of(n_features: int, epochs: int = 3, seed: int = 0) -> list[dict]:
    """A search history over ``n_features`` vector features, 2 Cells of 2 steps, 5 ops."""
    rng = np.random.default_rng(seed)
    names = [f"m{i % 3}.f{i}" for i in range(n_features)]
    ops = ["zero", "sum", "attention", "linear_glu", "concat_fc"]
    genotype = {
        "format": "bmnas.genotype",
        "version": 1,
        "C": 8,
        "L": 4,
        "features": [{"name": n, "channels": 4, "length": 1} for n in names],
        "cells": [_sum_cell(names[1], names[3]), _sum_cell("cell1", names[2])],
        "output": ["cell2"],
    }
    rows = []
    for e in range(1, epochs + 1):
        alpha = [[rng.random(n_features + c).tolist() for _ in range(2)] for c in range(2)]
        gamma = [[rng.dirichlet(np.ones(len(ops))).tolist() for _ in range(2)] for _ in range(2)]
        rows.append(
            {
                "epoch": e,
                "train_loss": 1.0 / e,
                "arch_loss": 1.1 / e,
                "val": {"loss": 1.2 / e, "accuracy": 0.3 * e / epochs},
                "best": e == epochs,
                "genotype": genotype,
                "ops": ops,
                "arch": {"alpha": alpha, "gamma": gamma},
                "entropy": {"alpha": 0.9, "beta": 0.8, "gamma": 0.7},
                "op_share": dict(zip(ops, gamma[0][0], strict=True)),
            }
        )
    return rows


def legend_entries(fig) -> list[list[str]]:
    return [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes if ax.get_legend()]


def test_a_history_of_ten_thousand_features_plots_quickly_as_top_k_and_others(tmp_path):
    from bmnas.report.figures import TOP_K
    from bmnas.report.plots import arch_figure, plot_history

    history = history_of(10_000)
    start = time.perf_counter()
    paths = plot_history(history, tmp_path / "plots")
    assert time.perf_counter() - start < 60  # over 5 minutes (and 2.5 GB) before
    assert [p.name for p in paths] == [
        "search_curves.png",
        "arch_weights.png",
        "search_diagnostics.png",
        "genotype.png",
    ]
    legends = legend_entries(arch_figure(history))
    assert len(legends) == 6 and all(len(entries) <= TOP_K + 1 for entries in legends)
    final = history[-1]["arch"]["alpha"][0][0]
    top = sorted(range(10_000), key=lambda i: -final[i])[:TOP_K]
    assert legends[0] == [f"m{i % 3}.f{i}" for i in sorted(top)] + ["others (9988)"]
    assert len(legends[2]) == 10 and "others" not in legends[2][-1]  # 2 steps × 5 ops: all drawn
    assert legends[3][-1] == "others (9989)"  # cell2 reads 10,000 features and cell1


def test_a_few_series_are_all_drawn(tmp_path):
    from bmnas.report.plots import arch_figure

    legends = legend_entries(arch_figure(history_of(4)))
    assert legends[0] == ["m0.f0", "m1.f1", "m2.f2", "m0.f3"] and legends[3][-1] == "cell1"
    assert legends[2] == [f"step{m} {op}" for m in (1, 2) for op in history_of(4)[0]["ops"]]


def test_top_k_keeps_the_reference_and_the_largest_and_averages_the_rest():
    from bmnas.report.figures import last, top_k

    series = {f"s{i}": [0.0, float(i % 7)] for i in range(20)}
    out = top_k(series, last, k=3, keep=1)
    assert list(out) == ["s0", "s6", "s13", "others (17)"]  # s0 kept; s6, s13 the largest (ties: first)
    rest = [series[f"s{i}"][1] for i in range(20) if i not in (0, 6, 13)]
    assert out["others (17)"] == [0.0, pytest.approx(np.mean(rest))]
    assert top_k(dict(list(series.items())[:4]), last, k=3) == dict(list(series.items())[:4])


def test_study_plots_of_many_methods_and_conditions_run(tmp_path):
    from bmnas.report.study_plots import ablation_bars, condition_bars

    methods = [f"unimodal:m{i}" for i in range(40)]
    conditions = ["clean", *[f"missing:m{i}:zeros" for i in range(40)]]
    value = {(m, c): (i + j) / 100 for i, m in enumerate(methods) for j, c in enumerate(conditions)}
    start = time.perf_counter()
    assert condition_bars(methods, conditions, value, "accuracy", tmp_path / "c.png").is_file()
    means = [i / 50 for i in range(40)]
    assert ablation_bars(
        methods, means, [0.01] * 40, ["tab:blue"] * 40, "accuracy", tmp_path / "a.png"
    ).is_file()
    assert time.perf_counter() - start < 30


# ------------------------------------------------------------------- 9. model file extensions
def test_export_model_refuses_an_unknown_extension_unless_the_format_is_given(trained, tmp_path, capsys):
    from bmnas.serve.export import read_metadata

    _, run = trained
    out = tmp_path / "model.bin"
    rc, err = run_cli(capsys, "export-model", str(run), "--out", str(out))
    known = ".pt (torchscript), .pth (torchscript), .ts (torchscript), .onnx (onnx)"
    why = (
        f"unknown model file extension '.bin'; use {known}, or say the format with --format torchscript|onnx"
    )
    assert (rc, err) == (2, f"bmnas: error: --out {out}: {why}\n")
    assert not out.exists()
    rc, err = run_cli(capsys, "export-model", str(run), "--out", str(tmp_path / "model"))
    assert rc == 2 and "unknown model file extension '(none)'" in err
    assert run_cli(capsys, "export-model", str(run), "--out", str(out), "--format", "torchscript")[0] == 0
    assert read_metadata(out)["format"] == "bmnas.exported"
    ts = tmp_path / "model.ts"
    assert run_cli(capsys, "export-model", str(run), "--out", str(ts))[0] == 0
    assert read_metadata(ts)["format"] == "bmnas.exported"  # .ts: TorchScript
    for fmt, name, implied in (("onnx", "model.pt", "torchscript"), ("torchscript", "model.onnx", "onnx")):
        bad = tmp_path / name
        rc, err = run_cli(capsys, "export-model", str(run), "--out", str(bad), "--format", fmt)
        assert (rc, err.split(";")[0]) == (
            2,
            f"bmnas: error: --out {bad} names a {implied} file but --format is {fmt}",
        )
        assert not bad.exists()


# ------------------------------------------------------------------- bad tables: one line, nothing written
def _bad_table(root: Path, case: str) -> list[str]:
    """A small photos table broken one way; returns the extra arguments of ``bmnas run``."""
    import pandas as pd

    csv = write_photos(root, n=12)
    df = pd.read_csv(csv)
    extra: list[str] = []
    if case == "missing label column":
        extra = ["--label", "genre"]
    elif case == "missing modality column":
        extra = ["--label", "label", "--modality", "pix=path,zz"]
    elif case == "missing image file":
        df.loc[5, "path"] = "img/missing.png"
    elif case == "damaged image file":
        (root / "img" / "3.png").write_bytes(b"not a png")
    elif case == "empty text":
        df.loc[7, "caption"] = "  "
    elif case == "one class":
        df["label"] = "cat"
    elif case == "unknown split value":
        df["split"] = ["train"] * 8 + ["training"] + ["val", "test", "test"]
    elif case == "empty number":
        df["age"] = 1.0
        df.loc[4, "age"] = None
    elif case == "no rows":
        df = df.iloc[:0]
    df.to_csv(csv, index=False)
    return ["--table", str(csv), *(extra or ["--label", "label"])]


BAD_TABLES = {
    "missing label column": r"--label 'genre': no such column in .*photos\.csv; columns: "
    r"\['path', 'caption', 'label'\]",
    "missing modality column": r"--modality 'pix=path,zz': no column 'zz'",
    "missing image file": r"column 'path' row 5 \(line 7 of a CSV with a header\): "
    r"image 'img/missing\.png' cannot be read",
    "damaged image file": r"image .*img/3\.png: cannot be read \(UnidentifiedImageError",
    "empty text": r"column 'caption' has 1 empty text\(s\), first at row 7",
    "one class": r"every label in column 'label' is 'cat'; a classification task needs at least 2 classes",
    "unknown split value": r"split column 'split' has 'training' at row 8 \(1 such rows\); "
    r"its values must be train / val / test",
    "empty number": r"column 'age' has 1 empty value\(s\), first at row 4",
    "no rows": r"photos\.csv: no rows",
}


@pytest.mark.parametrize(("case", "message"), list(BAD_TABLES.items()))
def test_a_bad_table_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch, case, message):
    from bmnas.features import table

    monkeypatch.setattr(table, "default_backbone", table_stand_in)
    argv = _bad_table(tmp_path / "t", case)
    out, cache = tmp_path / "run", tmp_path / "cache"
    rc, err = run_cli(capsys, "run", *argv, "--out", str(out), "--cache", str(cache), "--quiet")
    assert rc == 2 and re.search(message, last_line(err)), err
    assert last_line(err).startswith("bmnas: error: ") and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(cache.rglob("*.npy"))


def test_table_flags_need_a_table_and_a_table_needs_a_label(tmp_path, capsys):
    rc, err = run_cli(capsys, "run", "--data", str(tmp_path), "--label", "y", "--out", str(tmp_path / "r"))
    assert rc == 2 and "--label, --label-sep and --modality describe a --table; pass --table FILE" in err
    rc, err = run_cli(capsys, "run", "--table", "t.csv", "--out", str(tmp_path / "r"))
    assert rc == 2 and "--table t.csv: name its label column with --label COL" in err
    rc, err = run_cli(
        capsys, "run", "--table", "t.csv", "--data", "d", "--label", "y", "--out", str(tmp_path / "r")
    )
    assert rc == 2 and "give one of --dataset, --data and --table, not --data and --table" in err
