"""A black-box alternative to the bilevel search: sequential model-based optimisation (SMBO).

In the spirit of MFAS (Pérez-Rúa et al. 2019; paper §2 and Table 5), over the same search space
as :mod:`bmnas.method.search` (the genotypes :func:`bmnas.space.baselines.random_genotype` draws):

1. train ``initial`` random genotypes briefly (``epochs`` on the train split, scored on val),
2. fit a surrogate (a random forest) from a one-hot encoding of each genotype to its val score,
3. draw ``candidates`` random genotypes, train the one with the best predicted score, repeat
   until ``budget`` genotypes have been trained.

Every evaluation goes through :class:`~bmnas.space.found.FoundNet` and :func:`~bmnas.method.train.train`,
so its cost is the real cost of a black-box search here: the ratio to the bilevel search's wall
time reproduces the comparison of paper Table 5 on our data. Each evaluated genotype is appended to
a JSON-lines log; a killed SMBO resumes from it (round ``r`` draws from ``default_rng([seed, r])``,
so a resumed run makes the same choices). A damaged round in the log (:data:`~bmnas.core.schemas.SMBO_ROW`,
or a genotype outside the search space) is logged and run again, with every round after it.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from ..core.config import Config
from ..core.data import FeatureData
from ..core.fileio import append_jsonl
from ..core.genotype import CELL_INPUTS, Genotype, GenotypeError, validate
from ..core.progress import bar as progress_bar
from ..core.schema import load_rows
from ..core.schemas import SMBO_ROW
from ..engine.metrics import primary_metric
from ..method.train import select_epochs
from ..space.baselines import random_genotype
from ..space.ops import ZERO, get_op


@dataclass(frozen=True)
class SMBOConfig:
    """Budget and knobs of :func:`smbo`."""

    budget: int = 20  # genotypes trained in total
    initial: int = 5  # random genotypes trained before the surrogate picks
    candidates: int = 500  # random genotypes ranked by the surrogate per round
    epochs: int = 2  # brief training per genotype: epochs on the train split, then scored on val
    trees: int = 100  # random-forest size

    def __post_init__(self) -> None:
        for k in ("budget", "initial", "candidates", "epochs", "trees"):
            if getattr(self, k) < 1:
                raise ValueError(f"smbo.{k} must be >= 1, got {getattr(self, k)}")


@dataclass
class SMBOResult:
    """The best genotype by val score, the per-round history and the total wall time (the cost)."""

    genotype: Genotype
    score: float
    metric: str
    history: list[dict]
    seconds: float


def encode(g: Genotype, num_cells: int, num_steps: int, ops: Sequence[str]) -> np.ndarray:
    """One-hot encoding of a genotype of the search space, of fixed length.

    Per Cell: its x and y inputs over ``[f_1 … f_K, cell_1 … cell_{N-1}]``; per step: its op over
    ``ops`` and each input slot over ``[x, y, step_1 … step_{M-1}]`` (all zeros for a zero step).
    """
    cells = tuple(f"cell{n}" for n in range(1, num_cells))
    states = {name: i for i, name in enumerate(g.feature_names + cells)}
    inner = {name: i for i, name in enumerate(CELL_INPUTS + tuple(f"step{m}" for m in range(1, num_steps)))}
    op_index = {o: i for i, o in enumerate(ops)}
    slots = max([2] + [get_op(o).arity for o in ops if o != ZERO])
    parts: list[np.ndarray] = []
    for n in range(num_cells):
        cell = g.cells[n] if n < len(g.cells) else None
        for s in range(2):
            v = np.zeros(len(states))
            if cell is not None:
                v[states[cell.inputs[s]]] = 1.0
            parts.append(v)
        for m in range(num_steps):
            step = cell.steps[m] if cell is not None and m < len(cell.steps) else None
            v = np.zeros(len(ops))
            if step is not None:
                v[op_index[step.op]] = 1.0
            parts.append(v)
            for s in range(slots):
                v = np.zeros(len(inner))
                if step is not None and s < len(step.inputs):
                    v[inner[step.inputs[s]]] = 1.0
                parts.append(v)
    return np.concatenate(parts)


def sample(data: FeatureData, cfg: Config, rng: np.random.Generator) -> Genotype:
    """A random genotype of ``cfg.model``'s search space over ``data``'s features."""
    m = cfg.model
    return random_genotype(
        data.specs(),
        m.ops,
        m.C,
        m.L,
        m.cells,
        m.steps,
        rng,
        inner_multiplier=m.inner_multiplier,
        multiplier=m.multiplier,
    )


def brief_score(genotype: Genotype, data: FeatureData, cfg: Config, epochs: int) -> float:
    """Train ``genotype`` for ``epochs`` on the train split alone; return its best val primary metric.

    The evaluation stage's own selection phase (:func:`bmnas.method.train.select_epochs`).
    """

    return select_epochs(genotype, data, cfg, epochs).best_score


def _pick(
    data: FeatureData, cfg: Config, opts: SMBOConfig, rng: np.random.Generator, done: list[dict]
) -> tuple[Genotype, float | None]:
    """The next genotype: random for the first rounds, then the surrogate's best candidate."""
    seen = {json.dumps(r["genotype"], sort_keys=True) for r in done}

    def fresh(g: Genotype) -> bool:
        return json.dumps(g.to_dict(), sort_keys=True) not in seen

    if len(done) < opts.initial:
        g = sample(data, cfg, rng)
        for _ in range(100):
            if fresh(g):
                break
            g = sample(data, cfg, rng)
        return g, None

    m = cfg.model
    X = np.stack([encode(Genotype.from_dict(r["genotype"]), m.cells, m.steps, m.ops) for r in done])
    y = np.array([r["score"] for r in done])
    surrogate = RandomForestRegressor(n_estimators=opts.trees, random_state=cfg.seed).fit(X, y)
    drawn = (sample(data, cfg, rng) for _ in range(opts.candidates))
    pool = list(dict.fromkeys(g for g in drawn if fresh(g)))
    if not pool:
        return sample(data, cfg, rng), None
    pred = surrogate.predict(np.stack([encode(g, m.cells, m.steps, m.ops) for g in pool]))
    best = int(np.argmax(pred))  # first maximum: the earliest drawn candidate
    return pool[best], float(pred[best])


def _round_check(data: FeatureData, cfg: Config):
    """What a logged round must be besides its schema: the next round, with a genotype of this
    search space over ``data`` (what :func:`encode` reads). Returns the problem, or None."""
    m, rounds = cfg.model, itertools.count()
    arity = {o: get_op(o).arity for o in m.ops if o != ZERO}

    def check(row: dict) -> str | None:
        r = next(rounds)
        if row["round"] != r:
            return f"round must be {r} (the rounds in order), got {row['round']}"
        try:
            g = Genotype.from_dict(row["genotype"])
            validate(g, known_ops=m.ops, arity=arity)
        except GenotypeError as err:
            return str(err)
        space = (g.C, g.L, g.feature_names) == (m.C, m.L, data.feature_names) and len(g.cells) <= m.cells
        if not space or any(len(c.steps) > m.steps for c in g.cells):
            return "genotype is not one of this search space (other C, L or features, or more Cells or steps)"
        return None

    return check


def smbo(
    data: FeatureData,
    cfg: Config,
    opts: SMBOConfig = SMBOConfig(),  # noqa: B008 (frozen, immutable)
    log: str | Path | None = None,
    progress: bool = True,
) -> SMBOResult:
    """Search ``cfg.model``'s space with SMBO; see the module docstring.

    Args:
        log: JSON-lines file of the evaluated genotypes (appended per round; resumed if present).
    """
    log = Path(log) if log is not None else None
    redo = "running that round and the later ones again"  # each round builds on the earlier ones
    done = load_rows(log, SMBO_ROW, redo, valid=_round_check(data, cfg), prefix=True)[: opts.budget]
    metric = primary_metric(data.task)
    bar = progress_bar(total=opts.budget, initial=len(done), desc="smbo", enabled=progress)
    for r in range(len(done), opts.budget):
        t0 = time.perf_counter()
        g, predicted = _pick(data, cfg, opts, np.random.default_rng([cfg.seed, r]), done)
        score = brief_score(g, data, cfg, opts.epochs)
        row = {
            "round": r,
            "score": score,
            "predicted": predicted,
            "seconds": time.perf_counter() - t0,
            "genotype": g.to_dict(),
        }
        done.append(row)
        if log is not None:
            append_jsonl(log, row)
        bar.update(1)
        bar.set_postfix(val=f"{score:.4f}", best=f"{max(d['score'] for d in done):.4f}")
    bar.close()
    if not done:
        raise RuntimeError("smbo evaluated no genotype; budget must be >= 1")
    best = max(range(len(done)), key=lambda i: (done[i]["score"], -i))
    return SMBOResult(
        Genotype.from_dict(done[best]["genotype"]),
        float(done[best]["score"]),
        metric,
        done,
        float(sum(d["seconds"] for d in done)),
    )
