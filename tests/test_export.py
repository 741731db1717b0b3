"""Exported TorchScript/ONNX files compute what the in-process network computes, in a fresh process too.

Tolerance: logits and probabilities within 1e-5 absolute (float32; measured differences are 0 for
TorchScript and below 1e-6 for ONNX Runtime); predicted classes exactly equal.
"""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import bmnas
from bmnas.cli.main import main
from bmnas.core.config import Config
from bmnas.core.genotype import CellGene, Genotype, StepGene
from bmnas.method.train import with_recipe
from bmnas.serve.export import read_metadata
from bmnas.serve.predict import load
from helpers import FAST, tiny_dataset, write_generic

ATOL = 1e-5


@pytest.fixture(scope="module")
def every_op_run(tmp_path_factory):
    """A run whose trained network uses every op: sum, attention, linear_glu, concat_fc and zero."""
    root = tmp_path_factory.mktemp("export")
    data = write_generic(root / "d")
    run = root / "run"
    assert main(["search", "--data", str(data), "--out", str(run), *FAST]) == 0
    features = Genotype.load(run / "genotype.json").features
    cells = (
        CellGene(
            ("image.map", "audio.seq"),
            (StepGene("attention", ("x", "y")), StepGene("concat_fc", ("step1", "x"))),
            ("step2",),
        ),
        CellGene(
            ("cell1", "image.vec"),
            (StepGene("linear_glu", ("x", "y")), StepGene("sum", ("step1", "y")), StepGene("zero", ())),
            ("step2", "step3"),
        ),
    )
    genotype = Genotype(8, 4, features, cells, ("cell1", "cell2", "audio.video"))
    path = root / "every_op.json"
    genotype.save(path)
    train_dir = root / "trained"
    assert main(["train", "--data", str(data), "--out", str(train_dir), "--genotype", str(path), *FAST]) == 0
    return data, train_dir, with_recipe(genotype, Config())  # as trained: with its linear path


def pooled_test(model, data) -> dict[str, np.ndarray]:
    raw = dict(np.load(data / "test.npz"))
    raw.pop("label")
    return model.pool(raw)


def test_torchscript_in_a_fresh_process_equals_predict(every_op_run, tmp_path):
    data, run, genotype = every_op_run
    out = tmp_path / "model.pt"
    assert main(["export-model", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    model = load(run)
    assert model.genotype == genotype
    pooled = pooled_test(model, data)
    np.savez(tmp_path / "inputs.npz", **pooled)
    # a fresh interpreter with torch alone: no bmnas import
    code = (
        "import json, sys, numpy as np, torch\n"
        "extra = {'bmnas.json': ''}\n"
        f"m = torch.jit.load({str(out)!r}, _extra_files=extra)\n"
        "meta = json.loads(extra['bmnas.json'])\n"
        f"z = np.load({str(tmp_path / 'inputs.npz')!r})\n"
        "logits, probs = m(*[torch.from_numpy(z[i['name']]) for i in meta['inputs']])\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, logits=logits.detach().numpy(),\n"
        "         probs=probs.detach().numpy())\n"
        "print(json.dumps({'version': meta['bmnas_version'], 'genotype': meta['genotype']}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    meta = json.loads(done.stdout)
    assert meta["genotype"] == genotype.to_dict() and meta["version"] == bmnas.__version__
    got = np.load(tmp_path / "out.npz")
    preds = model.predict_pooled(pooled)
    np.testing.assert_allclose(got["logits"], preds.logits, rtol=0, atol=ATOL)
    np.testing.assert_allclose(got["probs"], preds.probabilities, rtol=0, atol=ATOL)
    # … and the same classes as `bmnas predict` writes
    csv_path = tmp_path / "p.csv"
    assert main(["predict", str(run), "--data", str(data), "--out", str(csv_path)]) == 0
    with csv_path.open() as fh:
        written = [int(r["prediction"]) for r in csv.DictReader(fh)]
    assert got["logits"].argmax(axis=1).tolist() == written
    # the batch size is free: 1 and 12 samples through the same traced graph
    ts = torch.jit.load(str(out))
    one = ts(*[torch.from_numpy(pooled[n][:1]) for n in model.inputs])[0].detach().numpy()
    np.testing.assert_allclose(one, preds.logits[:1], rtol=0, atol=ATOL)


def test_onnx_with_onnxruntime(every_op_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    data, run, genotype = every_op_run
    out = tmp_path / "model.onnx"
    assert main(["export-model", str(run), "--out", str(out)]) == 0  # format from the suffix
    model = load(run)
    pooled = pooled_test(model, data)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(model.inputs)
    logits, probs = session.run(None, {n: pooled[n] for n in model.inputs})
    preds = model.predict_pooled(pooled)
    np.testing.assert_allclose(logits, preds.logits, rtol=0, atol=ATOL)
    np.testing.assert_allclose(probs, preds.probabilities, rtol=0, atol=ATOL)
    assert logits.argmax(axis=1).tolist() == preds.predicted.tolist()
    custom = session.get_modelmeta().custom_metadata_map
    assert Genotype.from_json(custom["genotype"]) == genotype and custom["bmnas_version"] == bmnas.__version__
    meta = read_metadata(out)
    first = model.inputs[0]
    want = {"name": first, "shape": ["B", 4, 4], "kind": "pooled", "dtype": "float32", "features": [first]}
    assert meta["inputs"][0] == want
    assert (meta["task"], meta["L"], meta["pooling"]) == ({"type": "multiclass", "num_outputs": 3}, 4, "max")


def test_export_errors(every_op_run, tmp_path, capsys):
    _, run, _ = every_op_run
    assert main(["export-model", str(tmp_path), "--out", str(tmp_path / "m.pt")]) == 2
    assert "no trained model" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_backbones_in_the_exported_graph(fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    cache, run = tmp_path / "cache", tmp_path / "run"
    common = ["--cache", str(cache)]
    assert main(["run", "--dataset", "tinyraw", "--out", str(run), *common, *FAST, "--no-baselines"]) == 0
    raw = tiny_dataset(tmp_path).splits["test"]
    np.savez(tmp_path / "raw.npz", **raw.inputs)
    assert (
        main(
            [
                "predict",
                str(run),
                "--raw",
                str(tmp_path / "raw.npz"),
                "--out",
                str(tmp_path / "p.csv"),
                *common,
            ]
        )
        == 0
    )
    with (tmp_path / "p.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    model = load(run)
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    assert main(["export-model", str(run), "--out", str(out), *common]) == 0
    meta = read_metadata(out)
    shapes = {"image": ["B", 1, 6, 6], "audio": ["B", 2, 10]}  # raw per-sample shapes of tinyraw
    assert meta["inputs"] and all(
        i["kind"] == "raw" and i["shape"] == shapes[i["name"]] for i in meta["inputs"]
    )
    feeds = {i["name"]: raw.inputs[i["name"]] for i in meta["inputs"]}
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        logits, probs = session.run(None, feeds)
    else:
        ts = torch.jit.load(str(out))
        logits, probs = (t.detach().numpy() for t in ts(*map(torch.from_numpy, feeds.values())))
    names = model.class_names
    assert [names[k] for k in logits.argmax(axis=1)] == [r["prediction"] for r in rows]
    np.testing.assert_allclose(probs[:, 0], [float(r[f"prob_{names[0]}"]) for r in rows], rtol=0, atol=ATOL)
    # --features-in: the pooled-feature graph instead
    assert main(["export-model", str(run), "--out", str(out), "--features-in", *common]) == 0
    assert {i["kind"] for i in read_metadata(out)["inputs"]} == {"pooled"}
