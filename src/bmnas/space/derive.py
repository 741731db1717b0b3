"""Derivation: the discrete genotype read off trained architecture weights."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from ..core.genotype import (
    CELL_INPUTS,
    OUR_RULES,
    CellGene,
    DeriveRules,
    FeatureSpec,
    Genotype,
    GenotypeError,
    StepGene,
    _require,
)


def best_pair(
    w_x: np.ndarray,
    w_y: np.ndarray,
    distinct: bool,
    exclude: Collection[frozenset[int]] = (),
    allowed: np.ndarray | None = None,
) -> tuple[int, int]:
    """``argmax_{(i, j)} w_x[i] · w_y[j]`` over ordered pairs; ties go to the lower ``(i, j)``.

    With ``distinct`` the pair needs ``i ≠ j`` and an unordered pair not in ``exclude``;
    ``allowed`` (a boolean matrix) rules out the pairs where it is False.
    """
    score = np.outer(w_x, w_y).astype(np.float64)
    if allowed is not None:
        score[~allowed[: len(w_x), : len(w_y)]] = -np.inf
    if distinct:
        np.fill_diagonal(score, -np.inf)
        for pair in exclude:
            if len(pair) == 2:
                i, j = sorted(pair)
                if i < len(w_x) and j < len(w_x):
                    score[i, j] = score[j, i] = -np.inf
    flat = int(np.argmax(score))  # first maximum in row-major order = lowest (i, j)
    if not np.isfinite(score.flat[flat]):
        raise GenotypeError("no admissible input pair is left for this Cell (too few predecessors)")
    return divmod(flat, score.shape[1])


def cross_modal_pairs(features: Sequence[str], num_cells: int) -> np.ndarray | None:
    """Which Cell input pairs fuse two modalities: ``allowed[i, j]`` over ``[features…, cells…]``.

    A pair of features of one modality is not allowed; any pair with a Cell is. None when the
    features come from fewer than two modalities (then every pair is allowed).
    """
    mods = [f.split(".", 1)[0] for f in features] + [None] * num_cells
    if len({m for m in mods if m is not None}) < 2:
        return None
    return np.array([[a is None or b is None or a != b for b in mods] for a in mods])


def _states_reading_y(steps: Sequence[StepGene]) -> set[str]:
    """The Cell's states whose value depends on its input ``y`` (``zero`` depends on nothing)."""
    reach = {"y"}
    for m, s in enumerate(steps):
        if any(i in reach for i in s.inputs):
            reach.add(f"step{m + 1}")
    return reach


def reading_y(
    steps: Sequence[StepGene], beta: Sequence[np.ndarray], concat: Sequence[str], distinct: bool
) -> tuple[StepGene, ...]:
    """``steps``, with the last step's inputs re-chosen when no output step depends on ``y``.

    The Cell output is ``LayerNorm(reduce(concat) + x)``: it always reads ``x``, and reads ``y`` only
    through its steps. Derived as is, ``step1 = zero(), step2 = sum(x, step1)`` fuses nothing: the
    Cell is ``LayerNorm(2x)``. Then the last step takes, among its input pairs of which one state
    depends on ``y``, the one of largest weight ``w_x(i) · w_y(j)`` (``distinct``: ``i ≠ j``); a
    one-input op the state of largest weight that does. Its op stays; ``zero`` is not re-chosen.
    """
    reach = _states_reading_y(steps)
    last = steps[-1]
    if any(c in reach for c in concat) or not last.inputs:
        return tuple(steps)
    m = len(steps) - 1
    names = [*CELL_INPUTS, *(f"step{i + 1}" for i in range(m))]
    ok = np.array([n in reach for n in names])
    b = np.asarray(beta[m], dtype=np.float64)
    w = [b[min(s, b.shape[0] - 1)] for s in range(len(last.inputs))]
    if len(last.inputs) == 2:
        chosen: tuple[int, ...] = best_pair(w[0], w[1], distinct, allowed=ok[:, None] | ok[None, :])
    else:  # one or three inputs: the last slot takes the best state that reads y
        picks = [int(np.argmax(ws)) for ws in w]
        picks[-1] = int(np.argmax(np.where(ok, w[-1], -np.inf)))
        chosen = tuple(picks)
    return (*steps[:-1], StepGene(last.op, tuple(names[c] for c in chosen)))


def derive(
    alpha: Sequence[np.ndarray],
    beta: Sequence[Sequence[np.ndarray]],
    gamma: Sequence[np.ndarray],
    features: Sequence[FeatureSpec],
    ops: Sequence[str],
    C: int,
    L: int,
    arity: Mapping[str, int] | None = None,
    inner_multiplier: int = 1,
    multiplier: int | None = None,
    shared: bool = False,
    rules: DeriveRules = OUR_RULES,
) -> Genotype:
    """Derive the genotype from architecture weights (a pure function).

    Args:
        alpha: per Cell n (0-based), identity weights ``(S, K + n)`` of its input slots over the
            predecessors ``[f_1 … f_K, cell_1 … cell_n]`` (S = 2 slots, or 1 when ``shared``).
        beta: per Cell, per step m (0-based), identity weights ``(S_step, 2 + m)`` over
            ``[x, y, step_1 … step_m]``.
        gamma: per Cell, op weights ``(M, len(ops))`` (softmaxed or raw: only the argmax counts).
        features: the K input features, in the hypernet's order.
        ops: the op pool, in γ's column order.
        arity: number of inputs of each op (default 2).
        inner_multiplier: number of last steps concatenated at each Cell output.
        multiplier: number of last Cells the head reads (default: all).
        shared: the authors' ``input_mode: shared``: one mixture feeds all slots; steps then take
            the best two *distinct* predecessors, as the authors' code does.
        distinct_steps: a two-input step takes ``argmax_{i ≠ j} w_x(i) w_y(j)`` (DARTS' rule: every
            step fuses two different states) instead of each slot's own argmax (the paper's rule,
            under which one predecessor may fill both slots).
        zero_output: whether the steps a Cell outputs (its last ``inner_multiplier``) may derive
            ``zero``; if not, their op is the argmax of γ over the other ops, so no Cell reduces to
            ``LayerNorm(x)``, and the Cell's output must depend on ``y`` (:func:`reading_y`: e.g.
            ``step1 = zero(), step2 = sum(x, step1)`` becomes ``step2 = sum(x, y)``).
        cross_modal: a Cell may not read two features of the same modality (MFAS' rule: every
            fusion Cell fuses two modalities or refines an earlier Cell). Ignored with fewer than
            two modalities.

    Rules: Cell n takes ``argmax_{i ≠ j} w_x(i) w_y(j)`` over all its predecessors (earlier Cells
    included) whose unordered pair no earlier Cell took; a step takes its op by ``argmax γ`` and, per
    input slot, the predecessor with the largest weight (by default the same one may fill both
    slots; see ``distinct_steps``); ties go to the lower index.
    """
    arity = arity or {}
    names = [f.name for f in features]
    K = len(names)
    states = list(names)
    used_pairs: set[frozenset[int]] = set()
    allowed = cross_modal_pairs(names, len(alpha)) if rules.cross_modal else None
    cells = []
    for n, a in enumerate(alpha):
        a = np.asarray(a, dtype=np.float64)
        _require(a.shape[-1] == K + n, f"alpha[{n}]", f"expected {K + n} predecessors, got shape {a.shape}")
        w_x, w_y = (a[0], a[0]) if a.shape[0] == 1 else (a[0], a[1])
        i, j = best_pair(w_x, w_y, distinct=True, exclude=used_pairs, allowed=allowed)
        used_pairs.add(frozenset((i, j)))
        steps = []
        inner = list(CELL_INPUTS)
        g = np.asarray(gamma[n], dtype=np.float64)
        num_steps = len(beta[n])
        for m, b in enumerate(beta[n]):
            b = np.asarray(b, dtype=np.float64)
            g_m = g[m].copy()
            if not rules.zero_output and m >= num_steps - inner_multiplier and "zero" in ops and len(ops) > 1:
                g_m[list(ops).index("zero")] = -np.inf
            op = ops[int(np.argmax(g_m))]
            k = 0 if op == "zero" else arity.get(op, 2)
            if k == 0:
                chosen: tuple[int, ...] = ()
            elif shared and k == 2:
                chosen = best_pair(b[0], b[0], distinct=b.shape[-1] > 1)
            elif rules.distinct_steps and k == 2 and b.shape[0] >= 2 and b.shape[-1] > 1:
                chosen = best_pair(b[0], b[1], distinct=True)
            else:
                chosen = tuple(int(np.argmax(b[min(s, b.shape[0] - 1)])) for s in range(k))
            steps.append(StepGene(op, tuple(inner[c] for c in chosen)))
            inner.append(f"step{m + 1}")
        concat = tuple(inner[-inner_multiplier:])
        if not rules.zero_output:
            steps = reading_y(steps, beta[n], concat, shared or rules.distinct_steps)
        cells.append(CellGene((states[i], states[j]), tuple(steps), concat))
        states.append(f"cell{n + 1}")
    N = len(cells)
    k_out = multiplier or N
    output = tuple(f"cell{n}" for n in range(N - k_out + 1, N + 1))
    return Genotype(C, L, tuple(features), tuple(cells), output)
