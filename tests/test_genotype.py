"""Derivation on hand-built weights, the JSON round trip, and errors on malformed genotypes."""

import json

import numpy as np
import pytest

from bmnas.core.genotype import (
    OUR_RULES,
    PAPER_RULES,
    CellGene,
    DeriveRules,
    Genotype,
    GenotypeError,
    StepGene,
)
from bmnas.space.derive import best_pair, derive
from helpers import FEATS, OPS


def one_hot(n, i, hi=0.9, lo=0.1):
    w = np.full(n, lo)
    w[i] = hi
    return w


def steps_weights(M=1, S=2):
    return [np.full((S, 2 + m), 0.5) for m in range(M)]


def test_one_hot_alpha_selects_that_pair():
    alpha = [np.stack([one_hot(4, 1), one_hot(4, 2)])]
    g = derive(
        alpha, [steps_weights()], [np.array([[0, 0, 5.0, 0, 0]])], FEATS, OPS, C=8, L=4, rules=PAPER_RULES
    )
    assert g.cells[0].inputs == ("a.f2", "b.f1")
    assert g.cells[0].steps == (StepGene("attention", ("x", "x")),)  # ties (all 0.5) -> lowest index
    assert g.output == ("cell1",)


def test_cell_can_pick_an_earlier_cell():
    alpha = [
        np.stack([one_hot(4, 0), one_hot(4, 3)]),
        np.stack([one_hot(5, 4, hi=0.99), one_hot(5, 1)]),  # slot x prefers cell1 (index K + 0 = 4)
    ]
    g = derive(
        alpha,
        [steps_weights(), steps_weights()],
        [np.eye(5)[[1]], np.eye(5)[[4]]],
        FEATS,
        OPS,
        C=8,
        L=4,
        rules=PAPER_RULES,
    )
    assert g.cells[1].inputs == ("cell1", "a.f2")
    assert g.cells[1].steps[0].op == "concat_fc"


def test_distinct_pair_rule_between_cells():
    same = np.stack([one_hot(4, 0), one_hot(4, 2)])
    alpha = [same, np.concatenate([same, np.zeros((2, 1))], axis=1)]  # cell2 prefers the same pair
    g = derive(
        alpha,
        [steps_weights(), steps_weights()],
        [np.eye(5)[[1]]] * 2,
        FEATS,
        OPS,
        C=8,
        L=4,
        rules=PAPER_RULES,
    )
    assert g.cells[0].inputs == ("a.f1", "b.f1")
    assert frozenset(g.cells[1].inputs) != frozenset(g.cells[0].inputs)
    # next best: x=a.f1 (0.9) with the best remaining y (0.1 ties -> lowest index a.f2)
    assert g.cells[1].inputs == ("a.f1", "a.f2")


def test_best_pair_ties_break_by_lower_index_and_never_i_equals_j():
    assert best_pair(np.ones(3), np.ones(3), distinct=True) == (0, 1)
    assert best_pair(np.array([1.0, 0.0]), np.array([1.0, 0.0]), distinct=True) == (0, 1)
    assert best_pair(np.array([1.0, 0.0]), np.array([1.0, 0.0]), distinct=False) == (0, 0)


def test_step_inputs_may_repeat_and_zero_step_has_no_inputs():
    alpha = [np.stack([one_hot(4, 0), one_hot(4, 1)])]
    beta = [[np.stack([one_hot(2, 1), one_hot(2, 1)]), np.stack([one_hot(3, 2), one_hot(3, 0)])]]
    gamma = [np.array([[0, 9.0, 0, 0, 0], [9.0, 0, 0, 0, 0]])]
    g = derive(alpha, beta, gamma, FEATS, OPS, C=8, L=4, inner_multiplier=2, rules=PAPER_RULES)
    assert g.cells[0].steps == (StepGene("sum", ("y", "y")), StepGene("zero", ()))
    assert g.cells[0].concat == ("step1", "step2")


def _zero_then_sum_of_x_and_step1():
    """α, β, γ of one Cell whose argmaxes read ``step1 = zero(), step2 = sum(x, step1)``."""
    alpha = [np.stack([one_hot(4, 0), one_hot(4, 2)])]
    beta = [[np.full((2, 2), 0.5), np.stack([np.array([0.6, 0.1, 0.3]), np.array([0.2, 0.1, 0.7])])]]
    gamma = [np.array([[9.0, 0, 0, 0, 0], [0, 9.0, 0, 0, 0]])]  # step1: zero; step2: sum
    return alpha, beta, gamma


def test_a_derived_cell_output_always_reads_its_second_input():
    """``LayerNorm(sum(x, zero) + x)`` ignores y: by default the last step is re-chosen to read y."""
    alpha, beta, gamma = _zero_then_sum_of_x_and_step1()
    g = derive(alpha, beta, gamma, FEATS, OPS, C=8, L=4, rules=OUR_RULES)
    # among the pairs with a state that reads y (only y itself: step1 is zero), the best is
    # w_x(x)·w_y(y) = 0.6·0.1 against w_x(y)·w_y(step1) = 0.1·0.7 -> (y, step1)
    assert g.cells[0].steps == (StepGene("zero", ()), StepGene("sum", ("y", "step1")))
    # asked for (zero_output, as the paper's rules): the argmaxes as they are
    for rules in (PAPER_RULES, DeriveRules(zero_output=True)):
        g = derive(alpha, beta, gamma, FEATS, OPS, C=8, L=4, rules=rules)
        assert g.cells[0].steps[1] == StepGene("sum", ("x", "step1"))
    # a Cell that already reads y is left alone
    beta[0][1] = np.stack([np.array([0.1, 0.6, 0.3]), np.array([0.2, 0.1, 0.7])])
    g = derive(alpha, beta, gamma, FEATS, OPS, C=8, L=4, rules=OUR_RULES)
    assert g.cells[0].steps[1] == StepGene("sum", ("y", "step1"))


def test_a_search_never_derives_a_cell_that_ignores_y():
    """Every genotype a default search derives reads y in each Cell's output (100 random draws)."""
    from bmnas.space.derive import _states_reading_y

    rng = np.random.default_rng(0)
    for _ in range(100):
        alpha = [rng.random((2, 4 + n)) for n in range(2)]
        beta = [[rng.random((2, 2 + m)) for m in range(3)] for _ in range(2)]
        gamma = [rng.random((3, 5)) * np.array([3.0, 1, 1, 1, 1]) for _ in range(2)]  # zero is likely
        g = derive(alpha, beta, gamma, FEATS, OPS, C=8, L=4, rules=OUR_RULES)
        for cell in g.cells:
            assert set(cell.concat) & _states_reading_y(cell.steps), cell


def test_shared_mode_takes_distinct_step_inputs_like_the_authors():
    alpha = [np.array([one_hot(4, 2)])]  # one shared slot
    beta = [[np.array([[0.6, 0.7]])]]
    g = derive(alpha, beta, [np.eye(5)[[4]]], FEATS, OPS, C=8, L=4, shared=True, rules=PAPER_RULES)
    # w(i)·w(j) with i != j peaks at 0.9·0.1 for (0, 2) and (2, 0): the lower pair wins, x = a.f1
    assert g.cells[0].inputs == ("a.f1", "b.f1")
    assert g.cells[0].steps[0].inputs == ("x", "y")


def make():
    return Genotype(
        C=8,
        L=4,
        features=FEATS,
        cells=(
            CellGene(
                ("a.f2", "b.f1"),
                (StepGene("attention", ("x", "y")), StepGene("sum", ("step1", "x"))),
                ("step2",),
            ),
            CellGene(
                ("cell1", "b.f2"), (StepGene("linear_glu", ("y", "x")), StepGene("zero", ())), ("step1",)
            ),
        ),
        output=("cell1", "cell2"),
    )


def test_json_round_trip(tmp_path):
    g = make()
    assert Genotype.from_json(g.to_json()) == g
    path = g.save(tmp_path / "g.json")
    assert Genotype.load(path) == g
    d = json.loads(path.read_text())
    assert d["version"] == 1 and d["format"] == "bmnas.genotype"
    assert d["cells"][1]["inputs"] == ["cell1", "b.f2"]
    assert g.used_features() == ("a.f2", "b.f1", "b.f2")


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda d: d["cells"][0].update(inputs=["a.f2", "nope.x"]), r"cells\[0\]\.inputs: y='nope.x'"),
        (lambda d: d["cells"][0].update(inputs=["cell2", "a.f1"]), r"cells\[0\]\.inputs: x='cell2'"),
        (
            lambda d: d["cells"][1]["steps"][0].update(inputs=["step2", "x"]),
            r"cells\[1\]\.steps\[0\]\.inputs",
        ),
        (lambda d: d["cells"][0].update(concat=["step9"]), r"cells\[0\]\.concat"),
        (lambda d: d.update(version=7), r"version: unsupported version 7"),
        (lambda d: d.pop("cells"), r"missing key 'cells'"),
        (lambda d: d["cells"][1].update(inputs=["b.f1", "a.f2"]), r"pair \['a.f2', 'b.f1'\] is already used"),
        (lambda d: d.update(output=["cell3"]), r"output: 'cell3'"),
        (lambda d: d["features"][0].update(channels="8"), r"features\[0\]\.channels: expected int"),
    ],
)
def test_malformed_genotype_errors_say_what_and_where(edit, where):
    d = make().to_dict()
    edit(d)
    with pytest.raises(GenotypeError, match=where):
        Genotype.from_json(json.dumps(d), where="g.json")


def test_load_reports_file_and_bad_json(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(GenotypeError, match="bad.json: not valid JSON"):
        Genotype.load(p)


def test_describe_shows_the_residual_input():
    g = Genotype(
        8,
        4,
        FEATS,
        (
            CellGene(("a.f2", "b.f1"), (StepGene("sum", ("y", "y")),), ("step1",)),
            CellGene(
                ("cell1", "a.f1"),
                (StepGene("sum", ("x", "y")), StepGene("attention", ("step1", "x"))),
                ("step1", "step2"),
            ),
        ),
        ("cell1", "cell2"),
    )
    assert g.describe().splitlines() == [
        "cell1: x=a.f2 y=b.f1 | step1=sum(y, y) | out=LayerNorm(step1 + x)",
        "cell2: x=cell1 y=a.f1 | step1=sum(x, y), step2=attention(step1, x) "
        "| out=LayerNorm(conv1x1[step1; step2] + x)",
        "head: cell1 ++ cell2",
    ]
