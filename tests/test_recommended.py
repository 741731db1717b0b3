"""The recommended network is the one a user gets; the probe is a network; pictures show what was trained.

One tiny ``bmnas run`` (module fixture) with two things forced: re-ranking keeps a candidate that
is not the last search epoch's argmax, and the recommendation names the linear probe. Then the CLI
is driven as a user would: ``predict`` with and without ``--stage``, ``export-model``, and
``bmnas.load``; old run directories (no probe file, no recommendation) still load, saying what
they give.
"""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import bmnas
from bmnas.cli.main import main
from bmnas.core.config import Config
from bmnas.core.genotype import Genotype
from bmnas.engine.folds import kfold
from bmnas.features.synthetic import planted_interaction
from bmnas.method import rerank as rerank_module
from bmnas.method import run as run_module
from bmnas.method import search as search_module
from bmnas.method.probe import C_GRID, _design, choose_C, fit_probe
from bmnas.method.train import with_recipe
from bmnas.report.plots import drawn_genotype, genotype_figure, plot_history
from bmnas.serve.export import read_metadata
from bmnas.serve.model import ModelError, load
from helpers import FAST, write_generic

ATOL = 1e-5


def _forced_rerank(real):
    """Re-ranking whose winner is the first candidate that is not the last epoch's argmax."""

    def rerank(net, state, data, cfg, run, progress=True, **kwargs):
        rows = real(net, state, data, cfg, run, progress, **kwargs)
        last = state["history"][-1]["genotype"]
        other = next(r for r in rows if r["genotype"] != last)
        return [{**r, "val": 2.0 if r is other else r["val"]} for r in rows]

    return rerank


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("recommended")
    data = write_generic(root / "d")
    out = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search_module, "rerank", _forced_rerank(rerank_module.rerank))
        mp.setattr(run_module, "recommend", lambda rows, metric, **_: ("linear_probe", "forced by the test"))
        argv = ["run", "--data", str(data), "--out", str(out), *FAST, "--set", "search.rerank=4"]
        assert main(argv) == 0
    return data, out, json.loads((out / "metrics.json").read_text())


def read_predictions(path) -> list[str]:
    return [json.loads(line)["prediction"] for line in path.read_text().splitlines()]


# -- pictures ---------------------------------------------------------------------------------------


def test_genotype_png_draws_the_trained_network_not_the_last_epochs_argmax(probe_run):
    _, run, _ = probe_run
    chosen = Genotype.load(run / "genotype.json")
    last = Genotype.from_dict(json.loads((run / "history.jsonl").read_text().splitlines()[-1])["genotype"])
    assert chosen != last  # forced: re-ranking kept another candidate
    drawn = drawn_genotype(run / "plots" / "genotype.png")
    assert drawn == with_recipe(chosen, Config()) == load(run, "train").genotype
    assert drawn.linear and drawn.linear == load(run, "train").net.genotype.linear  # model.linear_skip
    texts = [t.get_text() for t in genotype_figure(drawn).axes[0].texts]
    assert "linear path\n(to the logits)" in texts
    for n, cell in enumerate(chosen.cells, 1):
        steps = "\n".join(f"step{m}: {s.op}({', '.join(s.inputs)})" for m, s in enumerate(cell.steps, 1))
        assert f"cell{n}\n{steps}" in texts
    assert "residual" not in texts  # the legend names the residual edge; no label lies on other edges
    # the recommended network's picture: the probe, a linear map of one feature per modality
    probe = drawn_genotype(run / "plots" / "recommended_genotype.png")
    assert probe == Genotype.load(run / "recommended_genotype.json") == load(run).genotype
    assert probe.cells == () and probe.output == () and probe.linear


def test_search_plots_draw_the_genotype_they_are_given(tmp_path, probe_run):
    _, run, _ = probe_run
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    chosen = Genotype.load(run / "genotype.json")
    plot_history(history, tmp_path, chosen)
    assert drawn_genotype(tmp_path / "genotype.png") == chosen and not chosen.linear
    texts = [t.get_text() for t in genotype_figure(chosen).axes[0].texts]
    assert not any(t.startswith("linear") for t in texts)  # no linear path: none drawn
    plot_history(history, tmp_path)  # without one: the last epoch's, as the title says
    assert drawn_genotype(tmp_path / "genotype.png") == Genotype.from_dict(history[-1]["genotype"])


# -- the probe is a network -------------------------------------------------------------------------


def test_probe_network_computes_the_logistic_regression():
    data = planted_interaction(n=300, L=4, seed=3)
    r = fit_probe(data, seed=0, C=8, L=4)
    names = r.row["features"]
    x = {s: _design(data[s], names) for s in ("train", "val", "test")}
    fit_x = np.concatenate([x["train"], x["val"]])
    scaler = StandardScaler().fit(fit_x)
    y = np.concatenate([data["train"].labels, data["val"].labels])
    ref = LogisticRegression(C=r.row["C"], max_iter=500, random_state=0).fit(scaler.transform(fit_x), y)
    margin = ref.decision_function(scaler.transform(x["test"]))
    with torch.no_grad():
        logits = r.model({n: torch.from_numpy(data["test"].features[n]) for n in names}).numpy()
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], margin, rtol=0, atol=1e-4)
    acc = float((logits.argmax(1) == data["test"].labels).mean())
    assert (
        r.row["test"]["accuracy"]
        == acc
        == pytest.approx(float((ref.predict(scaler.transform(x["test"])) == data["test"].labels).mean()))
    )


def test_probe_selection_score_is_its_cross_validated_score_with_select_folds():
    data = planted_interaction(n=300, L=4, seed=4)
    names = fit_probe(data).row["features"]
    per_C = []
    for C in C_GRID:
        scores = []
        for fold in kfold(data, 3, 0):
            x = {s: _design(fold[s], names) for s in ("train", "val")}
            sc = StandardScaler().fit(x["train"])
            m = LogisticRegression(C=C, max_iter=500, random_state=0).fit(
                sc.transform(x["train"]), fold["train"].labels
            )
            scores.append(float((m.predict(sc.transform(x["val"])) == fold["val"].labels).mean()))
        per_C.append(np.mean(scores))
    best = max(range(len(C_GRID)), key=lambda i: (per_C[i], -C_GRID[i]))
    assert choose_C(data, names, 0, 0.5, folds=3) == pytest.approx((C_GRID[best], per_C[best]))
    assert fit_probe(data, folds=3).row["val"] == pytest.approx(per_C[best])
    assert fit_probe(data, folds=0).row["val"] == choose_C(data, names, 0, 0.5)[1]  # val split


def test_the_run_scores_the_probe_by_the_runs_selection_score(probe_run):
    _, _, m = probe_run
    assert m["val_folds"] == 3 and m["recommended"]["method"] == "linear_probe"
    assert m["recommended"]["stage"] == "linear_probe"
    probe = m["baselines"]["linear_probe"]
    assert probe["epochs"] == 0 and probe["C"] in C_GRID


# -- the recommended network is the default -----------------------------------------------------


def test_predict_stage_linear_probe_gives_the_probes_predictions_and_metric(probe_run, tmp_path, capsys):
    data, run, m = probe_run
    out = tmp_path / "probe.jsonl"
    assert main(["predict", str(run), "--stage", "linear_probe", "--data", str(data), "--out", str(out)]) == 0
    assert "by linear_probe (--stage linear_probe)" in capsys.readouterr().out
    scored = json.loads((tmp_path / "probe.metrics.json").read_text())
    assert scored == m["baselines"]["linear_probe"]["test"]  # the probe's own test metrics, exactly
    # no --stage: the recommended network, which here is the probe
    default = tmp_path / "default.jsonl"
    assert main(["predict", str(run), "--data", str(data), "--out", str(default)]) == 0
    assert read_predictions(default) == read_predictions(out)
    # --stage still chooses: the found network by its stage or its table name
    found, by_name = tmp_path / "found.jsonl", tmp_path / "searched.jsonl"
    assert main(["predict", str(run), "--stage", "train", "--data", str(data), "--out", str(found)]) == 0
    found_metrics = json.loads((tmp_path / "found.metrics.json").read_text())
    assert found_metrics == {k: m["test"][k] for k in found_metrics} and "accuracy" in found_metrics
    assert main(["predict", str(run), "--stage", "searched", "--data", str(data), "--out", str(by_name)]) == 0
    assert read_predictions(by_name) == read_predictions(found)


def test_bmnas_load_returns_the_recommended_network(probe_run):
    data, run, m = probe_run
    model = bmnas.load(run)
    assert (model.method, model.stage, model.source.name) == (
        "linear_probe",
        "linear_probe",
        "linear_probe.pt",
    )
    assert model.genotype == Genotype.from_dict(m["recommended"]["genotype"])
    assert model.inputs == tuple(m["baselines"]["linear_probe"]["features"])
    late = bmnas.load(run, "late_fusion")
    assert (late.method, late.stage) == ("late_fusion", "baseline_late_fusion")


def test_export_model_of_the_probe(probe_run, tmp_path, capsys):
    data, run, _ = probe_run
    model = load(run, "linear_probe")
    raw = dict(np.load(data / "test.npz"))
    raw.pop("label")
    pooled = model.pool(raw)
    want = model.predict_pooled(pooled)
    out = tmp_path / "probe.pt"
    assert main(["export-model", str(run), "--out", str(out)]) == 0  # default: the recommended probe
    assert "of linear_probe (--stage linear_probe)" in capsys.readouterr().out
    meta = read_metadata(out)
    assert (meta["method"], meta["stage"]) == ("linear_probe", "linear_probe")
    ts = torch.jit.load(str(out))
    logits, probs = ts(*[torch.from_numpy(pooled[i["name"]]) for i in meta["inputs"]])
    np.testing.assert_allclose(logits.detach().numpy(), want.logits, rtol=0, atol=ATOL)
    np.testing.assert_allclose(probs.detach().numpy(), want.probabilities, rtol=0, atol=ATOL)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx_out = tmp_path / "probe.onnx"
    assert main(["export-model", str(run), "--stage", "linear_probe", "--out", str(onnx_out)]) == 0
    session = ort.InferenceSession(str(onnx_out), providers=["CPUExecutionProvider"])
    got, _ = session.run(None, {n: pooled[n] for n in model.inputs})
    np.testing.assert_allclose(got, want.logits, rtol=0, atol=ATOL)


# -- old run directories ------------------------------------------------------------------------


def test_an_old_run_without_probe_or_recommendation_still_loads_and_says_what_it_gives(
    probe_run, tmp_path, caplog, capsys
):
    data, run, m = probe_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "linear_probe.pt").unlink()  # a run of a bmnas that did not save the probe
    with caplog.at_level(logging.WARNING):
        model = load(old)
    assert model.method == "searched" and model.source.name == "model.pt"
    assert "the recommended network (linear_probe) has no saved model" in caplog.text
    with pytest.raises(ModelError, match="no saved linear probe .*rerun the same `bmnas run` command"):
        load(old, "linear_probe")
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(old), "--stage", "linear_probe", "--data", str(data), "--out", str(out)]) == 2
    assert "linear_probe.pt is missing" in capsys.readouterr().err
    # a metrics.json with no recommendation (as `bmnas train` writes): the found network, saying so
    metrics = {k: v for k, v in m.items() if k != "recommended"}
    (old / "metrics.json").write_text(json.dumps(metrics))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load(old).method == "searched"
    assert "names no recommended network" in caplog.text
    assert main(["predict", str(old), "--data", str(data), "--out", str(out)]) == 0
    assert "by searched (--stage train)" in capsys.readouterr().out


def test_only_a_genotype_without_cells_may_have_a_linear_path_and_no_head_states():
    from bmnas.core.genotype import FeatureSpec, GenotypeError
    from bmnas.space.baselines import baseline

    feats = (FeatureSpec("a.x", 3, 1), FeatureSpec("b.y", 2, 4))
    probe = Genotype(8, 4, feats, (), (), linear=("a.x", "b.y"))
    assert probe.describe() == "head: linear(a.x, b.y)" and probe.used_features() == ("a.x", "b.y")
    assert Genotype.from_json(probe.to_json()) == probe
    with pytest.raises(GenotypeError, match=r"genotype\.output: the head needs at least one state"):
        Genotype(8, 4, feats, (), ())  # neither head states nor a linear path
    cells = baseline("sum", feats, C=8, L=4).cells
    with pytest.raises(GenotypeError, match=r"genotype\.output: the head needs at least one state"):
        Genotype(8, 4, feats, cells, (), linear=("a.x",))  # Cells whose output nothing reads
