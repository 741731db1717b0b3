"""The package's front door: ``bmnas.search`` and ``bmnas.train`` are the two stages' entry functions."""

import importlib
import inspect

import pytest

import bmnas
from bmnas.engine.loop import evaluate
from bmnas.features.synthetic import planted_interaction
from bmnas.method.train import with_recipe
from bmnas.space.baselines import late_fusion


def test_search_and_train_are_the_stage_functions():
    searcher, trainer = (
        importlib.import_module("bmnas.method.search"),
        importlib.import_module("bmnas.method.train"),
    )
    # importing the stage modules must not replace the functions of the same name
    assert bmnas.search is searcher.search and bmnas.train is trainer.train
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
    assert r.test == evaluate(r.model, data["test"], data.task)  # the test metrics are the returned model's
    again = bmnas.train(genotype, data, cfg, progress=False)
    assert again.test == r.test and [h["train_loss"] for h in again.history] == [
        h["train_loss"] for h in r.history
    ]
