"""What the commands share: their options, their examples, and the prelude config → data → run directory.

A command module registers its parsers with :func:`command` (summary atop the help, the
:data:`EXAMPLES` of the command at its end) and the option groups here; its function then calls
the prelude in the same order for every command:

1. :func:`config_of`: dataset preset → ``--config`` → ``--set``/``--device`` → ``--dataset``/``--data``
   (joins ``torchrun``'s process group for the commands that run over several processes);
2. :func:`read_data` (the features, prepared and cached on first use) or :func:`prepare`, which
   also logs the data line, tunes malloc and, for commands that search, checks the data and fits
   the config to it (the library functions the command calls set the threads);
3. :func:`open_run`: locks ``--out`` and checks that it holds this run before anything is written.

Importing this module loads no torch (``bmnas --help`` stays fast): the prelude imports its work
when it runs.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
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
        ("bmnas run --table photos.csv --label label --out runs/p", "a CSV of image paths, texts, labels"),
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
    src.add_argument(
        "--data",
        metavar="DIR",
        help="directory with train/val/test.npz or train/ val/ test/ of .npy (generic format)",
    )
    src.add_argument(
        "--table", metavar="FILE", help="CSV or Parquet table, one row per sample (README, 'Your own data')"
    )
    src.add_argument("--label", metavar="COL", help="the table's label column (integers or class names)")
    src.add_argument(
        "--label-sep", metavar="SEP", help='multilabel: the label column holds SEP-separated labels, e.g. "|"'
    )
    src.add_argument(
        "--modality",
        metavar="NAME=COLS",
        action="append",
        default=[],
        dest="modalities",
        help="table columns of one modality: NAME=col1,col2 or NAME=prefix* (repeatable; default: every "
        "column, numeric ones as one vector, image paths through EfficientNet-Lite0, text through MiniLM)",
    )
    src.add_argument(
        "--backbone",
        metavar="MODALITY=SPEC",
        action="append",
        default=[],
        dest="backbones",
        help="a table modality's backbone (MODALITY: a modality name or a kind, image or text): default, "
        "efficientnet-lite0, minilm-l6 or hf:<hub name or local directory> (pip install 'bmnas[hf]'), e.g. "
        "--backbone image=hf:google/vit-base-patch16-224 (repeatable; config data.backbones)",
    )
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
        default="recommended",
        help="which trained network: recommended (default: the one `bmnas run` recommends, see "
        "metrics.json; the found one for runs without a recommendation), train (the found one), "
        "linear_probe, or a baseline: baseline_late_fusion or its table name late_fusion",
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
    table = getattr(args, "table", None)
    given = [
        flag for flag, v in (("--dataset", args.dataset), ("--data", args.data), ("--table", table)) if v
    ]
    if len(given) > 1:
        raise ConfigError(f"give one of --dataset, --data and --table, not {' and '.join(given)}")
    if given:
        cfg = cfg.replace(
            data=type(cfg.data)(
                **{**cfg.data.__dict__, "dataset": args.dataset, "dir": args.data, "table": table}
            )
        )
    table_flags = {
        "label": getattr(args, "label", None),
        "label_sep": getattr(args, "label_sep", None),
        "modalities": tuple(getattr(args, "modalities", ()) or ()),
    }
    backbones = parse_backbones(getattr(args, "backbones", ()) or ())
    if backbones:
        if not cfg.data.table:
            raise ConfigError(
                "--backbone picks a --table's backbones; pass --table FILE (--dataset NAME and --data DIR "
                "bring their own)"
            )
        table_flags["backbones"] = {**cfg.data.backbones, **backbones}
    table_flags = {k: v for k, v in table_flags.items() if v}
    if table_flags:
        if not cfg.data.table:
            raise ConfigError("--label, --label-sep and --modality describe a --table; pass --table FILE")
        cfg = cfg.replace(data=type(cfg.data)(**{**cfg.data.__dict__, **table_flags}))
    if cfg.data.table and not cfg.data.label:
        raise ConfigError(f"--table {cfg.data.table}: name its label column with --label COL")
    if not cfg.data.dataset and not cfg.data.dir and not cfg.data.table:
        raise ConfigError(
            "no data: pass --dataset NAME (e.g. avmnist), --data DIR (generic format) or "
            "--table FILE --label COL"
        )
    return cfg


def parse_backbones(items: Sequence[str]) -> dict[str, str]:
    """``--backbone`` items ``["image=hf:google/vit-base-patch16-224", ...]`` -> ``{"image": "hf:…"}``."""
    out = {}
    for item in items:
        key, sep, spec = item.partition("=")
        if not sep or not key.strip() or not spec.strip():
            raise ConfigError(
                f"--backbone {item!r} must look like MODALITY=SPEC, e.g. image=hf:google/vit-base-patch16-224"
            )
        out[key.strip()] = spec.strip()
    return out


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
    :func:`read_data` (timed and logged), malloc's settings; a command that ``searches`` checks
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
    tune_memory()
    if searches:
        from ..features.validate import check_searchable
        from ..method.run import fit_config_to_data

        check_searchable(data)
        cfg = fit_config_to_data(cfg, data)
    return cfg, data, data_seconds


def tune_memory() -> None:
    """Process-wide malloc settings of a command that trains (:func:`bmnas.engine.device.keep_freed_memory`);
    its threads are set by the library entries it calls (:func:`bmnas.engine.device.uses_threads`)."""
    from ..engine.device import keep_freed_memory

    keep_freed_memory()  # activations reuse freed memory: no page faults every iteration


def open_run(args: argparse.Namespace, cfg: Config, data: FeatureData) -> RunDir:
    """Lock ``--out`` and check that it holds this run (or none) before anything is written.

    The library's :func:`bmnas.method.record.open_run` (what ``bmnas.run(data, cfg, "RUN_DIR")`` does
    too) with ``--out`` and ``--fresh``.
    """
    from ..engine.distributed import current
    from ..method.record import open_run as open_run_dir

    run = open_run_dir(args.out, cfg, data, fresh=args.fresh)
    if current().main:
        from . import runlog

        runlog.start_session(args, run.path, cfg.to_dict())  # run.log, --logger, the start time
        run.observe(args.row_feed)
    return run
