"""Hand-made fusion baselines written as genotypes, so they share every code path with found networks.

* :func:`unimodal`, :func:`late_fusion`: no Cells; the head reads features directly.
* Fixed-fusion Cells (paper Fig. 2, Table 7), each a Cell body in the op pool of docs/DESIGN.md §5:

  ========== ==================================================== =========================
  name       steps                                                paper
  ========== ==================================================== =========================
  sum        ``step1 = sum(x, y)``                                 DARTS (Fig. 2a)
  concat_fc  ``step1 = concat_fc(x, y)``                           MFAS (Fig. 2b)
  mha        ``step1 = attention(x, y)``, ``step2 = attention(y,   Transformer, two heads
             x)``, output ``[step1; step2]`` → 1×1 conv to C       (Fig. 2d)
  aoa        ``step1 = attention(x, y)``,                          AoANet (Fig. 2c)
             ``step2 = linear_glu(step1, x)``
  ========== ==================================================== =========================

  ``mha``: our attention op has no per-head projections, so two heads on the same ``(x, y)``
  would compute the same function; the second head swaps query and key/value instead, and the
  Cell output concatenates both heads (``concat`` of 2 steps). ``aoa``: AoA gates the attended
  information with the query, ``(W₁ Att(x, y)) ⊙ σ(W₂ x)``, i.e. ``linear_glu(step1, x)``.

  The fixed feature selection (:func:`fixed_inputs`): Cell 1 reads the last feature of the first
  two modalities as ``(x, y)``; Cell ``n ≥ 2`` reads ``(cell_{n-1}, last feature of modality
  n mod |modalities|)``, so later Cells refine the earlier Cell (its residual input x) with one
  modality after another; the head reads the last ``multiplier`` Cells, as a searched genotype.
* :func:`random_genotype`: a uniform draw of α, β, γ passed through :func:`bmnas.space.derive.derive`,
  so every sample obeys the derivation rules (distinct Cell input pairs, earlier Cells allowed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..core.genotype import PAPER_RULES, CellGene, FeatureSpec, Genotype, StepGene, last_feature, modalities
from .derive import derive
from .ops import ZERO, get_op

FIXED_CELLS: Mapping[str, tuple[tuple[StepGene, ...], tuple[str, ...]]] = {
    "sum": ((StepGene("sum", ("x", "y")),), ("step1",)),
    "concat_fc": ((StepGene("concat_fc", ("x", "y")),), ("step1",)),
    "mha": ((StepGene("attention", ("x", "y")), StepGene("attention", ("y", "x"))), ("step1", "step2")),
    "aoa": ((StepGene("attention", ("x", "y")), StepGene("linear_glu", ("step1", "x"))), ("step2",)),
}
"""Fixed-fusion Cell bodies by name: (steps, concat)."""


def unimodal(features: Sequence[FeatureSpec], modality: str, C: int, L: int) -> Genotype:
    """One modality's last feature, projected, straight into the head."""
    return Genotype(C, L, tuple(features), (), (last_feature(features, modality),))


def late_fusion(features: Sequence[FeatureSpec], C: int, L: int) -> Genotype:
    """Concatenation of each modality's last feature, then the head."""
    return Genotype(C, L, tuple(features), (), tuple(last_feature(features, m) for m in modalities(features)))


def fixed_inputs(features: Sequence[FeatureSpec], num_cells: int) -> list[tuple[str, str]]:
    """The fixed feature selection of the fixed-fusion baselines: ``(x, y)`` of each Cell.

    Cell 1: last features of modalities 0 and 1 (with a single modality: its last two features);
    Cell ``n ≥ 2``: ``(cell_{n-1}, last feature of modality n mod |modalities|)``.
    """
    mods = modalities(features)
    lasts = [last_feature(features, m) for m in mods]
    if len(lasts) < 2:
        names = [f.name for f in features]
        if len(names) < 2:
            raise ValueError(f"a fusion Cell needs two features, got {names}")
        lasts = names[-2:]
    pairs = [(lasts[0], lasts[1])]
    for n in range(2, num_cells + 1):
        pairs.append((f"cell{n - 1}", lasts[n % len(lasts)]))
    return pairs


def fixed_fusion(
    name: str, features: Sequence[FeatureSpec], C: int, L: int, num_cells: int = 2, multiplier: int = 0
) -> Genotype:
    """The fixed-fusion baseline ``name`` (a key of :data:`FIXED_CELLS`) on :func:`fixed_inputs`.

    Args:
        num_cells: N, as in the search config.
        multiplier: the last Cells the head reads (0: all), as in the search config.
    """
    if name not in FIXED_CELLS:
        raise ValueError(f"unknown fixed-fusion Cell {name!r}; choose from {sorted(FIXED_CELLS)}")
    if num_cells < 1:
        raise ValueError(f"num_cells must be >= 1, got {num_cells}")
    steps, concat = FIXED_CELLS[name]
    cells = tuple(CellGene(pair, steps, concat) for pair in fixed_inputs(features, num_cells))
    k = multiplier or num_cells
    output = tuple(f"cell{n}" for n in range(num_cells - k + 1, num_cells + 1))
    return Genotype(C, L, tuple(features), cells, output)


def baseline(
    name: str, features: Sequence[FeatureSpec], C: int, L: int, num_cells: int = 2, multiplier: int = 0
) -> Genotype:
    """A hand-made baseline by name: ``unimodal:<modality>``, ``late_fusion`` or a fixed-fusion Cell."""
    if name.startswith("unimodal:"):
        return unimodal(features, name.split(":", 1)[1], C, L)
    if name == "late_fusion":
        return late_fusion(features, C, L)
    if name in FIXED_CELLS:
        return fixed_fusion(name, features, C, L, num_cells, multiplier)
    raise ValueError(
        f"{name!r} is not a baseline; choose unimodal:<modality>, late_fusion or {sorted(FIXED_CELLS)}"
    )


def random_genotype(
    features: Sequence[FeatureSpec],
    ops: Sequence[str],
    C: int,
    L: int,
    num_cells: int,
    num_steps: int,
    rng: np.random.Generator,
    arity: Mapping[str, int] | None = None,
    inner_multiplier: int = 1,
    multiplier: int = 0,
) -> Genotype:
    """A random architecture of the search space: uniform α, β, γ through :func:`derive`.

    Every predecessor (features and earlier Cells), every op and every admissible input pair can
    be drawn; the derivation rules (distinct Cell pairs, ``zero`` steps without inputs, op arity)
    hold by construction. ``arity``: inputs per op (default: from the op registry).
    """
    arity = dict(arity) if arity is not None else {o: get_op(o).arity for o in ops}
    K = len(features)
    slots = max([2] + [arity.get(o, 2) for o in ops if o != ZERO])
    alpha = [rng.random((2, K + n)) for n in range(num_cells)]
    beta = [[rng.random((slots, 2 + m)) for m in range(num_steps)] for _ in range(num_cells)]
    gamma = [rng.random((num_steps, len(ops))) for _ in range(num_cells)]
    return derive(
        alpha,
        beta,
        gamma,
        features,
        ops,
        C,
        L,
        arity=arity,
        inner_multiplier=inner_multiplier,
        multiplier=multiplier or None,
        rules=PAPER_RULES,  # as drawn since 0.1: any pair, any op (random rows stay comparable)
    )
