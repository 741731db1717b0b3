"""Bilevel search (docs/DESIGN.md §7 Search, paper Algorithm 1), first order, with checkpoint and resume.

Per iteration: a weight step on a train batch (α, β, γ frozen), then an architecture step on a
val batch (weights frozen). After each epoch the genotype is derived, the hypernet is scored on
the whole val split in eval mode, and the genotype with the best score is kept. The state is
checkpointed each epoch, so a killed search resumes and ends with the same result.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..core.config import Config, SearchConfig
from ..core.data import FeatureData, FeatureSplit, TaskInfo
from ..core.fileio import write_json
from ..core.genotype import DeriveRules, Genotype
from ..core.progress import bar as progress_bar
from ..engine.checkpoint import Checkpoint
from ..engine.device import (
    on_device,
)
from ..engine.distributed import (
    DistributedError,
    barrier,
    broadcast_state,
    check_same,
    min_batch,
    shard,
)
from ..engine.graphs import StepFunction
from ..engine.loop import (
    Context,
    ModalityDropout,
    batch_indices,
    evaluate,
    new_state,
    run_epochs,
    train_epoch,
)
from ..engine.metrics import primary_metric
from ..engine.rundir import RunDir
from ..report.plots import plot_history
from ..space.hypernet import HyperNet, edge_weights
from .bilevel import bilevel_optimizers, build_hypernet
from .placement import PHASES, Placement, place, rerank_workers
from .record import as_run, entry
from .rerank import rerank
from .select import Batches, perturb_select
from .train import Selection

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """The best genotype, where and how well it was found, and the per-epoch history."""

    genotype: Genotype
    best_epoch: int
    best_score: float
    metric: str
    history: list[dict]
    seconds: float
    hypernet: HyperNet
    candidates: list[dict] = field(default_factory=list)
    perturb: dict | None = None  # search.select=perturb: per Cell slot, each edge's loss delta
    placement: Placement | None = None  # the device of the search and of re-ranking, and why

    def selection(self, epochs: int, folds: int = 0):
        """The re-ranking's selection phase of the chosen genotype, if it ran for ``epochs`` epochs.

        Lets the evaluation stage skip training the same network on train a second time.
        """

        chosen = self.genotype.to_dict()
        for c in self.candidates:
            if c["genotype"] == chosen and (sel := Selection.from_dict(c)).matches(epochs, folds):
                return sel
        return None


def split_for_search(n_train: int, n_val: int, cfg: Config) -> tuple[np.ndarray, np.ndarray, str]:
    """Rows for the weight steps and for the architecture steps, and the split the latter come from.

    ``search.arch_split = 0`` (the paper): weights on all of train, α/β/γ on val. ``arch_split = f``
    (DARTS' protocol): a seeded fraction ``f`` of the train split is held out for the architecture
    steps, so the val split is never fitted by the search and stays a fair judge for re-ranking,
    the epoch count and the comparison with hand-made fusions.
    """
    f = cfg.search.arch_split
    if f <= 0:
        return np.arange(n_train), np.arange(n_val), "val"
    order = np.random.default_rng(cfg.seed).permutation(n_train)
    n_arch = min(n_train - 1, max(1, round(f * n_train)))
    return np.sort(order[n_arch:]), np.sort(order[:n_arch]), "train"


@dataclass
class _Bilevel:
    """What every search epoch uses: the hypernet, its optimisers and where its batches come from."""

    net: HyperNet
    cfg: Config
    task: TaskInfo
    train: FeatureSplit
    val: FeatureSplit
    arch_src: FeatureSplit  # the split the architecture steps read: val, or train with arch_split
    weight_rows: np.ndarray
    arch_rows: np.ndarray
    w_opt: torch.optim.Optimizer
    a_opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    shuffle: torch.Generator
    ctx: Context
    min_rows: int
    progress: bool
    w_step: StepFunction  # the weight step (α, β, γ frozen), captured on CUDA
    a_step: StepFunction  # the architecture step (weights frozen)

    @property
    def metric(self) -> str:
        return primary_metric(self.task)

    def stateful(self) -> dict:
        """What the checkpoint saves, by the keys it is saved under."""
        return {"model": self.net, "w_opt": self.w_opt, "a_opt": self.a_opt, "sched": self.sched}


@entry
def search(
    data: FeatureData,
    cfg: Config,
    run: RunDir | str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> SearchResult:
    """Search a fusion architecture on ``data`` (train split for weights, val split for α, β, γ).

    Runs on ``cfg.device`` in ``cfg.precision``; with ``device: auto`` on a machine with a GPU the
    search and the re-ranking each on the device a probe finds faster (:func:`place`). Inside an
    initialised process group (``torchrun``) every rank computes on its shard of each global batch
    and the gradients are averaged (:mod:`bmnas.engine.distributed`); every rank must derive the
    same genotype after each epoch, and only rank 0 writes to ``run``.

    Args:
        run: run directory for the checkpoint, ``history.jsonl``, ``genotype.json`` and ``plots/``
            (resumed if a checkpoint exists); a path is opened as ``--out`` is
            (:func:`bmnas.method.record.open_run`: locked, ``config.yaml``, fingerprint).
        stop_after: end this call after that many epochs in total (the rest after a resume);
            used to test resumption.
    """
    return placed_search(data, cfg, as_run(run, cfg, data), progress, stop_after)


def placed_search(
    data: FeatureData,
    cfg: Config,
    run: RunDir | None,
    progress: bool = True,
    stop_after: int | None = None,
    placement: Placement | None = None,
) -> SearchResult:
    """:func:`search` in an open run directory, the devices of its phases chosen by ``placement``
    (by default :func:`place`'s choice): what :func:`bmnas.method.run.run` calls with its own."""
    if placement is None:
        phases = PHASES if cfg.search.rerank else ("search",)
        placement = place(data, cfg, partial(rerank_workers, data, cfg), phases, run=run)
    s = _setup(data, placement.config(cfg, "search"), progress)
    ckpt = Checkpoint(run, "search", cfg, s.stateful(), s.shuffle, "history.jsonl", writes=s.ctx.ranks.main)
    state = ckpt.load() or new_state(best_score=float("-inf"), best_epoch=0, best_genotype=None)
    one_epoch, report = partial(_search_epoch, s), partial(_report, s)
    state = run_epochs(
        state, cfg.search.epochs, one_epoch, ckpt, stop_after, report=report, ranks=s.ctx.ranks
    )
    if not state["history"]:
        raise RuntimeError("the search ran no epoch; set search.epochs >= 1")
    return _searched(s, state, data, run, placement.config(cfg, "evaluation"), placement)


def _setup(data: FeatureData, cfg: Config, progress: bool) -> _Bilevel:
    """The seeded hypernet on ``cfg.device``, its optimisers and schedule, the rows of each step."""
    ctx = Context.of(cfg)
    ranks, device = ctx.ranks, ctx.device
    torch.manual_seed(cfg.seed)
    net = build_hypernet(data, cfg).to(device)
    broadcast_state(net, ranks)
    train, val = on_device(data["train"], device), on_device(data["val"], device)
    weight_rows, arch_rows, arch_src = split_for_search(len(train), len(val), cfg)
    bs = cfg.search.batch_size
    min_rows = min_batch(ranks)
    if bs < min_rows:
        raise DistributedError(
            f"search.batch_size {bs} is the global batch: {ranks.world} processes need at least "
            f"{min_rows} (two rows each for BatchNorm)"
        )
    n_batches = len(batch_indices(len(weight_rows), bs, None, min_rows))
    w_opt, a_opt, sched = bilevel_optimizers(net, cfg, n_batches)
    return _Bilevel(
        net,
        cfg,
        data.task,
        train,
        val,
        train if arch_src == "train" else val,
        weight_rows,
        arch_rows,
        w_opt,
        a_opt,
        sched,
        torch.Generator().manual_seed(cfg.seed),
        ctx,
        min_rows,
        progress,
        StepFunction(net, data.task, w_opt, ctx, freeze=net.arch_parameters()),
        StepFunction(net, data.task, a_opt, ctx, freeze=net.weight_parameters()),
    )


def _search_epoch(s: _Bilevel, epoch: int, state: dict) -> dict:
    """One epoch: the bilevel steps, then derive the genotype, score the hypernet on val, keep the best."""
    warm = epoch > s.cfg.search.warmup_epochs  # α, β, γ move only after the warm-up
    train_loss, arch_loss = _bilevel_steps(s, epoch, warm)
    genotype = s.net.genotype(DeriveRules.of(s.cfg.search))
    check_same(genotype.to_dict(), f"genotype after epoch {epoch}", s.ctx.ranks)
    scores = evaluate(s.net, s.val, s.task, s.cfg.search.eval_batch_size, s.cfg.data.threshold, s.ctx)
    improved = warm and scores[s.metric] > state["best_score"]
    if improved:
        state.update(best_score=scores[s.metric], best_epoch=epoch, best_genotype=genotype.to_dict())
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "arch_loss": arch_loss,
        "val": scores,
        "lr": float(s.sched.get_last_lr()[0]),  # a device tensor under CUDA graphs
        "arch_lr": float(s.a_opt.param_groups[0]["lr"]),
        "best": improved,
        "genotype": genotype.to_dict(),
        "arch": s.net.arch.softmaxed(s.net.relaxation),
        "ops": list(s.net.ops),
        **arch_diagnostics(s.net),
    }


def _bilevel_steps(s: _Bilevel, epoch: int, warm: bool) -> tuple[float, float]:
    """The epoch's iterations: a weight step on a train batch, then (once ``warm``) an architecture
    step on a batch of the architecture rows, taken in :func:`train_epoch`'s ``after_step`` (as
    NNI's DARTS does). Returns the train loss per row and the architecture loss per iteration,
    averaged over the epoch."""
    net, ranks, bs, p = s.net, s.ctx.ranks, s.cfg.search.batch_size, s.cfg.search.modality_dropout
    train_batches = [s.weight_rows[b] for b in batch_indices(len(s.weight_rows), bs, s.shuffle, s.min_rows)]
    arch_batches: list = []
    bar = progress_bar(
        train_batches, desc=f"search epoch {epoch}/{s.cfg.search.epochs}", enabled=s.progress and ranks.main
    )
    a_loss = torch.zeros(())

    def arch_step(i: int, loss: torch.Tensor) -> torch.Tensor | None:
        nonlocal a_loss
        if not arch_batches:  # drawn after the first weight step's dropout masks: the generator's order
            arch_batches.extend(
                s.arch_rows[b] for b in batch_indices(len(s.arch_rows), bs, s.shuffle, s.min_rows)
            )
        vfeats, vy = s.arch_src.batch(shard(arch_batches.pop(), ranks))
        if warm:
            a_loss = s.a_step(vfeats, vy)
        if i % 10 == 0 and s.progress and ranks.main:  # a host sync: only when the bar is shown
            bar.set_postfix(loss=f"{loss.item():.3f}", arch=f"{a_loss.item():.3f}")
        return a_loss if warm else None

    losses = train_epoch(
        net,
        bar,
        s.train.batch,
        s.task,
        s.w_opt,
        s.ctx,
        schedule=s.sched,
        dropout=ModalityDropout(p, s.shuffle) if p else None,
        after_step=arch_step,
        step=s.w_step,
    )
    return losses.rows, losses.steps


def _report(s: _Bilevel, row: dict) -> None:
    if s.ctx.ranks.main:  # logged (the CLI shows info lines unless --quiet), not printed: a library call
        log.info(
            "search epoch %d: train loss %.4f, val %s %.4f%s",
            row["epoch"],
            row["train_loss"],
            s.metric,
            row["val"][s.metric],
            " (best)" if row["best"] else "",
        )


def _searched(
    s: _Bilevel, state: dict, data: FeatureData, run: RunDir | None, eval_cfg: Config, placement: Placement
) -> SearchResult:
    """The search's genotype: the best epoch's or, once every epoch ran, re-ranking's choice
    (re-ranking on ``eval_cfg``'s device)."""
    cfg, ranks, net = s.cfg, s.ctx.ranks, s.net
    # stopped inside the warm-up (stop_after): the last genotype stands in for the best
    best = Genotype.from_dict(state["best_genotype"] or state["history"][-1]["genotype"])
    candidates: list[dict] = []
    seconds = state["seconds"]
    complete = state["epoch"] >= cfg.search.epochs
    first: list[tuple[str, Genotype]] = []
    record = None
    if complete and cfg.search.select == "perturb":
        best, record = _perturb(s, run)
        seconds += record["seconds"]
        first = [("perturb", best)]
    net.cpu()  # derivation with sampled noise (re-ranking) and callers work on the CPU copy
    if complete:
        if ranks.main and cfg.search.select == "alpha":
            warn_if_undecided(state["history"][-1], cfg.search)
        if cfg.search.rerank:
            candidates = rerank(net, state, data, eval_cfg, run, s.progress, first=first)
            seconds += sum(c["seconds"] for c in candidates)
            best = Genotype.from_dict(max(candidates, key=lambda c: (c["val"], -c["rank"]))["genotype"])
    check_same(best.to_dict(), "searched genotype", ranks)
    if complete and run is not None and ranks.main:
        best.save(run.genotype_path)
        plot_history(state["history"], run.plots_path, best)  # genotype.json's, not the last epoch's
    barrier(ranks)
    return SearchResult(
        best,
        state["best_epoch"],
        state["best_score"],
        s.metric,
        state["history"],
        seconds,
        net,
        candidates,
        record,
        placement,
    )


PERTURB_FILE = "perturb.json"


def _perturb(s: _Bilevel, run: RunDir | None) -> tuple[Genotype, dict]:
    """Perturbation selection on the trained hypernet (:mod:`bmnas.method.select`), recorded in
    ``RUN_DIR/perturb.json``: the genotype it picks replaces the argmax of α as the search's
    answer, first among re-ranking's candidates (source ``perturb``) or, with ``search.rerank=0``,
    instead of the best epoch's genotype."""
    t0 = time.perf_counter()
    b = Batches(s.arch_src, s.arch_rows, s.train, s.weight_rows, s.min_rows)
    genotype, record = perturb_select(s.net, b, s.task, s.cfg, s.ctx)
    record = {**record, "genotype": genotype.to_dict(), "seconds": time.perf_counter() - t0}
    check_same(genotype.to_dict(), "perturbation-selected genotype", s.ctx.ranks)
    if run is not None and s.ctx.ranks.main:
        write_json(run.path / PERTURB_FILE, record)
    cells = "; ".join(f"cell{c['cell']} reads {', '.join(c['inputs'])}" for c in record["cells"])
    if s.ctx.ranks.main:
        log.info("perturbation selection (%.1f s): %s", record["seconds"], cells)
    return genotype, record


def _entropy(p: torch.Tensor) -> float:
    """Mean normalised entropy ``−Σ p log p / log n`` of the rows of ``p`` (1: uniform, 0: one-hot)."""
    p = p / p.sum(-1, keepdim=True)
    n = p.shape[-1]
    if n < 2:
        return 0.0
    return float((-(p * p.clamp_min(1e-12).log()).sum(-1) / np.log(n)).mean())


@torch.no_grad()
def arch_diagnostics(net: HyperNet) -> dict:
    """Collapse diagnostics of α, β, γ after an epoch.

    * ``entropy``: mean normalised entropy of each Cell slot's weights over its predecessors
      (α), each step slot's (β) and each step's op distribution (γ): 1 means the search has not
      preferred anything yet, 0 that it is certain.
    * ``op_share``: softmax(γ) averaged over all steps, per op.
    * ``alpha_spread``: the largest gap between two predecessors' weights in any Cell slot: how far
      the upper level has moved from its initialisation (≈ 0 means undecided).
    """
    a = [edge_weights(x, net.relaxation) for x in net.arch.alpha]
    b = [edge_weights(x, net.relaxation) for x in net.arch.beta]
    g = torch.cat([x.softmax(-1) for x in net.arch.gamma])
    return {
        "entropy": {
            "alpha": float(np.mean([_entropy(w) for w in a])),
            "beta": float(np.mean([_entropy(w) for w in b])),
            "gamma": _entropy(g),
        },
        "op_share": dict(zip(net.ops, g.mean(0).tolist(), strict=True)),
        "alpha_spread": float(max((w.max(-1).values - w.min(-1).values).max() for w in a)),
    }


UNDECIDED_SPREAD = 0.05


def warn_if_undecided(last: dict, cfg: SearchConfig) -> None:
    """Warn when the upper level barely moved: the derived feature pairs are then initialisation noise.

    What to do depends on the config: with ``search.rerank`` > 0 the candidates' val scores already
    choose; without, re-ranking is the remedy to suggest.
    """
    spread = last.get("alpha_spread", 1.0)
    if spread >= UNDECIDED_SPREAD:
        return
    n = last["epoch"]
    moved = max(0, n - cfg.warmup_epochs)
    epochs = f"{n} epoch{'' if n == 1 else 's'}"
    if cfg.warmup_epochs:
        epochs += f" ({moved} after the {cfg.warmup_epochs}-epoch warm-up)"
    if cfg.rerank > 0:
        then = (
            f"The genotype is chosen among the {cfg.rerank} re-ranked candidates by their scores on val, "
            "so it rests on those scores alone. Set search.arch_lr=auto (or raise it or search.epochs) "
            "or search.select=perturb (choose by the hypernet's loss) for the search to take part."
        )
    else:
        then = (
            "Set search.arch_lr=auto (or raise it or search.epochs), search.select=perturb (choose by "
            "the hypernet's loss), or set search.rerank > 0 (e.g. 8) so that candidates are compared on val."
        )
    log.warning(
        "the search did not decide which features to fuse: after %s the weights of every Cell slot "
        "differ by at most %.3f. %s",
        epochs,
        spread,
        then,
    )
