"""The report floor: tables (Markdown, CSV) byte for byte, the figure helper's one resolution,
the study figures, the run summary, and the one dotted-key setter of the configuration."""

import struct

import pytest

from bmnas.core.config import Config, ConfigError, set_dotted
from bmnas.report import tables
from bmnas.report.figures import DPI, figure, save
from bmnas.report.study_plots import ablation_bars, condition_bars, trials_chart
from bmnas.report.summary import RunReport, format_table, recommend, report_from_metrics, score_name
from bmnas.studies.ablate import METHODS, val_of
from bmnas.studies.strategies import (
    PROBE,
    STRATEGIES,
    bilevel_search,
    fixed_genotype,
    smbo_search,
    strategy_of,
)
from bmnas.studies.sweep import apply_params


def png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_markdown_table_aligns_and_formats_cells():
    text = tables.markdown(["m", "a", "b"], [["x", 1, 0.5], ["y", None, "–"]], align="-r")
    assert text == "| m | a | b |\n|---|---:|---|\n| x | 1 | 0.5 |\n| y | None | – |"
    assert tables.markdown(["only"], []) == "| only |\n|---|"
    assert tables.markdown(["a", "b"], [], align="lc").splitlines()[1] == "|:---|:---:|"


def test_csv_is_the_csv_modules_dialect_written_atomically(tmp_path):
    rows = [[1, "a,b", None], [2.5, 'say "hi"', 0.1]]
    expected = 'n,text,v\r\n1,"a,b",\r\n2.5,"say ""hi""",0.1\r\n'
    assert tables.csv_text(["n", "text", "v"], rows) == expected
    path = tables.write_csv(tmp_path / "t.csv", ["n", "text", "v"], iter(rows))  # rows may be a stream
    assert path.read_bytes() == expected.encode()
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # no temporary file left


def test_every_figure_is_saved_at_one_resolution(tmp_path):
    fig = figure(3, 2)
    fig.subplots().plot([0, 1], [1, 0])
    assert fig.dpi == DPI
    assert png_size(save(fig, tmp_path / "f.png")) == (3 * DPI, 2 * DPI)
    assert save(figure(2, 2), tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")


def test_study_figures_have_their_size_in_inches_at_the_one_dpi(tmp_path):
    a = ablation_bars(
        ["sum", "searched"], [0.6, 0.7], [0.01, 0.0], ["b", "r"], "accuracy", tmp_path / "a.png"
    )
    assert png_size(a) == (5 * DPI, round(3.8 * DPI))  # width: max(5, 0.7 · 2 + 1.5) inches
    value = {(m, c): 0.5 for m in ("s", "t") for c in ("clean", "noise:1")}
    c = condition_bars(["s", "t"], ["clean", "noise:1"], value, "accuracy", tmp_path / "c.png")
    assert png_size(c) == (6 * DPI, round(4.5 * DPI))
    t = trials_chart([0, 2, 3], [0.5, 0.7, 0.6], "accuracy", tmp_path / "t.png")
    assert png_size(t) == (6 * DPI, round(3.6 * DPI))


ROWS = {
    "late_fusion": {"test": {"accuracy": 0.7}, "val": 0.8, "params": {"total": 1200}, "train_seconds": 1.0},
    "searched": {
        "test": {"accuracy": 0.75},
        "val": 0.85,
        "params": {"total": 3400},
        "epochs": 7,
        "train_seconds": 2.0,
        "search_seconds": 9.25,
    },
}


def test_run_table_and_its_rebuild_from_metrics():
    best, reason = recommend(ROWS, "accuracy", scored_by=score_name(3))
    assert (best, reason) == (
        "searched",
        "highest 3-fold CV (train + val) accuracy (0.8500); late_fusion 0.8000",
    )
    assert score_name(0) == "val"
    assert score_name(3, val_only=True) == "3-fold CV (val rows scored)"
    lines = format_table(RunReport(ROWS, "accuracy", best, reason, folds=3)).splitlines()
    assert lines[0] == "  method                 cv accuracy  test accuracy    params epochs search s train s"
    assert lines[2].split() == ["late_fusion", "0.8000", "0.7000", "1,200", "0", "0.0", "1.0"]
    assert lines[3].split() == ["*", "searched", "0.8500", "0.7500", "3,400", "7", "9.2", "2.0"]
    assert lines[-1] == f"* recommended: searched — {reason}"
    metrics = {**ROWS["searched"], "metric": "accuracy", "baselines": {"late_fusion": ROWS["late_fusion"]}}
    metrics["recommended"] = {"method": best, "reason": reason}
    rebuilt = report_from_metrics(metrics)
    assert (rebuilt.rows, rebuilt.recommended, rebuilt.folds) == (ROWS, "searched", 0)


def test_every_ablation_method_but_the_probe_has_one_strategy():
    names = [m for m in METHODS if m != PROBE]
    assert sorted(STRATEGIES) == sorted(names)
    assert strategy_of("unimodal:audio") is fixed_genotype and strategy_of("random") is fixed_genotype
    assert strategy_of("searched_no_zero") is bilevel_search and strategy_of("smbo") is smbo_search
    with pytest.raises(ValueError, match="method 'linear_probe' has no strategy"):
        strategy_of(PROBE)


def test_result_rows_are_read_under_their_old_val_name_too():
    assert val_of({"val": 0.5}, "accuracy") == 0.5
    assert val_of({"val_accuracy": 0.25}, "accuracy") == 0.25  # results.jsonl of earlier versions
    assert val_of({"val": None, "val_accuracy": 0.25}, "accuracy") is None
    assert val_of({}, "accuracy") is None


def test_one_dotted_setter_for_overrides_and_sweep_parameters():
    d = {"model": {"C": 8}, "seed": 0}
    set_dotted(d, "search.lr", 0.1, where="w")  # overrides add a section
    set_dotted(d, "model.C", 16, where="w")
    assert d == {"model": {"C": 16}, "seed": 0, "search": {"lr": 0.1}}
    with pytest.raises(ConfigError, match=r"^w: 'seed' is not a config section$"):
        set_dotted(d, "seed.x", 1, where="w")
    with pytest.raises(ConfigError, match=r"^override 'seed.x=1': 'seed' is not a config section$"):
        Config.from_sources(None, ["seed=3", "seed.x=1"])
    assert Config.from_sources(None, ["model.C=32", "search.epochs=3"]).model.C == 32
    base = Config.from_sources(None, ["model.C=8"])
    assert apply_params(base, {"model.C": 64, "search.lr": 0.01}).search.lr == 0.01
    with pytest.raises(ConfigError, match=r"^model.nope: unknown config key$"):
        apply_params(base, {"model.nope": 1})
    with pytest.raises(ConfigError, match=r"^nope.x: 'nope' is not a config section$"):
        apply_params(base, {"nope.x": 1})  # a whole config: no new section
    with pytest.raises(ConfigError, match=r"^model.C: must be >= 1, got -1$"):
        apply_params(base, {"model.C": -1})


def test_the_model_card_names_how_the_val_column_was_scored():
    from bmnas.report.model_card import model_card

    metrics = {
        **ROWS["searched"],
        "metric": "accuracy",
        "baselines": {"late_fusion": ROWS["late_fusion"]},
        "recommended": {"method": "searched", "reason": "highest"},
        "val_folds": 3,
    }
    assert "| 3-fold CV (train + val) accuracy |" in model_card("t", metrics, None, False)
    scored = {**metrics, "val_scored_by": "3-fold CV (val rows scored)"}
    assert "| 3-fold CV (val rows scored) accuracy |" in model_card("t", scored, None, False)
