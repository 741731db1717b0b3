"""What the commands share: their options, their examples, and the prelude config → data → run directory.

A command module registers its parsers with :func:`command` (summary atop the help, the
:data:`EXAMPLES` of the command at its end) and the option groups here; its function then calls
the prelude in the same order for every command:

1. :func:`config_of`: dataset preset → ``--config`` → ``--set``/``--device`` → ``--dataset``/``--data``
   (joins ``torchrun``'s process group for the commands that run over several processes);
2. :func:`read_data` (the features, prepared and cached on first use) or :func:`prepare`, which
   also logs the data line, sets the process's threads and, for commands that search, checks the
   data and fits the config to it;
3. :func:`open_run`: locks ``--out`` and checks that it holds this run before anything is written.

Importing this module loads no torch (``bmnas --help`` stays fast): the prelude imports its work
when it runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import TYPE_CHECKING

from ..core.config import Config, ConfigError, _parse_value, _short, preset
from ..core.fileio import default_root

if TYPE_CHECKING:
    from ..core.data import FeatureData
    from ..engine.rundir import RunDir

log = logging.getLogger(__name__)

EXAMPLES = {
    None: [
        ("bmnas run --dataset avmnist --out runs/a", "search, train, baselines, table"),
        ("bmnas show runs/a", "the run's genotype and metrics"),
        ("bmnas run --help", "a command's options and examples"),
    ],
    "run": [
        ("bmnas run --dataset avmnist --out runs/a", ""),
        ("bmnas run --data DIR --out runs/b --set search.epochs=6 --set model.C=32", ""),
        ("bmnas run --data DIR --config runs/sw/best_config.yaml --out runs/best", "a sweep's winner"),
    ],
    "search": [
        ("bmnas search --data DIR --out runs/s", "writes runs/s/genotype.json"),
        ("bmnas search --dataset avmnist --out runs/s --set 'model.ops=[sum,attention]'", ""),
    ],
    "train": [
        ("bmnas train --data DIR --out runs/s", "trains runs/s/genotype.json"),
        ("bmnas train --data DIR --out runs/t --genotype runs/s/genotype.json", ""),
    ],
    "ablate": [
        ("bmnas ablate --dataset avmnist --out runs/abl", "every method over 3 seeds"),
        ("bmnas ablate --data DIR --out runs/abl --seeds 0,1 --methods late_fusion,searched", ""),
    ],
    "sweep": [
        ("bmnas sweep --data DIR --out runs/sw --trials 20", "study in runs/sw/study.db"),
        ("bmnas sweep --dataset avmnist --out runs/sw --trials 40 --storage postgresql://host/db", ""),
        ("bmnas run --data DIR --config runs/sw/best_config.yaml --out runs/best", "train the winner"),
    ],
    "pretrain": [
        ("bmnas pretrain --dataset avmnist", "prepare the data, pre-train the backbones"),
        ("bmnas pretrain --dataset mmimdb --dataset-option path=multimodal_imdb.hdf5", ""),
    ],
    "export": [("bmnas export --dataset avmnist --out feats/", "then: bmnas run --data feats/ ...")],
    "show": [("bmnas show runs/a", "")],
    "predict": [
        ("bmnas predict runs/a --out preds.csv", "the run's own test split"),
        ("bmnas predict runs/a --data DIR --split val --out preds.jsonl", ""),
        ("bmnas predict runs/a --raw raw.npz --out preds.csv", "raw inputs through the backbones"),
    ],
    "export-model": [
        ("bmnas export-model runs/a --out model.onnx", "needs pip install 'bmnas[onnx]'"),
        ("bmnas export-model runs/a --format torchscript --out model.pt", ""),
    ],
    "robustness": [
        ("bmnas robustness runs/a", "writes runs/a/robustness.{md,csv,json,png}"),
        ("bmnas robustness runs/a --noise 0.2 1.0 --out report/", ""),
    ],
    "config": [
        ("bmnas config --dataset mmimdb", "the preset's values, each key explained"),
        ("bmnas config --config my.yaml --set search.epochs=3", "a valid --config file"),
    ],
}
"""Example command lines per command (``None``: the top-level help); a test parses every one."""

# What a Ctrl-C leaves for a rerun to resume from (``str.format``-ed with the parsed arguments)
SAVED_EPOCHS = "finished epochs and stages are saved in {out}"
SAVED_TRIALS = "finished trials are saved in {out}"
SAVED_CACHE = "prepared data and backbones are kept in {cache}"


# ----------------------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------------------

MAX_NOISE = 100.0
"""The largest noise level ``bmnas robustness --noise`` takes (σ in multiples of the train std)."""


def positive_int(text: str) -> int:
    """An argparse ``type`` for a size or count (``--batch-size``, ``--trials``): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def noise_level(text: str) -> float:
    """An argparse ``type`` for a noise level σ: a finite number in ``(0, MAX_NOISE]``."""
    allowed = f"a noise level σ is a number in (0, {MAX_NOISE:g}] (multiples of each feature's train std)"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{allowed}, got {text!r}") from None
    if not 0 < value <= MAX_NOISE:  # also NaN, for which every comparison is False
        raise argparse.ArgumentTypeError(f"{allowed}, got {text}")
    return value


def epilog(command: str | None) -> str:
    """``Examples:`` and one command line each, with an optional comment."""
    rows = EXAMPLES[command]
    width = max(len(line) for line, _ in rows)
    if width + max(len(note) for _, note in rows) > 90:  # too wide to align the comments
        width = 0
    lines = [f"  {line:<{width}}  # {note}" if note else f"  {line}" for line, note in rows]
    return "Examples:\n" + "\n".join(lines)


def command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand: ``summary`` in the command list and atop its help, examples at the end."""
    return sub.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=epilog(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def output_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """``--debug``, ``--quiet`` and ``--verbose``: before the command (global) or after it
    (``suppress``: the subcommand then leaves the global value alone unless given)."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    p.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an internal error (env BMNAS_DEBUG=1)",
        **default,
    )
    p.add_argument(
        "--quiet", action="store_true", help="warnings only: no progress bars, no info lines", **default
    )
    p.add_argument(
        "--verbose", action="store_true", help="debug lines too (configuration, threads)", **default
    )


def cache_option(p: argparse.ArgumentParser, help: str) -> None:
    """``--cache DIR``, by default ``$BMNAS_CACHE`` or ``~/.cache/bmnas``."""
    p.add_argument("--cache", metavar="DIR", default=str(default_root()), help=f"{help} (env BMNAS_CACHE)")


def key_values(group, flag: str, dest: str, help: str) -> None:
    """A repeatable ``FLAG KEY=VALUE`` option; the values collect in a list."""
    group.add_argument(flag, metavar="KEY=VALUE", action="append", default=[], dest=dest, help=help)


def data_options(p: argparse.ArgumentParser, out: bool = True) -> None:
    """The options of a command that reads data: its source, config, cache, device, output options
    and (``out``) the run directory ``--out RUN_DIR [--fresh]``."""
    src = p.add_argument_group("data (one of)")
    src.add_argument("--dataset", help="registered dataset name, e.g. avmnist (prepared on first use)")
    src.add_argument("--data", metavar="DIR", help="directory with train/val/test.npz (generic format)")
    key_values(
        src,
        "--dataset-option",
        "dataset_options",
        "option for the dataset builder, e.g. path=multimodal_imdb.hdf5 (repeatable)",
    )
    key_values(
        src, "--backbone-option", "backbone_options", "option for the dataset's backbones (repeatable)"
    )
    p.add_argument(
        "--config",
        metavar="YAML",
        help="YAML file with the keys --set takes, as sections (search: {epochs: 3}), e.g. a run's "
        "RUN_DIR/config.yaml or a sweep's best_config.yaml; applied after the dataset's preset, before "
        "--set (README, 'Using it')",
    )
    key_values(p, "--set", "overrides", "override a config value, e.g. --set search.epochs=3 (repeatable)")
    cache_option(p, "where datasets, backbones and feature caches live")
    output_options(p, suppress=True)
    p.add_argument(
        "--device",
        metavar="DEVICE",
        help="auto (default: a GPU if present), cpu, cuda or cuda:N; same as --set device=...",
    )
    if out:
        p.add_argument("--out", metavar="RUN_DIR", required=True, help="run directory (resumed if it exists)")
        p.add_argument("--fresh", action="store_true", help="discard all a run wrote in RUN_DIR; start over")
        p.add_argument(
            "--logger",
            metavar="NAME",
            action="append",
            default=[],
            help="also log the run's rows to csv (RUN_DIR/logs/<kind>.csv), tensorboard "
            "(pip install 'bmnas[tensorboard]') or mlflow (pip install 'bmnas[mlflow]'); repeatable or "
            "a comma list",
        )


def trained_run_options(p: argparse.ArgumentParser) -> None:
    """``RUN_DIR --stage --cache`` and the output options: a command that uses a run's trained network."""
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--stage",
        default="train",
        help="which trained network: train (the found one, default), recommended (the one "
        "`bmnas run` recommends) or a baseline's checkpoint name, e.g. baseline_late_fusion",
    )
    cache_option(p, "cache root, for a run on a registered dataset")
    output_options(p, suppress=True)


# ----------------------------------------------------------------------------------------------
# The prelude: config -> data -> run directory
# ----------------------------------------------------------------------------------------------


def resolve_config(args: argparse.Namespace) -> Config:
    """Dataset preset → ``--config`` → ``--set`` (and ``--device``) → ``--dataset``/``--data``."""
    base = preset(args.dataset) if args.dataset else {}
    overrides = [*args.overrides, *([f"device={args.device}"] if getattr(args, "device", None) else [])]
    cfg = Config.from_sources(args.config, overrides, base=base)
    if args.dataset and args.data:
        raise ConfigError("give either --dataset or --data, not both")
    if args.dataset or args.data:
        cfg = cfg.replace(
            data=type(cfg.data)(**{**cfg.data.__dict__, "dataset": args.dataset, "dir": args.data})
        )
    if not cfg.data.dataset and not cfg.data.dir:
        raise ConfigError("no data: pass --dataset NAME (e.g. avmnist) or --data DIR (generic format)")
    return cfg


def parse_options(items: list[str], flag: str) -> dict:
    """``["k=v", ...]`` -> ``{k: yaml value}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r} must look like key=value")
        out[key.strip()] = _parse_value(value, f"{flag} {_short(item)}")
    return out


def builder_options(args: argparse.Namespace) -> tuple[dict, dict]:
    """``--dataset-option`` and ``--backbone-option`` as dicts."""
    return (
        parse_options(args.dataset_options, "--dataset-option"),
        parse_options(args.backbone_options, "--backbone-option"),
    )


def config_of(args: argparse.Namespace, distributed: bool = False) -> Config:
    """The command's configuration (:func:`resolve_config`), logged at debug level.

    Under ``torchrun`` a ``distributed`` command joins the process group (one search over several
    processes) before any data is read; any other command refuses to run there.
    """
    cfg = resolve_config(args)
    if getattr(args, "logger", None):
        from ..report.loggers import parse_loggers

        parse_loggers(args.logger)  # a misspelt --logger is refused before any data is read
    log.debug("configuration:\n%s", cfg.to_yaml().rstrip())
    _setup_processes(args, cfg, distributed)
    return cfg


def _setup_processes(args: argparse.Namespace, cfg: Config, distributed: bool) -> None:
    from ..engine.device import resolve_device
    from ..engine.distributed import current, init_from_env, launched

    if not launched() or current().active:
        return
    if not distributed:
        raise ConfigError(
            f"bmnas {args.command} runs in one process; under torchrun use `bmnas search` or `bmnas train`"
        )
    init_from_env(resolve_device(cfg.device))
    args.owns_process_group = True  # left in main's cleanup


def read_data(args: argparse.Namespace, cfg: Config, **changes) -> FeatureData:
    """The features ``cfg`` names (:func:`bmnas.features.pipeline.load_data`), from ``--cache``.

    ``changes``: model fields to load them for instead (``L=8``: the features pooled to another L).
    """
    import dataclasses

    from ..features.pipeline import load_data

    if changes:
        cfg = cfg.replace(model=dataclasses.replace(cfg.model, **changes))
    return load_data(cfg, args.cache, not args.quiet, *builder_options(args))


def prepare(
    args: argparse.Namespace, searches: bool, distributed: bool = False
) -> tuple[Config, FeatureData, float]:
    """Config, data and seconds to read the data, of a command that trains: :func:`config_of`,
    :func:`read_data` (timed and logged), the process's threads; a command that ``searches`` checks
    that the data can be searched and fits the config to it
    (:func:`bmnas.method.run.fit_config_to_data`)."""
    from ..engine.device import resolve_device

    cfg = config_of(args, distributed)
    resolve_device(cfg.device)  # a device this machine lacks is refused before data or --out is touched
    t0 = time.perf_counter()
    data = read_data(args, cfg)
    data_seconds = time.perf_counter() - t0
    sizes = ", ".join(f"{s} {len(sp)}" for s, sp in data.splits.items())
    log.info(
        "data %s: %s with %d outputs; %d features; %s samples (%.1f s)",
        data.name,
        data.task.type,
        data.task.num_outputs,
        len(data.feature_names),
        sizes,
        data_seconds,
    )
    set_threads(cfg, data)
    if searches:
        from ..features.validate import check_searchable
        from ..method.run import fit_config_to_data

        check_searchable(data)
        cfg = fit_config_to_data(cfg, data)
    return cfg, data, data_seconds


def set_threads(cfg: Config, data: FeatureData) -> int:
    """Process-wide CPU settings of a run: intra-op threads (``threads``, else the policy) and malloc."""
    import torch

    from ..engine.device import available_cores, choose_threads, keep_freed_memory, step_elements

    keep_freed_memory()  # activations reuse freed memory: no page faults every iteration
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # processes of this run on this machine
    n = cfg.threads or choose_threads(
        step_elements(cfg.search.batch_size, len(data.feature_names), cfg.model.C, cfg.model.L),
        cores=max(1, available_cores() // local),
    )
    torch.set_num_threads(n)
    log.debug("%d torch threads (%s)", n, "threads" if cfg.threads else "bmnas' policy")
    return n


def open_run(args: argparse.Namespace, cfg: Config, data: FeatureData) -> RunDir:
    """Lock ``--out`` and check that it holds this run (or none) before anything is written.

    Under ``torchrun`` rank 0 opens (and locks) the directory; the other ranks only read from it.
    """
    from ..engine.distributed import barrier, current
    from ..engine.rundir import RunDir
    from ..features.validate import fingerprint

    ranks = current()
    if ranks.main:
        from . import runlog

        run = RunDir(args.out)
        run.open(cfg, fingerprint(data), fresh=args.fresh)
        runlog.start_session(args, run.path, cfg.to_dict())  # run.log, --logger, the start time
        run.observe(args.row_feed)
    barrier(ranks)
    return run if ranks.main else RunDir(args.out, create=False)
