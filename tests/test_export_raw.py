"""Exported graphs that take what the user has: raw per-layer maps (``--data`` runs, pooling in the
graph), a table's images and numbers (table runs), and ``bmnas predict --table`` on new rows.

Tolerance: logits and probabilities within 1e-5 absolute of ``bmnas predict`` (float32).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bmnas.cli.main import main
from bmnas.core.genotype import CellGene, FeatureSpec, Genotype, StepGene
from bmnas.features import table as tb
from bmnas.serve.export import export_model, read_metadata
from bmnas.serve.predict import load
from helpers import FAST, PHOTO_CLASSES, photo_rows, table_stand_in, write_generic

ATOL = 1e-5


def predicted_probs(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    cols = [c for c in rows[0] if c.startswith("prob_")]
    return [r["prediction"] for r in rows], np.array([[float(r[c]) for c in cols] for r in rows])


def run_graph(path: Path, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) of an exported file on ``feeds`` (input name -> batch)."""
    meta = read_metadata(path)
    if path.suffix == ".onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [i["name"] for i in meta["inputs"]]
        return tuple(session.run(None, feeds))
    ts = torch.jit.load(str(path))
    out = ts(*[torch.from_numpy(np.array(feeds[i["name"]])) for i in meta["inputs"]])
    return tuple(t.detach().numpy() for t in out)


# ---------------------------------------------------------------------------------- --data runs
@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    """A --data run whose network reads a map (4, 6, 5), a vector, a sequence and a video feature."""
    root = tmp_path_factory.mktemp("raw")
    data = write_generic(root / "d")
    L = 4
    feats = (
        FeatureSpec("image.map", 4, L),
        FeatureSpec("image.vec", 7, 1),
        FeatureSpec("audio.seq", 3, L),
        FeatureSpec("audio.video", 2, L),
    )
    cells = (
        CellGene(("image.map", "audio.seq"), (StepGene("attention", ("x", "y")),), ("step1",)),
        CellGene(("cell1", "audio.video"), (StepGene("sum", ("x", "y")),), ("step1",)),
    )
    path = root / "g.json"
    Genotype(8, L, feats, cells, ("cell2", "image.vec")).save(path)
    run = root / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--genotype", str(path), *FAST]) == 0
    return data, run


@pytest.mark.parametrize("suffix", [".pt", ".onnx"])
def test_pooling_in_the_graph_takes_the_raw_maps_and_equals_predict(data_run, tmp_path, suffix, capsys):
    if suffix == ".onnx":
        pytest.importorskip("onnxscript")
    data, run = data_run
    info = json.loads((run / "metrics.json").read_text())["data"]["info"]
    assert info["raw_shapes"] == {
        "image.map": [4, 6, 5],
        "image.vec": [7],
        "audio.seq": [3, 11],
        "audio.video": [2, 3, 4, 4],
    }
    out = tmp_path / f"m{suffix}"
    assert main(["export-model", str(run), "--out", str(out), "--pooling-in-graph", "--quiet"]) == 0
    assert "image.map (B, 4, 6, 5) (raw map, pooled in the graph)" in capsys.readouterr().out
    meta = read_metadata(out)
    shapes = {i["name"]: i["shape"] for i in meta["inputs"]}
    assert shapes == {k: ["B", *v] for k, v in info["raw_shapes"].items()}
    assert {i["kind"] for i in meta["inputs"]} == {"map"}
    test = dict(np.load(data / "test.npz"))
    feeds = {n: test[n] for n in shapes}
    logits, probs = run_graph(out, feeds)
    assert (
        main(["predict", str(run), "--data", str(data / "test.npz"), "--out", str(tmp_path / "p.csv")]) == 0
    )
    names, want = predicted_probs(tmp_path / "p.csv")
    np.testing.assert_allclose(probs, want, rtol=0, atol=ATOL)
    model = load(run)
    np.testing.assert_allclose(logits, model.predict(feeds).logits, rtol=0, atol=ATOL)
    assert [model.class_names[k] for k in logits.argmax(1)] == names
    # one sample: the batch size is free
    one, _ = run_graph(out, {k: v[:1] for k, v in feeds.items()})
    np.testing.assert_allclose(one, logits[:1], rtol=0, atol=ATOL)


def test_pooling_in_graph_and_features_in_together_are_refused(data_run, tmp_path, capsys):
    _, run = data_run
    argv = ["export-model", str(run), "--out", str(tmp_path / "m.pt"), "--pooling-in-graph", "--features-in"]
    assert main(argv) == 2
    assert "give --features-in (pooled features in) or --pooling-in-graph" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_export_traces_a_float32_cpu_copy_and_leaves_the_loaded_model_alone(data_run, tmp_path):
    """What this tests: a network moved to float64 exports as float32 on the CPU (the copy is made
    with ``.to("cpu", float32)``, the call that also moves a CUDA network; no GPU here) and the
    caller's network keeps its dtype. A CUDA ONNX export itself is not run here."""
    data, run = data_run
    model = load(run)
    test = dict(np.load(data / "test.npz"))
    want = model.predict({n: test[n] for n in model.inputs}).logits
    model.net.to(torch.float64)
    shapes = {n: list(test[n].shape[1:]) for n in model.inputs}
    out = tmp_path / "m.pt"
    export_model(model, out, raw_shapes=shapes)
    assert {p.dtype for p in model.net.parameters()} == {torch.float64}  # not moved by the export
    ts = torch.jit.load(str(out))
    params = list(ts.parameters())
    assert params and {(p.dtype, p.device.type) for p in params} == {(torch.float32, "cpu")}
    logits, _ = ts(*[torch.from_numpy(test[i["name"]]) for i in read_metadata(out)["inputs"]])
    np.testing.assert_allclose(logits.detach().numpy(), want, rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------- table runs
CLASSES = PHOTO_CLASSES
SIZE = 12  # --backbone-option image_size


stand_in = table_stand_in


def write_table(root: Path, n: int, seed: int) -> pd.DataFrame:
    return photo_rows(root, n, seed, prefix=f"{seed}-", numeric=True)


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    write_table(root, 36, 0).to_csv(root / "photos.csv", index=False)
    new = write_table(root, 9, 1)
    new.to_csv(root / "new.csv", index=False)
    feats = (  # the network reads every modality: an image, a caption, a numeric column
        FeatureSpec("numeric.values", 1, 1),
        FeatureSpec("path.conv", 4, 4),
        FeatureSpec("path.pool", 4, 4),
        FeatureSpec("caption.fc", 6, 1),
    )
    cell = CellGene(("path.conv", "caption.fc"), (StepGene("attention", ("x", "y")),), ("step1",))
    Genotype(8, 4, feats, (cell,), ("cell1", "numeric.values", "path.pool")).save(root / "g.json")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tb, "default_backbone", stand_in)
        argv = ["train", "--table", str(root / "photos.csv"), "--label", "label", "--out", str(root / "run")]
        argv += ["--genotype", str(root / "g.json"), "--backbone-option", f"image_size={SIZE}"]
        assert main([*argv, "--cache", str(root / "c"), *FAST]) == 0
    return root


@pytest.mark.parametrize("suffix", [".pt", ".onnx"])
def test_a_table_run_exports_image_backbone_and_columns_and_equals_predict_table(
    table_run, tmp_path, suffix, monkeypatch, capsys
):
    if suffix == ".onnx":
        pytest.importorskip("onnxscript")
    monkeypatch.setattr(tb, "default_backbone", stand_in)
    root, run = table_run, table_run / "run"
    preds = tmp_path / "new_preds.csv"
    argv = ["predict", str(run), "--table", str(root / "new.csv"), "--out", str(preds), "--quiet"]
    assert main(argv) == 0
    assert "9 predictions of" in capsys.readouterr().out
    names, want = predicted_probs(preds)
    new = pd.read_csv(root / "new.csv")
    with preds.open() as fh:  # the label column is optional; here it is there, by class name
        assert [r["label"] for r in csv.DictReader(fh)] == list(new["label"])
    metrics = json.loads(preds.with_name("new_preds.metrics.json").read_text())
    assert set(metrics) >= {"accuracy"}
    out = tmp_path / f"photos{suffix}"
    assert main(["export-model", str(run), "--out", str(out), "--quiet"]) == 0
    meta = read_metadata(out)
    by_name = {i["name"]: i for i in meta["inputs"]}
    model = load(run)
    kinds = {n: (i["kind"], i["shape"], i["features"]) for n, i in by_name.items()}
    assert kinds == {
        "numeric.values": ("map", ["B", 1], ["numeric.values"]),
        "path": ("raw", ["B", 3, SIZE, SIZE], ["path.conv", "path.pool"]),
        "caption.fc": ("pooled", ["B", 1, 6], ["caption.fc"]),
    }
    assert f"resized to {SIZE}×{SIZE} (bilinear) as uint8 (3, {SIZE}, {SIZE})" in by_name["path"]["note"]
    assert "the backbone 'tiny-cnn'" in by_name["path"]["note"]
    assert "tokenizer and the text backbone stay outside" in by_name["caption.fc"]["note"]
    assert "['age'] as float32" in by_name["numeric.values"]["note"]
    # what the user feeds: the image tensors, the numbers, and (text stays outside) pooled text features
    image = tb.ImageFiles([root / p for p in new["path"]], SIZE)[:]
    text = model.extract([stand_in("text", "caption")], {"caption": new["caption"].to_numpy(dtype=object)})
    pixels = table_stand_in("image", "path").preprocess(image).numpy()
    feeds = {"path": pixels, "numeric.values": new[["age"]].to_numpy(np.float32), **text}
    logits, probs = run_graph(out, {i["name"]: feeds[i["name"]] for i in meta["inputs"]})
    np.testing.assert_allclose(probs, want, rtol=0, atol=ATOL)
    assert [meta["class_names"][k] for k in logits.argmax(1)] == names


def test_predict_table_errors_are_one_line(table_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tb, "default_backbone", stand_in)
    root, run = table_run, table_run / "run"
    new = pd.read_csv(root / "new.csv")  # bad tables beside it: image paths are relative to the table
    col = "caption"
    new.drop(columns=[col]).to_csv(root / "a.csv", index=False)
    out = ["--out", str(tmp_path / "p.csv")]
    assert main(["predict", str(run), "--table", str(root / "a.csv"), *out]) == 2
    err = capsys.readouterr().err
    assert f"a.csv: no column {col!r} (the run's modality {col!r} reads [{col!r}])" in err
    assert len([ln for ln in err.splitlines() if ln.startswith("bmnas: error")]) == 1
    new.assign(label=["cat"] * 8 + ["yak"]).to_csv(root / "b.csv", index=False)
    assert main(["predict", str(run), "--table", str(root / "b.csv"), *out]) == 2
    assert (
        "label 'yak' at row 8 is not a class of this run (classes: cat, dog, eel)" in capsys.readouterr().err
    )
    new.drop(columns=["label"]).to_csv(root / "c.csv", index=False)  # no labels: predictions only
    assert main(["predict", str(run), "--table", str(root / "c.csv"), *out, "--quiet"]) == 0
    assert not (tmp_path / "p.metrics.json").exists()
    np.savez(tmp_path / "raw.npz", path=np.zeros((2, 3, 4, 4)))
    assert main(["predict", str(run), "--raw", str(tmp_path / "raw.npz"), *out]) == 2
    assert "this run read a table; predict new rows of a table with --table FILE" in capsys.readouterr().err
