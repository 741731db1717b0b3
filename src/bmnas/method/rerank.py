"""Re-ranking: let the val split, not α's magnitude, pick the final genotype among the search's candidates.

α, β, γ are weights in a network where every edge and op is mixed; their argmax need not be the
best *discrete* network (the discretisation gap; DARTS-PT's argument). After the search, a few
candidate genotypes are each trained briefly on the train split and scored on val by the
evaluation stage's own selection phase (:func:`bmnas.method.train.select_epochs`); the best val score
wins (ties: the earlier candidate). Candidates, in order, without repeats:

0. with ``search.select=perturb``, the genotype perturbation selection picked
   (:mod:`bmnas.method.select`), source ``perturb``;
1. the argmax of the final α, β, γ;
2. the genotype of the epoch whose hypernet scored best on val (the paper's choice);
3. samples of the final architecture distribution (Gumbel-max on α, β, γ at temperature 1),
   so that near-ties the weights did not resolve are decided by measurement;
4. if samples repeat themselves (a confident search), the other genotypes of the search
   trajectory, by their epoch's hypernet val score.

The trajectory comes last because its genotypes differ little from one another, while samples
explore what the weights left open (docs/DESIGN.md §7 Search).

A candidate that is the same network as an earlier one — equal but for the order of a commutative
op's inputs (``sum(x, y)`` and ``sum(y, x)``: :func:`network_key`) — is not trained again: it would
train to the same numbers bit for bit. Its row copies the earlier one's outcome, with ``same_as``
its rank and 0 seconds, and a tie goes to the earlier one, so the choice is the one training both
gives.

Every candidate's outcome is appended to ``RUN_DIR/rerank.jsonl``; a resumed run skips those done
(a damaged line, :data:`~bmnas.core.schemas.RERANK_ROW`, is logged, removed and its candidate redone).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import torch

from ..core.config import Config
from ..core.data import FeatureData
from ..core.genotype import DeriveRules, Genotype
from ..core.progress import bar as progress_bar
from ..core.progress import label
from ..core.schema import load_rows
from ..core.schemas import RERANK_ROW
from ..engine.distributed import barrier, current
from ..engine.metrics import primary_metric
from ..engine.rundir import RunDir
from ..engine.workers import Pool
from ..space.hypernet import HyperNet
from ..space.ops import is_commutative
from .train import Selection, fold_work, open_pool, select_epochs, selections

SAMPLE_TRIES = 20  # samples drawn per missing candidate before giving up on new ones


def candidates(
    net: HyperNet,
    history: list[dict],
    cfg: Config,
    k: int,
    metric: str,
    first: Sequence[tuple[str, Genotype]] = (),
) -> list[tuple[str, Genotype]]:
    """Up to ``k`` distinct candidate genotypes with where each came from (see the module doc);
    ``first``: candidates put before all others (``search.select=perturb``'s genotype)."""
    s = cfg.search
    out: dict[str, tuple[str, Genotype]] = {}

    def add(source: str, g: Genotype) -> None:
        if len(out) < k:
            out.setdefault(g.to_json(indent=None), (source, g))

    for source, g in first:
        add(source, g)
    rules = DeriveRules.of(s)
    add("argmax", net.genotype(rules))
    rows = sorted(
        (r for r in history if r["epoch"] > s.warmup_epochs), key=lambda r: (-r["val"][metric], -r["epoch"])
    )
    for r in rows[:1]:
        add(f"best epoch {r['epoch']}", Genotype.from_dict(r["genotype"]))
    noise = torch.Generator().manual_seed(cfg.seed)
    for i in range(k * SAMPLE_TRIES):
        if len(out) >= k:
            break
        add(f"sample {i + 1}", net.genotype(rules, noise=noise))
    for r in rows[1:]:
        add(f"epoch {r['epoch']}", Genotype.from_dict(r["genotype"]))
    return list(out.values())


def rerank(
    net: HyperNet,
    state: dict,
    data: FeatureData,
    cfg: Config,
    run: RunDir | None,
    progress: bool = True,
    first: Sequence[tuple[str, Genotype]] = (),
) -> list[dict]:
    """Train each candidate briefly on train, score it on val; returns one row per candidate
    (``first``: candidates before the others, see :func:`candidates`)."""

    epochs = cfg.search.rerank_epochs or cfg.train.epochs
    sel_folds = cfg.train.select_folds
    log_path = run.path / "rerank.jsonl" if run is not None else None
    writes = current().main  # under torchrun every rank trains each candidate; rank 0 records it
    rows_done = load_rows(log_path, RERANK_ROW, "re-ranking that candidate again", rewrite=writes)
    done = {json.dumps(row["genotype"], sort_keys=True): row for row in rows_done}
    cands = candidates(net, state["history"], cfg, cfg.search.rerank, primary_metric(data.task), first)
    twins = same_networks([g for _, g in cands])
    todo = [
        (rank, source, g)
        for rank, (source, g) in enumerate(cands)
        if rank not in twins and not _is_done(done, g, epochs, sel_folds)
    ]
    jobs = len(todo) * max(1, sel_folds)
    if todo and not cfg.train.batched_folds:
        with open_pool(data, cfg, jobs, fold_work(data, cfg, epochs, jobs)) as pool:
            if pool.workers > 1:
                rows = _rerank_parallel(pool, cands, todo, twins, done, cfg, epochs, run, writes, progress)
                rows = _with_twins(rows, cands, twins, done, run if writes else None)
                barrier(current())
                return rows
    rows = []
    bar = progress_bar(cands, desc="re-rank candidates", enabled=progress)
    for rank, (source, g) in enumerate(bar):
        if rank in twins:
            continue  # filled in below from the network it equals
        if _is_done(done, g, epochs, sel_folds):
            rows.append({**done[_key(g)], "rank": rank, "source": source})
            continue
        t0 = time.perf_counter()
        what = label(f"candidate {rank + 1}/{len(cands)}", source)
        sel = select_epochs(g, data, cfg, epochs, progress=progress, desc=what)
        row = _row(rank, source, g, sel, epochs, time.perf_counter() - t0)
        rows.append(row)
        if log_path is not None and writes:
            run.append_jsonl(log_path.name, row)
        bar.set_postfix(best=f"{max(r['val'] for r in rows):.4f}")
    rows = _with_twins(rows, cands, twins, done, run if writes else None)
    barrier(current())
    return rows


def _key(g: Genotype) -> str:
    return json.dumps(g.to_dict(), sort_keys=True)


def network_key(g: Genotype) -> str:
    """``g`` as JSON with the inputs of every commutative op's step sorted (``OpSpec.commutative``):
    two genotypes with the same key build the same network, which trains to the same numbers."""
    d = g.to_dict()
    for cell in d["cells"]:
        for step in cell["steps"]:
            if is_commutative(step["op"]):
                step["inputs"] = sorted(step["inputs"])
    return json.dumps(d, sort_keys=True)


def same_networks(genotypes: Sequence[Genotype]) -> dict[int, int]:
    """``{i: j}`` for each ``genotypes[i]`` that is the same network as an earlier ``genotypes[j]``
    (the first of its kind: :func:`network_key`)."""
    first: dict[str, int] = {}
    twins = {}
    for i, g in enumerate(genotypes):
        j = first.setdefault(network_key(g), i)
        if j != i:
            twins[i] = j
    return twins


def _with_twins(
    rows: list[dict],
    cands: list[tuple[str, Genotype]],
    twins: dict[int, int],
    done: dict[str, dict],
    run: RunDir | None,
) -> list[dict]:
    """``rows`` (one per candidate not in ``twins``) with a row for each twin, in rank order: the
    outcome of the network it equals, its own rank, source and genotype, ``same_as`` and 0 seconds
    (appended to ``rerank.jsonl`` unless a resumed run holds it already)."""
    by_rank = {r["rank"]: r for r in rows}
    for rank, of in sorted(twins.items()):
        source, g = cands[rank]
        row = {**by_rank[of], "rank": rank, "source": source, "genotype": g.to_dict()}
        row.update(same_as=of, seconds=0.0)
        by_rank[rank] = row
        if run is not None and _key(g) not in done:
            run.append_jsonl("rerank.jsonl", row)
    return [by_rank[rank] for rank in sorted(by_rank)]


def _is_done(done: dict[str, dict], g: Genotype, epochs: int, folds: int) -> bool:
    """Whether ``rerank.jsonl`` already holds ``g``'s outcome by this recipe."""
    key = _key(g)
    return key in done and Selection.from_dict(done[key]).matches(epochs, folds)


def _row(rank: int, source: str, g: Genotype, sel: Selection, epochs: int, seconds: float) -> dict:
    """One candidate's line of ``rerank.jsonl``."""
    return {
        "rank": rank,
        "source": source,
        "val": sel.best_score,
        "best_epoch": sel.best_epoch,
        **sel.to_dict(),
        "epochs": epochs,
        "seconds": seconds,
        "genotype": g.to_dict(),
    }


def _rerank_parallel(
    pool: Pool,
    cands: list[tuple[str, Genotype]],
    todo: list[tuple[int, str, Genotype]],
    twins: dict[int, int],
    done: dict[str, dict],
    cfg: Config,
    epochs: int,
    run: RunDir | None,
    writes: bool,
    progress: bool,
) -> list[dict]:
    """The candidates' (candidate, fold) jobs side by side in ``pool``; each candidate's row is
    appended to ``rerank.jsonl`` as its last fold finishes (in any order: rows are keyed by
    genotype, so a killed run resumes the others). ``seconds``: the candidate's training time."""
    by_rank: dict[int, dict] = {}
    for rank, (source, g) in enumerate(cands):
        if rank not in twins and _is_done(done, g, epochs, cfg.train.select_folds):
            by_rank[rank] = {**done[_key(g)], "rank": rank, "source": source}
    ranks = {f"candidate {rank + 1}/{len(cands)}": (rank, source, g) for rank, source, g in todo}
    items = [(name, g) for name, (_, _, g) in ranks.items()]
    for name, sel in selections(pool, items, cfg, epochs, progress, "re-rank candidates"):
        rank, source, g = ranks[name]
        row = _row(rank, source, g, sel, epochs, sel.seconds)
        by_rank[rank] = row
        if run is not None and writes:
            run.append_jsonl("rerank.jsonl", row)
    return [by_rank[rank] for rank in sorted(by_rank)]
