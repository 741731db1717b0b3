"""The package's front door: ``bmnas.search`` and ``bmnas.train`` are the two stages' entry functions."""

import fcntl
import importlib
import inspect

import pytest

import bmnas
from bmnas.features.synthetic import planted_interaction
from bmnas.method.train import score, with_recipe
from bmnas.space.baselines import late_fusion


def test_search_and_train_are_the_commands_functions():
    searcher, runner = (
        importlib.import_module("bmnas.method.search"),
        importlib.import_module("bmnas.method.run"),
    )
    importlib.import_module("bmnas.method.train")
    # importing the stage modules must not replace the functions of the same name; bmnas.train is
    # `bmnas train`: the evaluation stage, then model.pt and metrics.json
    assert bmnas.search is searcher.search and bmnas.train is runner.train_found
    assert {"search", "train"} <= set(bmnas.__all__)
    assert list(inspect.signature(bmnas.search).parameters) == [
        "data",
        "cfg",
        "run",
        "progress",
        "stop_after",
    ]
    params = inspect.signature(bmnas.train).parameters
    assert list(params)[:6] == ["genotype", "data", "cfg", "run", "progress", "stop_after"]
    assert params["run"].default is None and params["progress"].default is True


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'serch'"):
        _ = bmnas.serch


def test_train_trains_a_genotype_and_tests_the_network_it_returns():
    data = planted_interaction(n=200, L=4, seed=0)
    cfg = bmnas.Config.from_sources(
        None, ["model.C=8", "model.L=4", "train.epochs=2", "train.select_epochs=false"]
    )
    genotype = late_fusion(data.specs(), C=8, L=4)
    r = bmnas.train(genotype, data, cfg, progress=False)
    assert (r.epochs, [h["epoch"] for h in r.history], r.val) == (2, [1, 2], None)
    assert r.model.genotype == with_recipe(genotype, cfg)  # with its linear path
    # the test metrics are the returned model's, scored where it was trained (on a GPU its CPU copy's
    # logits differ in the last bits: TF32, other reductions)
    assert {p.device.type for p in r.model.parameters()} == {"cpu"}  # returned as a CPU copy
    assert r.test == score(r.model, data["test"], data, cfg)
    r.model.cpu()
    again = bmnas.train(genotype, data, cfg, progress=False)
    assert again.test == r.test and [h["train_loss"] for h in again.history] == [
        h["train_loss"] for h in r.history
    ]


def test_config_from_dict_checks_keys_and_values_as_set_does():
    cfg = bmnas.Config.from_dict({"seed": 1, "search": {"epochs": 2}, "model": {"ops": ["sum", "attention"]}})
    assert (cfg.seed, cfg.search.epochs, cfg.model.ops) == (1, 2, ("sum", "attention"))
    assert cfg == bmnas.Config.from_sources(None, ["seed=1", "search.epochs=2", "model.ops=[sum,attention]"])
    for bad, dotted in ((({"search": {"epoch": 2}}), "search.epoch=2"), ({"seed": "x"}, "seed=x")):
        with pytest.raises(bmnas.core.config.ConfigError) as from_dict:
            bmnas.Config.from_dict(bad)
        with pytest.raises(bmnas.core.config.ConfigError) as from_set:
            bmnas.Config.from_sources(None, [dotted])
        assert str(from_dict.value) == str(from_set.value)


def test_train_given_a_path_writes_a_run_that_predict_reads(tmp_path):
    data = planted_interaction(n=200, L=4, seed=0)
    cfg = bmnas.Config.from_dict({"model": {"C": 8, "L": 4}, "train": {"epochs": 1, "select_epochs": False}})
    r = bmnas.train(late_fusion(data.specs(), C=8, L=4), data, cfg, run=tmp_path / "t", progress=False)
    assert {"config.yaml", "fingerprint.json", "model.pt", "metrics.json"} <= {
        p.name for p in (tmp_path / "t").iterdir()
    }
    with open(tmp_path / "t" / ".lock") as f:  # given back on return: another process may open the run
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    preds = bmnas.load(tmp_path / "t").predict_pooled(data["test"].features)
    assert preds.metrics(data["test"].labels)["accuracy"] == pytest.approx(r.test["accuracy"])
