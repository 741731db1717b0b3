"""Evaluation stage (docs/DESIGN.md §8): train a found network afresh, choose its length, test once.

The recipe fits the data instead of a fixed epoch count:

1. **Select** (``train.select_epochs``, default on): train on the train split alone for
   ``train.epochs`` epochs, scoring the val split after each; ``E*`` is the epoch with the best val
   primary metric (ties: the earlier epoch), and that score is the network's **val score** — the
   number every comparison between networks (re-ranking, the recommended network) is made on.
2. **Refit**: train from scratch on train + val for ``E*`` epochs, with the same schedule.
3. **Test** once, at the end of the refit.

No epoch or model is ever chosen on the test split. Both phases run the same :func:`fit` loop; the
refit is checkpointed each epoch and the selection's outcome is saved, so a killed run resumes.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.config import Config
from ..core.data import FeatureData, FeatureSplit, merge_splits
from ..core.fileio import FileFormatError
from ..core.genotype import Genotype, last_feature, modalities
from ..core.opnames import BUILTIN_OPS
from ..core.progress import bar as progress_bar
from ..core.progress import label
from ..core.schema import load_json
from ..core.schemas import SELECTION
from ..engine.batched import FoldStack, Generators, batch_counts, evaluate_folds, train_folds_epoch
from ..engine.checkpoint import Checkpoint
from ..engine.device import on_device
from ..engine.distributed import broadcast_state, current, min_batch
from ..engine.folds import kfold
from ..engine.graphs import StepFunction
from ..engine.loop import (
    AdamSettings,
    Context,
    ModalityDropout,
    batch_indices,
    build_optimizer,
    cosine_restarts,
    evaluate,
    new_state,
    run_epochs,
    train_epoch,
)
from ..engine.metrics import primary_metric
from ..engine.rundir import RunDir
from ..engine.workers import Handle, Job, Pool, active, pool, resolve_workers
from ..space.found import FoundNet
from ..space.ops import OpSpec, get_op, list_ops, register_op
from .probe import choose_C, fit_linear, init_from_probe
from .record import as_run, entry

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Test metrics of the last epoch, parameter counts, wall time and the trained network.

    ``val`` is the val score of the selection phase (None without one), ``epochs`` the epoch count
    of the final fit.
    """

    test: dict
    params: dict
    seconds: float
    history: list[dict]
    model: FoundNet
    epochs: int = 0
    val: float | None = None
    val_curve: list[float] = field(default_factory=list)

    def row(self) -> dict:
        """The figures a results table and ``metrics.json`` report for this network."""
        return {
            "test": self.test,
            "val": self.val,
            "params": self.params,
            "epochs": self.epochs,
            "train_seconds": self.seconds,
        }


@dataclass
class Selection:
    """Outcome of training on train alone: the val score after each epoch and the best epoch."""

    curve: list[float]
    metric: str
    seconds: float
    initial: float | None = None  # val score before training (a network started as the probe)
    folds: int = 0  # 0: scored on val; k: the mean over k folds of train + val

    @property
    def best_epoch(self) -> int:
        """Epochs to train (ties: fewer); 0 when the untrained start (``initial``) scores best."""
        scores = [self.initial, *self.curve] if self.initial is not None else [None, *self.curve]
        first = 0 if self.initial is not None else 1
        return max(range(first, len(scores)), key=lambda i: (scores[i], -i))

    @property
    def best_score(self) -> float:
        return self.initial if self.best_epoch == 0 else self.curve[self.best_epoch - 1]

    def to_dict(self) -> dict:
        return {
            "curve": self.curve,
            "metric": self.metric,
            "seconds": self.seconds,
            "initial": self.initial,
            "folds": self.folds,
        }

    def matches(self, epochs: int, folds: int) -> bool:
        """Whether this selection was measured by the recipe of ``epochs`` epochs and ``folds`` folds."""
        return len(self.curve) == epochs and self.folds == folds

    @classmethod
    def from_dict(cls, d: dict) -> Selection:
        return cls(d["curve"], d["metric"], d["seconds"], d.get("initial"), d.get("folds", 0))

    @classmethod
    def mean(cls, folds: list[Selection]) -> Selection:
        """The cross-validated selection: the per-epoch mean of the folds' curves."""
        initial = [f.initial for f in folds]
        return cls(
            [float(v) for v in np.mean([f.curve for f in folds], axis=0)],
            folds[0].metric,
            sum(f.seconds for f in folds),
            float(np.mean(initial)) if None not in initial else None,
            len(folds),
        )


def fit(
    model: FoundNet,
    split: FeatureSplit,
    data: FeatureData,
    cfg: Config,
    epochs: int,
    *,
    val: FeatureSplit | None = None,
    run: RunDir | None = None,
    stage: str = "train",
    genotype: Genotype | None = None,
    progress: bool = False,
    desc: str = "train",
    stop_after: int | None = None,
) -> dict:
    """Train ``model`` on ``split`` for ``epochs`` epochs (Adam, per-batch cosine warm restarts).

    With ``val``, the val primary metric is recorded after each epoch (``state["val"]``). With
    ``run``, the state is checkpointed each epoch as ``stage`` and a checkpoint of the same
    ``genotype`` is resumed. Returns the state: ``epoch``, ``history``, ``seconds``, ``val``.
    ``model`` is moved to ``cfg.device`` (and stays there); inside a process group each rank
    trains on its shard of every batch with averaged gradients, and only rank 0 writes to ``run``.
    """
    t = cfg.train
    ctx = Context.of(cfg)
    ranks, device = ctx.ranks, ctx.device
    model.to(device)
    broadcast_state(model, ranks)
    split = on_device(split, device)
    val = on_device(val, device) if val is not None else None
    metric = primary_metric(data.task)
    min_rows = min_batch(ranks)
    n_batches = len(batch_indices(len(split), t.batch_size, None, min_rows))
    # fused Adam: one kernel per step instead of ~10 per tensor (a fifth of a small network's CPU
    # step, benchmarks/README.md § fused Adam in the evaluation stage); capturable with a tensor lr
    opt = build_optimizer(model.parameters(), AdamSettings.of(t, fused=True))
    sched = cosine_restarts(opt, n_batches, t.restart_epochs, t.restart_mult, t.lr_min)
    shuffle = torch.Generator().manual_seed(cfg.seed + 1)
    # a checkpoint of another architecture or length is not resumed: the fit starts over
    identity = {"genotype": genotype.to_dict() if genotype is not None else None, "epochs": epochs}
    stateful = {"model": model, "opt": opt, "sched": sched}
    history = f"{stage}_history.jsonl"
    ckpt = Checkpoint(run, stage, cfg, stateful, shuffle, history, identity=identity, writes=ranks.main)
    state = ckpt.load() or new_state(val=[])

    p = t.modality_dropout
    dropout = ModalityDropout(p, shuffle, tuple(model.used)) if p else None
    step = StepFunction(model, data.task, opt, ctx)  # replayed as a CUDA graph on CUDA (engine/graphs.py)

    def one_epoch(epoch: int, state: dict) -> dict:
        batches = batch_indices(len(split), t.batch_size, shuffle, min_rows)
        loss = train_epoch(
            model, batches, split.batch, data.task, opt, ctx, schedule=sched, dropout=dropout, step=step
        )
        row = {"epoch": epoch, "train_loss": loss.rows, "lr": float(sched.get_last_lr()[0])}
        if val is not None:
            scores = evaluate(model, val, data.task, t.eval_batch_size, cfg.data.threshold, ctx)
            state["val"].append(float(scores[metric]))
            row["val_" + metric] = scores[metric]
        return row

    last = epochs if stop_after is None else min(epochs, stop_after)
    with progress_bar(total=last, initial=state["epoch"], desc=desc, enabled=progress and ranks.main) as bar:

        def report(row: dict) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}")

        return run_epochs(state, epochs, one_epoch, ckpt, stop_after, report=report, ranks=ranks)


def with_recipe(genotype: Genotype, cfg: Config) -> Genotype:
    """The genotype as the evaluation stage trains it.

    With ``model.linear_skip`` (default) a genotype without a linear path gets one from the last
    feature of each modality it already reads (:class:`bmnas.space.found.FoundNet`; a unimodal network
    stays unimodal): measured over 3 seeds it lifted late fusion and the searched network on
    AV-MNIST, emoji and the 3-view digits by 0.4–1.3 points.
    """
    if not cfg.model.linear_skip or genotype.linear:
        return genotype

    reads = set(modalities([f for f in genotype.features if f.name in genotype.used_features()]))
    mods = [m for m in modalities(genotype.features) if m in reads]
    return genotype.with_linear(tuple(last_feature(genotype.features, m) for m in mods))


def linear_init(cfg: Config, data: FeatureData) -> str:
    """``model.linear_init`` with ``auto`` resolved: ``probe`` when every feature is a vector.

    Precomputed views (vectors) leave a fusion network little to add over a linear model of them,
    and on small data its random start lost to the probe (3-view digits, 3 seeds: late fusion
    0.815 random vs 0.831 probe-initialised; the searched network 0.801 vs 0.828). With spatial or
    sequential features the random start did better (emoji: late fusion 0.879 vs 0.869).
    """
    if cfg.model.linear_init != "auto":
        return cfg.model.linear_init
    return "probe" if all(n == 1 for n in data.feature_lengths.values()) else "random"


def build_model(genotype: Genotype, data: FeatureData, cfg: Config, split: FeatureSplit) -> FoundNet:
    """``FoundNet(genotype)`` seeded by ``cfg.seed``, ready to train on ``split``.

    With ``model.linear_init = probe`` its linear path starts as the linear probe fitted on
    ``split`` (``C`` chosen on val by the probe's own rule) and its head at zero, so training
    learns a residual on top of the linear model and an epoch count of 0 is the probe itself.
    """
    torch.manual_seed(cfg.seed)
    model = FoundNet(genotype, data.task.num_outputs, dropout=cfg.model.dropout)
    if linear_init(cfg, data) == "probe" and model.linear is not None:
        C, _ = choose_C(data, genotype.linear, cfg.seed, cfg.data.threshold)
        init_from_probe(model, fit_linear(split, genotype.linear, data.task, C, cfg.seed))
    return model


def score(model: FoundNet, split: FeatureSplit, data: FeatureData, cfg: Config) -> dict:
    """Metrics of ``model`` on ``split``, evaluated on ``cfg.device`` (where the model is moved)."""
    ctx = Context.of(cfg)
    return evaluate(
        model.to(ctx.device),
        on_device(split, ctx.device),
        data.task,
        cfg.train.eval_batch_size,
        cfg.data.threshold,
        ctx,
    )


def select_epochs(
    genotype: Genotype,
    data: FeatureData,
    cfg: Config,
    epochs: int | None = None,
    progress: bool = False,
    desc: str = "select epochs",
    run: RunDir | None = None,
    stage: str = "select",
) -> Selection:
    """Train ``FoundNet(genotype)`` on the train split alone and score the val split after each epoch.

    With ``train.select_folds = k`` the same is done on each of the ``k`` folds of train ∪ val
    (:func:`bmnas.engine.folds.kfold`) and the curves are averaged: a score every network comparison can
    rely on to a point, where one val split of a few hundred rows cannot. ``desc`` names the
    network on its progress bars (``… · fold 2/3``). With ``train.batched_folds`` the k folds train
    as one stacked model (:mod:`bmnas.engine.batched`), checkpointed each epoch as ``stage`` in
    ``run``; a network that cannot be stacked trains fold by fold (logged).
    """
    k = cfg.train.select_folds
    if k >= 2 and not cfg.train.batched_folds:
        with open_pool(data, cfg, k, fold_work(data, cfg, epochs, k)) as pool:
            if pool.workers > 1:
                return _select_parallel(pool, genotype, data, cfg, epochs, progress, desc)
    if k < 2:
        return _select_on(genotype, data, cfg, epochs, progress, desc)
    folds = kfold(data, k, cfg.seed)
    if cfg.train.batched_folds:
        genotype = with_recipe(genotype, cfg)
        models = [build_model(genotype, d, cfg, d["train"]) for d in folds]
        why = _not_stackable(models, folds, cfg)
        if why is None:
            return _select_stacked(
                genotype,
                models,
                folds,
                cfg,
                epochs or cfg.train.epochs,
                progress,
                run,
                stage,
                label(desc, f"{k} folds stacked"),
            )
        log.info("training the %d folds one by one: %s", k, why)
    return Selection.mean(
        [
            _select_on(genotype, d, cfg, epochs, progress, label(desc, f"fold {i}/{len(folds)}"))
            for i, d in enumerate(folds, 1)
        ]
    )


def worker_setup(data: FeatureData, ops: dict[str, OpSpec]) -> FeatureData:
    """What a worker process does first (:class:`bmnas.engine.workers.Pool`'s ``setup``): register
    the ops this process registered beyond the built-in ones, and keep ``data`` for every job."""
    for name, spec in ops.items():
        if name not in list_ops():
            register_op(name, spec.arity)(spec.factory)
    return data


def _extra_ops() -> dict[str, OpSpec] | str:
    """The registered ops beyond the built-in ones, or why they cannot be sent to a worker."""
    ops = {n: get_op(n) for n in list_ops() if n not in BUILTIN_OPS}
    try:
        pickle.dumps(ops)
    except (pickle.PicklingError, AttributeError, TypeError) as err:
        return f"a registered op cannot be sent to a worker process ({type(err).__name__}: {err})"
    return ops


def fold_work(data: FeatureData, cfg: Config, epochs: int | None, jobs: int) -> float:
    """Row-epochs of ``jobs`` selections of ``data`` (what ``workers: 0`` weighs)."""
    return float(len(data["train"]) + len(data["val"])) * (epochs or cfg.train.epochs) * jobs


@contextlib.contextmanager
def open_pool(data: FeatureData, cfg: Config, jobs: int, work: float) -> Iterator[Pool]:
    """The worker pool a caller up the stack opened for ``data``, or a new one for ``jobs`` jobs of
    ``work`` row-epochs (``cfg.workers``, :func:`bmnas.engine.workers.resolve_workers`); one worker
    (the serial path) when a registered op cannot be sent to a worker process."""
    outer = active(data)
    if outer is not None:
        yield outer
        return
    n = resolve_workers(cfg.workers, jobs, work)
    ops = _extra_ops() if n > 1 else {}
    if isinstance(ops, str):
        log.info("training one network at a time: %s", ops)
        n, ops = 1, {}
    with pool(n, worker_setup, (data, ops), data) as p:
        yield p


def select_fold(
    data: FeatureData, genotype: Genotype, cfg: Config, epochs: int | None, fold: int
) -> Selection:
    """One job of a selection: fold ``fold`` (1-based) of ``train.select_folds``, or with fewer than
    two folds (``fold = 0``) the val split; the same computation as the serial path's."""
    k = cfg.train.select_folds
    part = data if fold == 0 else kfold(data, k, cfg.seed)[fold - 1]
    return _select_on(genotype, part, cfg, epochs, False, "")


def fold_jobs(genotype: Genotype, cfg: Config, epochs: int | None, name: str) -> list[Job]:
    """The jobs of one genotype's selection (:func:`select_fold`), named ``name · fold i/k``."""
    k = cfg.train.select_folds
    if k < 2:
        return [Job(name, select_fold, (genotype, cfg, epochs, 0))]
    return [
        Job(label(name, f"fold {i}/{k}"), select_fold, (genotype, cfg, epochs, i)) for i in range(1, k + 1)
    ]


def submit_selections(
    pool: Pool, items: Sequence[tuple[str, Genotype]], cfg: Config, epochs: int | None, desc: str
) -> dict[str, list[Handle]]:
    """Queue the fold jobs of each of ``items`` (key, genotype) in ``pool``; see :func:`gather`."""
    return {key: [pool.submit(j) for j in fold_jobs(g, cfg, epochs, label(desc, key))] for key, g in items}


def gather(
    pool: Pool, handles: dict[str, list[Handle]], progress: bool, desc: str
) -> Iterator[tuple[str, Selection]]:
    """``(key, selection)`` of each queued selection as its last fold finishes; one bar over the jobs."""
    owner = {id(h): key for key, hs in handles.items() for h in hs}
    left = {key: len(hs) for key, hs in handles.items()}
    every = [h for hs in handles.values() for h in hs]
    with progress_bar(total=len(every), desc=label(desc, f"{pool.workers} workers"), enabled=progress) as bar:
        for h in pool.results(every):
            bar.update(1)
            key = owner[id(h)]
            left[key] -= 1
            if left[key] == 0:
                parts = [x.result for x in handles[key]]
                yield key, parts[0] if len(parts) == 1 else Selection.mean(parts)


def selections(
    pool: Pool,
    items: Sequence[tuple[str, Genotype]],
    cfg: Config,
    epochs: int | None,
    progress: bool,
    desc: str,
) -> Iterator[tuple[str, Selection]]:
    """The selections of ``items`` (key, genotype), their folds trained side by side in ``pool``:
    yields ``(key, selection)`` as each genotype's last fold finishes; one bar over the jobs."""
    yield from gather(pool, submit_selections(pool, items, cfg, epochs, desc), progress, desc)


def selection_file(genotype: Genotype, selection: Selection) -> dict:
    """``<stage>_selection.json`` as :func:`train` writes it: the genotype as trained (with its
    recipe) and its selection."""
    return {"genotype": genotype.to_dict(), **selection.to_dict(), "best_epoch": selection.best_epoch}


def _select_parallel(
    pool: Pool,
    genotype: Genotype,
    data: FeatureData,
    cfg: Config,
    epochs: int | None,
    progress: bool,
    desc: str,
) -> Selection:
    return next(selections(pool, [("", genotype)], cfg, epochs, progress, desc))[1]


def _select_on(
    genotype: Genotype, data: FeatureData, cfg: Config, epochs: int | None, progress: bool, desc: str
) -> Selection:
    genotype = with_recipe(genotype, cfg)
    model = build_model(genotype, data, cfg, data["train"])
    initial = None
    if linear_init(cfg, data) == "probe" and model.linear is not None:
        initial = float(score(model, data["val"], data, cfg)[primary_metric(data.task)])
    state = fit(
        model,
        data["train"],
        data,
        cfg,
        epochs or cfg.train.epochs,
        val=data["val"],
        progress=progress,
        desc=desc,
    )
    return Selection(state["val"], primary_metric(data.task), state["seconds"], initial)


def _not_stackable(models: list[FoundNet], folds: tuple[FeatureData, ...], cfg: Config) -> str | None:
    """Why the folds' networks cannot train as one stacked model, or None when they can.

    They cannot inside a process group, when the folds differ in batches per epoch (the stacked
    Adam steps every fold at every step), or when a network does not run under ``torch.func.vmap``
    or gives other outputs there (e.g. a registered op with data-dependent Python control flow):
    checked on four rows of each fold, in eval and in train mode.
    """
    t = cfg.train
    if current().active:
        return "training is distributed over processes"
    counts = batch_counts([len(d["train"]) for d in folds], t.batch_size, min_batch(current()))
    if len(set(counts)) > 1:
        return f"the folds have {counts} batches per epoch (train.batch_size={t.batch_size})"
    batches = [d["train"].batch(np.arange(min(4, len(d["train"])))) for d in folds]
    feats = {n: torch.stack([b[0][n] for b in batches]) for n in batches[0][0]}
    try:
        trial = FoldStack(models).eval()
        with torch.no_grad():
            stacked = trial(feats)
            alone = torch.stack([m.eval()(b[0]) for m, b in zip(models, batches, strict=True)])
            trial.train()(feats)
    except Exception as err:  # noqa: BLE001 - any failure of a user's op under vmap means: one by one
        first = (str(err).strip().splitlines() or [""])[0][:200]
        return f"the network does not run under torch.func.vmap ({type(err).__name__}: {first})"
    finally:
        for m in models:
            m.train()
    gap = float((stacked - alone).abs().max())
    if not gap <= 1e-4 * max(1.0, float(alone.abs().max())):
        return f"under torch.func.vmap its outputs differ from one by one's by {gap:.3g}"
    return None


def _select_stacked(
    genotype: Genotype,
    models: list[FoundNet],
    folds: tuple[FeatureData, ...],
    cfg: Config,
    epochs: int,
    progress: bool,
    run: RunDir | None,
    stage: str,
    desc: str = "select epochs",
) -> Selection:
    """The k folds' selection as one stacked model (:mod:`bmnas.engine.batched`), the same recipe as
    :func:`fit` per fold: each fold's own shuffling generator (seeded as its fit's), the same Adam
    and per-batch schedule, its val split scored after each epoch; checkpointed each epoch in ``run``."""
    t = cfg.train
    ctx = Context.of(cfg)
    data = folds[0]
    metric = primary_metric(data.task)
    initial = [None] * len(folds)
    if linear_init(cfg, data) == "probe" and models[0].linear is not None:
        initial = [float(score(m, d["val"], d, cfg)[metric]) for m, d in zip(models, folds, strict=True)]
    stack = FoldStack([m.cpu() for m in models]).to(ctx.device)
    trains = [on_device(d["train"], ctx.device) for d in folds]
    vals = [on_device(d["val"], ctx.device) for d in folds]
    min_rows = min_batch(ctx.ranks)
    n_batches = batch_counts([len(s) for s in trains], t.batch_size, min_rows)[0]
    opt = build_optimizer(stack.parameters(), AdamSettings.of(t, fused=True))  # as fit's
    sched = cosine_restarts(opt, n_batches, t.restart_epochs, t.restart_mult, t.lr_min)
    shuffles = [torch.Generator().manual_seed(cfg.seed + 1) for _ in folds]
    p = t.modality_dropout
    dropouts = [ModalityDropout(p, g, tuple(models[0].used)) if p else None for g in shuffles]
    identity = {"genotype": genotype.to_dict(), "epochs": epochs, "folds": [len(s) for s in trains]}
    stateful = {"stack": stack, "opt": opt, "sched": sched, "shuffles": Generators(shuffles)}
    ckpt = Checkpoint(run, stage, cfg, stateful, shuffles[0], f"{stage}_history.jsonl", identity=identity)
    state = ckpt.load() or new_state(val=[[] for _ in folds])

    def one_epoch(epoch: int, state: dict) -> dict:
        batches = [
            batch_indices(len(s), t.batch_size, g, min_rows) for s, g in zip(trains, shuffles, strict=True)
        ]
        gathers = [s.batch for s in trains]
        losses = train_folds_epoch(
            stack, batches, gathers, data.task, opt, ctx, schedule=sched, dropouts=dropouts
        )
        scores = evaluate_folds(stack, vals, data.task, t.eval_batch_size, cfg.data.threshold, ctx)
        for curve, s in zip(state["val"], scores, strict=True):
            curve.append(float(s[metric]))
        fold_val = [s[metric] for s in scores]
        return {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "lr": sched.get_last_lr()[0],
            "val_" + metric: float(np.mean(fold_val)),
            "fold_train_loss": losses,
            "fold_val_" + metric: fold_val,
        }

    with progress_bar(total=epochs, initial=state["epoch"], desc=desc, enabled=progress) as bar:

        def report(row: dict) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}")

        state = run_epochs(state, epochs, one_epoch, ckpt, report=report)
    share = state["seconds"] / len(folds)
    return Selection.mean(
        [Selection(curve, metric, share, i) for curve, i in zip(state["val"], initial, strict=True)]
    )


def saved_selection(path: Path, genotype: Genotype, epochs: int, folds: int) -> Selection | None:
    """The selection saved in ``path`` for ``genotype`` by this recipe, or None (none saved, another
    genotype or recipe, or a damaged file: :data:`~bmnas.core.schemas.SELECTION`, logged and redone)."""
    try:
        saved = load_json(path, SELECTION, default=None)
    except FileFormatError as err:
        log.warning("%s; measuring the selection again", err)
        return None
    if saved is None or saved["genotype"] != genotype.to_dict():
        return None
    selection = Selection.from_dict(saved)
    return selection if selection.matches(epochs, folds) else None


@entry
def train(
    genotype: Genotype,
    data: FeatureData,
    cfg: Config,
    run: RunDir | str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    stage: str = "train",
    desc: str = "train",
    selection: Selection | None = None,
) -> TrainResult:
    """Select the epoch count on val (unless ``train.select_epochs`` is off), refit on train + val, test.

    Args:
        run: run directory for the per-epoch checkpoint (resumed if present), the history and the
            selection's outcome (``<stage>_selection.json``); a path is opened as ``--out`` is
            (:func:`bmnas.method.record.open_run`).
        stage: checkpoint name, so several networks can be trained in one run directory.
        stop_after: end this call after that many refit epochs in total (to test resumption).
        selection: an already measured selection of this genotype (e.g. from re-ranking).
    """
    run = as_run(run, cfg, data)
    genotype = with_recipe(genotype, cfg)
    t = cfg.train
    seconds = 0.0
    if t.select_epochs and selection is None and run is not None:
        selection = saved_selection(run.path / f"{stage}_selection.json", genotype, t.epochs, t.select_folds)
    if t.select_epochs and selection is None:
        selection = select_epochs(
            genotype,
            data,
            cfg,
            progress=progress,
            desc=label(desc, "select epochs"),
            run=run,
            stage=f"select_{stage}",
        )
        if run is not None and current().main:
            run.write_json(
                f"{stage}_selection.json",
                {"genotype": genotype.to_dict(), **selection.to_dict(), "best_epoch": selection.best_epoch},
            )
    if selection is not None:
        seconds += selection.seconds
    epochs = selection.best_epoch if selection is not None else t.epochs
    train_val = merge_splits(data["train"], data["val"])
    model = build_model(genotype, data, cfg, train_val)
    state = fit(
        model,
        train_val,
        data,
        cfg,
        epochs,
        run=run,
        stage=stage,
        genotype=genotype,
        progress=progress,
        desc=label(desc, "refit on train + val"),
        stop_after=stop_after,
    )
    test = score(model, data["test"], data, cfg)
    model.cpu()  # what callers save, export and predict with
    return TrainResult(
        test,
        model.param_counts(),
        seconds + state["seconds"],
        state["history"],
        model,
        epochs=epochs,
        val=selection.best_score if selection is not None else None,
        val_curve=list(selection.curve) if selection is not None else [],
    )
