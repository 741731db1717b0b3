"""``bmnas run | search | train``: the method on one dataset, into one run directory.

``search`` writes ``RUN_DIR/genotype.json``; ``train`` (the evaluation stage) trains a genotype
and writes ``metrics.json`` and ``model.pt``; ``run`` does both, trains the baselines and prints the
table with the recommended network. ``search`` and ``train`` also run under ``torchrun``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..core.fileio import read_json
from ..report.summary import SEARCHED
from .options import SAVED_EPOCHS, command, data_options, open_run, prepare

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = command(sub, "run", "search, then train the found network and the baselines; print a table")
    data_options(p)
    p.add_argument("--no-baselines", action="store_true", help="skip the unimodal and late-fusion baselines")
    p.set_defaults(func=run_command, saved=SAVED_EPOCHS)
    p = command(sub, "search", "search a fusion architecture; writes RUN_DIR/genotype.json")
    data_options(p)
    p.set_defaults(func=search_command, saved=SAVED_EPOCHS)
    p = command(sub, "train", "evaluation stage: train a genotype on train+val, test it")
    data_options(p)
    p.add_argument("--genotype", metavar="JSON", help="genotype to train (default: RUN_DIR/genotype.json)")
    p.set_defaults(func=train_command, saved=SAVED_EPOCHS)


def search_command(args: argparse.Namespace) -> int:
    from ..engine.distributed import current
    from ..method.search import search

    cfg, data, _ = prepare(args, searches=True, distributed=True)
    run = open_run(args, cfg, data)
    result = search(data, cfg, run, progress=not args.quiet)
    if current().main:
        show_search(result, run)
    return 0


def train_command(args: argparse.Namespace) -> int:
    from ..core.genotype import Genotype, check_data
    from ..engine.distributed import current
    from ..method.run import train_found
    from ..space.ops import get_op, list_ops

    cfg, data, _ = prepare(args, searches=False, distributed=True)
    genotype_path = Path(args.genotype or Path(args.out) / "genotype.json")  # checked before --out is touched
    genotype = Genotype.load(genotype_path)
    arity = {name: get_op(name).arity for name in list_ops()}
    check_data(genotype, data.feature_channels, data.feature_lengths, str(genotype_path), arity)
    run = open_run(args, cfg, data)
    r = train_found(genotype, data, cfg, run, progress=not args.quiet)  # writes model.pt, metrics.json
    if current().main:
        print(f"test: {json.dumps(r.test)}")
        finish_run(args, cfg, run, read_json(run.metrics_path), r.model.genotype)
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Search, train, baselines, the table and the recommended network."""
    from ..method.run import run
    from ..report.summary import format_table

    cfg, data, data_seconds = prepare(args, searches=True)
    rundir = open_run(args, cfg, data)
    report = run(
        data,
        cfg,
        rundir,
        baselines=not args.no_baselines,
        progress=not args.quiet,
        on_search=lambda found: show_search(found, rundir),
        data_seconds=data_seconds,
    )
    print()
    print(format_table(report))
    metrics = read_json(rundir.metrics_path)
    finish_run(args, cfg, rundir, metrics, report.genotypes.get(SEARCHED))
    print(
        f"\nrun directory: {rundir.path} (README.md, metrics.json, genotype.json, recommended_genotype.json, "
        f"plots/)"
    )
    return 0


def finish_run(args: argparse.Namespace, cfg, run, metrics: dict, genotype) -> None:
    """Record the environment in ``metrics.json`` and write the model card ``RUN_DIR/README.md``
    (unless a README.md there is the user's: it stays, and the card is skipped with a warning)."""
    from ..core.fileio import write_json, write_text_atomic
    from ..engine.device import resolve_device
    from ..engine.owned import is_marked_ours
    from ..report.model_card import environment, model_card, now

    env = environment(ran_on(metrics) or str(resolve_device(cfg.device)), args.argv, args.started, now())
    metrics = {**metrics, "environment": env}
    write_json(run.metrics_path, metrics)  # not through RunDir: the loggers saw these metrics already
    card = run.path / "README.md"
    if (card.exists() or card.is_symlink()) and not is_marked_ours(card):
        log.warning("%s is not bmnas' model card: left as it is (no model card written)", card)
        return
    figure = (run.plots_path / "genotype.png").is_file()
    write_text_atomic(card, model_card(f"bmnas run {run.path.name}", metrics, genotype, figure))


def ran_on(metrics: dict) -> str | None:
    """The device(s) a run's ``metrics.json`` says it ran on: ``cuda``, or per phase when they differ
    (``search cuda, evaluation cpu``); None where it does not say (``device: auto``'s probe: README)."""
    devices = metrics.get("devices")
    if not isinstance(devices, dict):
        return None
    used = {p: d["device"] for p, d in devices.items() if isinstance(d, dict) and "device" in d}
    if not used:
        return None
    names = set(used.values())
    return names.pop() if len(names) == 1 else ", ".join(f"{p} {d}" for p, d in used.items())


def show_search(result, run) -> None:
    """Print the genotype the search chose, and how (the search itself wrote it and its plots)."""
    hypernet = f"hypernet's best epoch {result.best_epoch}: val {result.metric} {result.best_score:.4f}"
    chosen = next((c for c in result.candidates if c["genotype"] == result.genotype.to_dict()), None)
    if chosen is None and result.perturb is not None:
        print(
            f"genotype chosen by perturbation selection (loss deltas in perturb.json) -> {run.genotype_path}"
        )
    elif chosen is None:
        print(f"best genotype ({hypernet}) -> {run.genotype_path}")
    else:
        folds = chosen.get("folds", 0)
        scored = (
            f"{folds}-fold CV {result.metric} (train + val)"
            if folds
            else f"val {result.metric} trained alone"
        )
        print(
            f"genotype chosen by re-ranking {len(result.candidates)} candidates: {chosen['source']}, "
            f"{scored} {chosen['val']:.4f} ({hypernet}) -> {run.genotype_path}"
        )
    print(result.genotype.describe())
