"""Where each phase of a run computes: ``device: auto`` measured per phase (docs/DESIGN.md §11).

With ``device: auto`` on a machine with a GPU, :func:`place` times a short probe of the search's
bilevel step and of the evaluation's training step on each candidate device and runs each phase on
the faster one, counting the CPU's worker processes. An explicit device, a CPU-only machine or a
process group (``torchrun``) is never probed. The choices are logged, written to ``metrics.json``
(``devices``) and kept in ``RUN_DIR/devices.json``, so a resumed run does not change device half-way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..core.config import Config
from ..core.data import FeatureData
from ..core.genotype import DeriveRules, Genotype
from ..core.schema import load_json
from ..core.schemas import DEVICES
from ..engine.device import (
    DeviceChoice,
    auto_candidates,
    kept_settings,
    probe_split,
    resolve_device,
    thread_policy,
    time_steps,
)
from ..engine.distributed import current
from ..engine.graphs import StepFunction
from ..engine.loop import AdamSettings, Context, build_optimizer
from ..engine.rundir import RunDir, RunError
from ..engine.workers import resolve_workers
from ..space.found import FoundNet
from .bilevel import bilevel_optimizers, build_hypernet
from .train import fold_work, with_recipe

log = logging.getLogger(__name__)


PHASES = ("search", "evaluation")
DEVICES_FILE = "devices.json"


@dataclass(frozen=True)
class Placement:
    """Where each phase of a run computes: ``search`` (the hypernet's bilevel steps) and
    ``evaluation`` (the FoundNets: re-ranking candidates, selections, baselines, refits)."""

    setting: str  # config.device
    search: DeviceChoice
    evaluation: DeviceChoice

    def config(self, cfg: Config, phase: str) -> Config:
        """``cfg`` with the device ``phase`` runs on."""
        device = getattr(self, phase).device
        return cfg if device == cfg.device else cfg.replace(device=device)

    def to_dict(self) -> dict:
        """``metrics.json``'s ``devices``: the setting, and per phase the device and its probe."""
        return {
            "setting": self.setting,
            "search": self.search.to_dict(),
            "evaluation": self.evaluation.to_dict(),
        }


def place(
    data: FeatureData,
    cfg: Config,
    workers: Callable[[], int] = lambda: 1,
    phases: tuple[str, ...] = PHASES,
    genotype: Genotype | None = None,
    run: RunDir | None = None,
) -> Placement:
    """The device of each phase: ``cfg.device``, or with ``auto`` on a machine with a GPU the faster
    of :func:`~bmnas.engine.device.auto_candidates` for each of ``phases``, measured.

    The probe of a phase runs its own step on each candidate (:func:`_probe_step`: the hypernet's
    weight + architecture step at ``search.batch_size``, or a FoundNet's training step at
    ``train.batch_size``, on the first rows of the train and val splits, CUDA graphs captured as the
    run would; the FoundNet of ``genotype``, by default the one a fresh hypernet derives):
    :data:`~bmnas.engine.device.PROBE_WARMUP` steps, then :data:`~bmnas.engine.device.PROBE_STEPS`
    timed ones (:func:`~bmnas.engine.device.time_steps`). On the CPU the evaluation's networks train
    ``workers()`` at a time (the worker pool, one thread each: timed on one thread), so the CPU's
    rate is ``workers / t_cpu``; the GPU's is counted as ``1 / t_gpu``, one step at a time (a pool's
    processes there share one device, and how much they overlap is not measured), so a GPU is
    chosen only when one stream of its steps already beats the CPU's workers
    (:func:`~bmnas.engine.device.faster_device`). The probe works on fresh copies under a forked RNG
    and restores the process-wide settings: the run's models, random streams and results are those
    of the chosen device set explicitly. Each choice is logged (``run.log``) as
    :meth:`~bmnas.engine.device.DeviceChoice.line`. No probe for an explicit device, on a machine
    with one candidate (CPU only) or inside a process group (every rank must agree: its GPU).
    With ``run``, the choices are kept in ``RUN_DIR/devices.json`` and a resumed run takes the
    choices its start measured (a run does not change device half-way).
    """
    candidates = auto_candidates()
    if cfg.device != "auto" or len(candidates) < 2 or current().active:
        name = str(resolve_device(cfg.device))
        fixed = {p: DeviceChoice(p, name, cfg.device) for p in PHASES}
        return Placement(cfg.device, fixed["search"], fixed["evaluation"])
    kept = _kept_choices(run, candidates)
    choices = {p: kept[p] for p in phases if p in kept}
    for c in choices.values():
        log.info(c.line("measured when this run began"))
    todo = [p for p in PHASES if p in phases and p not in kept]
    if not todo:
        return _placement(cfg, choices, phases)
    n = max(1, workers()) if "evaluation" in todo else 1
    side = {c: n for c, d in candidates.items() if torch.device(d).type == "cpu"}
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda), kept_settings():
        if genotype is None and "evaluation" in todo:
            genotype = build_hypernet(data, cfg).genotype(DeriveRules.of(cfg.search))
        for phase in todo:
            seconds = {}
            for c, device in candidates.items():
                one = phase == "evaluation" and side.get(c, 1) > 1  # a worker's single thread
                with thread_policy(1) if one else contextlib.nullcontext():
                    pcfg = cfg.replace(device=device)
                    ctx = Context.of(pcfg)
                    seconds[c] = time_steps(_probe_step(phase, data, pcfg, ctx, genotype), ctx.device)
            choices[phase] = DeviceChoice.measured(
                phase, seconds, candidates, side if phase == "evaluation" else {}
            )
            log.info(choices[phase].line())
    if cuda:
        torch.cuda.empty_cache()
    if run is not None and current().main:
        run.write_json(
            DEVICES_FILE, {"setting": cfg.device, **{p: c.to_dict() for p, c in {**kept, **choices}.items()}}
        )
    return _placement(cfg, choices, phases)


def _kept_choices(run: RunDir | None, candidates: dict[str, str]) -> dict[str, DeviceChoice]:
    """The probed choices ``RUN_DIR/devices.json`` holds for these candidates (none without it)."""
    if run is None:
        return {}
    fix = "delete it (the next run probes again) or use --fresh"
    saved = load_json(run.path / DEVICES_FILE, DEVICES, fix, RunError, default=None)
    if saved is None or saved["setting"] != "auto":
        return {}
    kept = {p: DeviceChoice.from_dict(p, saved[p]) for p in PHASES if p in saved}
    return {
        p: c
        for p, c in kept.items()
        if c.probed and set(c.seconds) == set(candidates) and c.name in candidates
    }


def _placement(cfg: Config, choices: dict[str, DeviceChoice], phases: tuple[str, ...]) -> Placement:
    """``choices`` of ``phases``; a phase not run here stays as without a probe."""
    default = str(resolve_device("auto"))
    get = lambda p: choices[p] if p in phases else DeviceChoice(p, default, "auto")  # noqa: E731
    return Placement(cfg.device, get("search"), get("evaluation"))


def _probe_step(
    phase: str, data: FeatureData, cfg: Config, ctx: Context, genotype: Genotype | None
) -> Callable[[], None]:
    """One step of ``phase`` on ``ctx.device``, on fresh seeded copies: the search's weight step then
    architecture step, or the evaluation's FoundNet training step (``genotype`` with the recipe)."""
    torch.manual_seed(cfg.seed)
    if phase == "search":
        net = build_hypernet(data, cfg).to(ctx.device).train()
        w_opt, a_opt, _ = bilevel_optimizers(net, cfg, 1)
        w_step = StepFunction(net, data.task, w_opt, ctx, freeze=net.arch_parameters())
        a_step = StepFunction(net, data.task, a_opt, ctx, freeze=net.weight_parameters())
        bs = cfg.search.batch_size
        train, val = (probe_split(data[s], ctx.device, bs) for s in ("train", "val"))
        rows, vrows = np.arange(len(train)), np.arange(len(val))

        def bilevel() -> None:
            w_step(*train.batch(rows))
            a_step(*val.batch(vrows))

        return bilevel
    model = FoundNet(with_recipe(genotype, cfg), data.task.num_outputs, dropout=cfg.model.dropout)
    model = model.to(ctx.device).train()
    opt = build_optimizer(model.parameters(), AdamSettings.of(cfg.train, fused=True))  # as fit's
    step = StepFunction(model, data.task, opt, ctx)
    split = probe_split(data["train"], ctx.device, cfg.train.batch_size)
    rows = np.arange(len(split))
    return lambda: step(*split.batch(rows))


def rerank_workers(data: FeatureData, cfg: Config) -> int:
    """The worker processes re-ranking would train its candidates' folds in on the CPU."""
    jobs = cfg.search.rerank * max(1, cfg.train.select_folds)
    return resolve_workers(cfg.workers, jobs, fold_work(data, cfg, cfg.search.rerank_epochs or None, jobs))
