"""Load a trained run and predict: CLI outputs, metrics equal to the run's and sklearn's, clear errors."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

import bmnas
from bmnas.cli.main import main
from bmnas.core.errors import DataError
from bmnas.features.generic import load_generic_dir
from bmnas.method.train import with_recipe
from bmnas.serve.predict import load, save_model
from helpers import FAST, make_run, tiny_dataset  # tiny_dataset: the registered dataset "tinyraw"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("predict"))


def read_csv(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_predict_csv_matches_the_runs_metrics_and_sklearn(trained, tmp_path, capsys):
    data, run = trained
    out = tmp_path / "preds.csv"
    argv = [
        "predict",
        str(run),
        "--stage",
        "train",
        "--data",
        str(data),
        "--split",
        "test",
        "--out",
        str(out),
    ]
    assert main(argv) == 0  # the found network, whose test metrics are metrics.json's `test`
    rows = read_csv(out)
    labels = np.load(data / "test.npz")["label"]
    assert [int(r["index"]) for r in rows] == list(range(len(labels)))
    assert [int(r["label"]) for r in rows] == labels.tolist()
    probs = np.array([[float(r[f"prob_{k}"]) for k in range(3)] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    pred = np.array([int(r["prediction"]) for r in rows])
    assert pred.tolist() == probs.argmax(axis=1).tolist()
    run_test = json.loads((run / "metrics.json").read_text())["test"]
    written = json.loads((tmp_path / "preds.metrics.json").read_text())
    assert written["accuracy"] == accuracy_score(labels, pred) == run_test["accuracy"]
    assert written["f1_macro"] == pytest.approx(f1_score(labels, pred, average="macro"), abs=1e-12)
    assert written["f1_macro"] == pytest.approx(run_test["f1_macro"], abs=1e-12)
    assert "metrics:" in capsys.readouterr().out

    # the run's own data by default, and one .npz without labels as JSON lines: same predictions
    out2 = tmp_path / "default.csv"
    assert main(["predict", str(run), "--stage", "train", "--out", str(out2)]) == 0
    assert [r["prediction"] for r in read_csv(out2)] == [r["prediction"] for r in rows]
    unlabelled = tmp_path / "new.npz"
    arrays = dict(np.load(data / "test.npz"))
    arrays.pop("label")
    np.savez(unlabelled, **arrays)
    out3 = tmp_path / "p.jsonl"
    assert main(["predict", str(run), "--stage", "train", "--data", str(unlabelled), "--out", str(out3)]) == 0
    lines = [json.loads(x) for x in out3.read_text().splitlines()]
    assert [x["prediction"] for x in lines] == [r["prediction"] for r in rows]
    assert all("label" not in x for x in lines)
    np.testing.assert_allclose([list(x["probabilities"].values()) for x in lines], probs, rtol=0, atol=1e-12)
    assert not (tmp_path / "p.metrics.json").exists()


def test_predict_input_and_write_predictions_return_what_the_command_prints(trained, tmp_path):
    """The library half of `bmnas predict`: values back, files written, nothing printed."""
    from bmnas.core.errors import DataError
    from bmnas.serve.predict import predict_input, write_predictions

    data, run = trained
    model = load(run)
    preds, labels, name = predict_input(model, tmp_path / "cache", data=data, split="val")
    assert name == str(data / "val.npz") and labels.tolist() == np.load(data / "val.npz")["label"].tolist()
    assert len(preds) == len(labels) == 12
    own, own_labels, own_name = predict_input(model, tmp_path / "cache", split="val")  # the run's own data
    assert own_name.endswith("/val") and own_labels.tolist() == labels.tolist()
    np.testing.assert_allclose(own.probabilities, preds.probabilities, rtol=0, atol=1e-6)
    with pytest.raises(DataError, match=r"give --data \(features\) or --raw \(raw inputs\), not both"):
        predict_input(model, tmp_path / "cache", data=data, raw=data / "test.npz")
    metrics = write_predictions(preds, tmp_path / "p.csv", labels)
    assert metrics == preds.metrics(labels) == json.loads((tmp_path / "p.metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(float((preds.predicted == labels).mean()))
    assert (
        write_predictions(preds, tmp_path / "q.jsonl") is None and not (tmp_path / "q.metrics.json").exists()
    )
    assert len((tmp_path / "q.jsonl").read_text().splitlines()) == 12


def test_load_has_everything_inference_needs(trained):
    data, run = trained
    model = bmnas.load(run, "train")
    # the searched architecture as the evaluation stage trained it (with its linear path)
    searched = bmnas.core.genotype.Genotype.load(run / "genotype.json")
    assert model.genotype == with_recipe(searched, bmnas.Config()) and model.genotype.linear
    assert (model.task.type, model.task.num_outputs) == ("multiclass", 3)
    assert (model.threshold, model.pooling, model.L) == (0.5, "max", 4)
    assert model.class_names == ("0", "1", "2")
    assert not model.net.training
    # predicting from raw features equals evaluating the pooled split the run tested on
    pooled = load_generic_dir(data, 4)["test"]
    raw = dict(np.load(data / "test.npz"))
    raw.pop("label")
    np.testing.assert_array_equal(model.predict(raw).logits, model.predict_pooled(pooled.features).logits)
    # a baseline by its checkpoint name: late fusion reads one feature per modality
    late = load(run, "baseline_late_fusion")
    assert late.genotype.cells == () and len(late.inputs) == 2
    recommended = bmnas.core.genotype.Genotype.load(run / "recommended_genotype.json")
    assert load(run, "recommended").genotype == recommended


def test_save_model_round_trip(trained, tmp_path):
    data, run = trained
    model = load(run)
    fd = load_generic_dir(data, 4)
    fd = type(fd)(fd.splits, fd.task, fd.name, {"class_names": ["cat", "dog", "owl"]})
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.yaml").write_text((run / "config.yaml").read_text())
    save_model(copy, model.net, fd, {"data": {"threshold": 0.5, "pooling": "max"}, "model": {"dropout": 0.1}})
    again = load(copy)
    assert again.source.name == "model.pt" and again.class_names == ("cat", "dog", "owl")
    feats = fd["test"].features
    np.testing.assert_array_equal(again.predict_pooled(feats).logits, model.predict_pooled(feats).logits)
    assert set(again.predict_pooled(feats).label_names()) <= {"cat", "dog", "owl"}


def test_multilabel_predictions_are_label_sets(tmp_path):
    data, run = make_run(tmp_path, multilabel=True, baselines=False)
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), "--data", str(data), "--out", str(out)]) == 0
    rows = read_csv(out)
    y = np.load(data / "test.npz")["label"]
    pred = np.zeros_like(y)
    for i, r in enumerate(rows):
        for k in filter(None, r["prediction"].split(";")):
            pred[i, int(k)] = 1
        probs = np.array([float(r[f"prob_{k}"]) for k in range(4)])
        assert pred[i].tolist() == (probs > 0.5).astype(int).tolist()
        assert r["label"] == ";".join(str(k) for k in np.flatnonzero(y[i]))
    written = json.loads((tmp_path / "p.metrics.json").read_text())
    assert written["f1_weighted"] == f1_score(y, pred, average="weighted", zero_division=0)
    assert written["f1_weighted"] == json.loads((run / "metrics.json").read_text())["test"]["f1_weighted"]


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_clear_errors(trained, tmp_path, capsys):
    data, run = trained
    out = str(tmp_path / "p.csv")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert "no trained model" in _error(capsys, ["predict", str(empty), "--data", str(data), "--out", out])
    assert "no such run directory" in _error(capsys, ["predict", str(tmp_path / "nope"), "--out", out])

    arrays = dict(np.load(data / "test.npz"))
    renamed = {("image.other" if k == "image.map" else k): v for k, v in arrays.items()}
    np.savez(tmp_path / "renamed.npz", **renamed)
    err = _error(capsys, ["predict", str(run), "--data", str(tmp_path / "renamed.npz"), "--out", out])
    assert "['image.other'] are not features of this run" in err
    used = load(run).genotype.used_features()[0]  # a feature the found network reads
    reshaped = {**arrays, used: arrays[used][:, :3]}
    np.savez(tmp_path / "reshaped.npz", **reshaped)
    err = _error(capsys, ["predict", str(run), "--data", str(tmp_path / "reshaped.npz"), "--out", out])
    shape = (12, 3, *arrays[used].shape[2:])
    assert f"feature {used!r} has shape {shape}" in err and f"C_in = {arrays[used].shape[1]}" in err
    (tmp_path / "feats.csv").write_text("a,b\n1,2\n")
    err = _error(capsys, ["predict", str(run), "--data", str(tmp_path / "feats.csv"), "--out", out])
    assert "expected a .npz file" in err
    (tmp_path / "bad.npz").write_text("not a zip")
    assert "cannot be read as .npz" in _error(
        capsys, ["predict", str(run), "--data", str(tmp_path / "bad.npz"), "--out", out]
    )
    err = _error(capsys, ["predict", str(run), "--data", str(data), "--out", str(tmp_path / "p.txt")])
    assert "unknown output type '.txt'" in err
    np.savez(tmp_path / "badlabel.npz", **{**arrays, "label": arrays["label"] + 5})
    err = _error(capsys, ["predict", str(run), "--data", str(tmp_path / "badlabel.npz"), "--out", out])
    assert re.search(r"label \d+ is out of range", err)

    # a run whose training stopped early
    half = tmp_path / "half"
    half.mkdir()
    ckpt = torch.load(run / "train.ckpt.pt", weights_only=True)
    total = ckpt.get("epochs") or ckpt["config"]["train"]["epochs"]
    ckpt["state"]["epoch"] = total - 1
    torch.save(ckpt, half / "train.ckpt.pt")
    err = _error(capsys, ["predict", str(half), "--data", str(data), "--out", out])
    assert f"training stopped after epoch {total - 1} of {total}" in err


def test_raw_features_get_the_checks_of_a_runs_own_data(trained):
    data, run = trained
    model = load(run)
    raw = dict(np.load(data / "test.npz"))
    raw.pop("label")
    name = model.inputs[0]
    bad = raw[name].copy()
    bad[3] = np.nan
    with pytest.raises(
        DataError, match=rf"input: feature '{name}' has {bad[3].size} NaN/inf values \(first in sample 3\)"
    ):
        model.predict({**raw, name: bad})
    with pytest.raises(DataError, match=rf"input: feature '{name}' has non-numeric dtype <U"):
        model.predict({**raw, name: raw[name].astype(str)})


def readme_example() -> str:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    start = text.index("<!-- example: front door")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    return block.group(1)


def test_readme_front_door_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), ns)
    with np.load(tmp_path / "my_features" / "train.npz") as z:
        shapes = {k: z[k].shape for k in z.files}
    assert shapes == {
        "label": (60,),
        "image.conv1": (60, 4, 4),  # (N, C_in, L): an 8x8 map pooled to a 2x2 grid
        "image.conv2": (60, 8, 4),
        "text.0": (60, 16),
        "text.2": (60, 8),
    }
    # the pooled conv1 features are the max over 4x4 blocks of the backbone's own output
    x = torch.as_tensor(ns["inputs"]["train"]["image"][:5])
    with torch.no_grad():
        conv1 = ns["image_net"][0](x)
    expected = torch.nn.functional.adaptive_max_pool2d(conv1, (2, 2)).flatten(2).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "my_features" / "train.npz")["image.conv1"][:5], expected)
    metrics = json.loads((tmp_path / "runs" / "mine" / "metrics.json").read_text())
    best = metrics["recommended"]["method"]  # bmnas.load(RUN) is the recommended network
    assert ns["model"].method == best
    row = metrics if best == "searched" else metrics["baselines"][best]
    assert ns["preds"].metrics(ns["y"])["accuracy"] == row["test"]["accuracy"]


def test_predict_from_raw_inputs_through_the_runs_backbones(tmp_path):
    cache = tmp_path / "cache"
    run = tmp_path / "run"
    common = ["--cache", str(cache)]
    assert main(["run", "--dataset", "tinyraw", "--out", str(run), *common, *FAST, "--no-baselines"]) == 0
    model = load(run)
    assert model.class_names == ("red", "green", "blue")  # from the dataset, through metrics.json
    raw = tiny_dataset(tmp_path).splits["test"]
    np.savez(tmp_path / "raw.npz", label=raw.labels, **raw.inputs)
    by_raw, by_cache = tmp_path / "raw.csv", tmp_path / "cached.csv"
    assert main(["predict", str(run), "--raw", str(tmp_path / "raw.npz"), "--out", str(by_raw), *common]) == 0
    assert main(["predict", str(run), "--out", str(by_cache), *common]) == 0
    raw_rows, cached_rows = read_csv(by_raw), read_csv(by_cache)
    assert [r["prediction"] for r in raw_rows] == [r["prediction"] for r in cached_rows]
    assert {r["prediction"] for r in raw_rows} <= {"red", "green", "blue"}
    for a, b in zip(raw_rows, cached_rows, strict=True):
        assert abs(float(a["prob_red"]) - float(b["prob_red"])) < 1e-6
    run_test = json.loads((run / "metrics.json").read_text())["test"]
    assert json.loads((tmp_path / "raw.metrics.json").read_text())["accuracy"] == run_test["accuracy"]
    np.savez(tmp_path / "bad.npz", image=raw.inputs["image"], video=raw.inputs["audio"])
    assert main(["predict", str(run), "--raw", str(tmp_path / "bad.npz"), "--out", str(by_raw), *common]) == 2
