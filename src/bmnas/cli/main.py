"""The ``bmnas`` command line: ``run | search | train | ablate | sweep | pretrain | export | show``;
using a trained run: ``predict | export-model | robustness``.

Every command takes its data from ``--dataset NAME`` (a registered dataset, prepared and cached on
first use) or ``--data DIR`` (the generic format, SPEC §10), a YAML ``--config`` and dotted
``--set key=value`` overrides. Runs write into ``--out RUN_DIR`` and resume from it when killed.
Commands print their results (tables, paths) to stdout; where log records go is decided once, in
:func:`main`: the library only logs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ..core import locks
from ..core.config import Config, ConfigError, _parse_value, _short, preset
from ..core.data import FeatureData
from ..core.errors import BmnasError
from ..core.fileio import read_json
from ..core.genotype import Genotype, check_data
from ..engine.rundir import RunDir
from ..features.pipeline import default_root, load_data
from ..features.validate import check_searchable, fingerprint
from ..space.ops import get_op, list_ops

DEFAULT_CACHE = default_root()

log = logging.getLogger(__name__)


def _output_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """``--quiet`` and ``--verbose``: before the command (global) or after it (``suppress``: the
    subcommand then leaves the global value alone unless given)."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    p.add_argument(
        "--quiet", action="store_true", help="warnings only: no progress bars, no info lines", **default
    )
    p.add_argument(
        "--verbose", action="store_true", help="debug lines too (configuration, threads)", **default
    )


DESCRIPTION = """\
Find how to fuse your modalities (BM-NAS, bilevel multimodal neural architecture search):
search a fusion network over the features of pre-trained backbones, train it, compare it with
baselines, and use the trained network.

Commands that read data take --dataset NAME (a registered dataset such as avmnist, prepared and
cached on first use) or --data DIR (train/val/test.npz in the generic format), a --config file
and --set KEY=VALUE overrides. A run writes into --out RUN_DIR; rerunning the same command after
a kill resumes it."""

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
}


def _epilog(command: str | None) -> str:
    """``Examples:`` and one command line each, with an optional comment."""
    rows = EXAMPLES[command]
    width = max(len(line) for line, _ in rows)
    if width + max(len(note) for _, note in rows) > 90:  # too wide to align the comments
        width = 0
    lines = [f"  {line:<{width}}  # {note}" if note else f"  {line}" for line, note in rows]
    return "Examples:\n" + "\n".join(lines)


def _command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand: ``summary`` in the command list and atop its help, examples at the end."""
    return sub.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=_epilog(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _cache_option(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--cache", metavar="DIR", default=str(DEFAULT_CACHE), help=f"{help} (env BMNAS_CACHE)")


def _key_values(group, flag: str, dest: str, help: str) -> None:
    """A repeatable ``FLAG KEY=VALUE`` option; the values collect in a list."""
    group.add_argument(flag, metavar="KEY=VALUE", action="append", default=[], dest=dest, help=help)


def _common(p: argparse.ArgumentParser, out: bool = True) -> None:
    src = p.add_argument_group("data (one of)")
    src.add_argument("--dataset", help="registered dataset name, e.g. avmnist (prepared on first use)")
    src.add_argument("--data", metavar="DIR", help="directory with train/val/test.npz (generic format)")
    _key_values(
        src,
        "--dataset-option",
        "dataset_options",
        "option for the dataset builder, e.g. path=multimodal_imdb.hdf5 (repeatable)",
    )
    _key_values(
        src, "--backbone-option", "backbone_options", "option for the dataset's backbones (repeatable)"
    )
    p.add_argument(
        "--config",
        metavar="YAML",
        help="YAML file with the keys --set takes, as sections (search: {epochs: 3}), e.g. a run's "
        "RUN_DIR/config.yaml or a sweep's best_config.yaml; applied after the dataset's preset, before "
        "--set (README, 'Using it')",
    )
    _key_values(p, "--set", "overrides", "override a config value, e.g. --set search.epochs=3 (repeatable)")
    _cache_option(p, "where datasets, backbones and feature caches live")
    _output_options(p, suppress=True)
    p.add_argument(
        "--device",
        metavar="DEVICE",
        help="auto (default: a GPU if present), cpu, cuda or cuda:N; same as --set device=...",
    )
    if out:
        p.add_argument("--out", metavar="RUN_DIR", required=True, help="run directory (resumed if it exists)")
        p.add_argument("--fresh", action="store_true", help="discard all a run wrote in RUN_DIR; start over")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bmnas",
        description=DESCRIPTION,
        epilog=_epilog(None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an internal error (env BMNAS_DEBUG=1)"
    )
    _output_options(parser, suppress=False)
    from .._version import __version__

    parser.add_argument("--version", action="version", version=f"bmnas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    p = _command(sub, "run", "search, then train the found network and the baselines; print a table")
    _common(p)
    p.add_argument("--no-baselines", action="store_true", help="skip the unimodal and late-fusion baselines")
    p = _command(sub, "search", "search a fusion architecture; writes RUN_DIR/genotype.json")
    _common(p)
    p = _command(sub, "train", "evaluation stage: train a genotype on train+val, test it")
    _common(p)
    p.add_argument("--genotype", metavar="JSON", help="genotype to train (default: RUN_DIR/genotype.json)")
    p = _command(sub, "ablate", "baselines and ablations (paper Tables 5-7): a table over seeds")
    _common(p)
    from ..studies.ablate import add_arguments

    add_arguments(p)
    p = _command(sub, "sweep", "Optuna study over the search config (N, M, C, L, lrs); several workers")
    _common(p, out=False)
    p.add_argument("--out", metavar="DIR", required=True, help="sweep directory (shared by workers; resumed)")
    p.add_argument("--trials", type=int, default=20, help="complete trials the study should hold (20)")
    p.add_argument("--storage", metavar="URL", help="Optuna database URL (default sqlite:///OUT/study.db)")
    p.add_argument("--study", default="bmnas", help="study name in the storage (default bmnas)")
    p.add_argument("--space", metavar="YAML", help="search space (default: bmnas.studies.sweep.SPACE)")
    p = _command(sub, "pretrain", "prepare a dataset and pre-train (or load) its backbones")
    _common(p, out=False)
    p = _command(sub, "export", "write a dataset's pooled features in the generic --data format")
    _common(p, out=False)
    p.add_argument("--out", metavar="DIR", required=True)
    p = _command(sub, "show", "print a run's genotype and metrics")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out of bmnas run, search or train")
    _output_options(p, suppress=True)
    _use_parsers(sub)
    return parser


def _use_parsers(sub) -> None:
    """``predict``, ``export-model``, ``robustness``: use a run's trained network."""

    def run_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dir", metavar="RUN_DIR")
        p.add_argument(
            "--stage",
            default="train",
            help="which trained network: train (the found one, default), recommended (the one "
            "`bmnas run` recommends) or a baseline's checkpoint name, e.g. baseline_late_fusion",
        )
        _cache_option(p, "cache root, for a run on a registered dataset")
        _output_options(p, suppress=True)

    p = _command(sub, "predict", "predict with a run's trained network; per-sample CSV/JSONL + metrics")
    run_args(p)
    p.add_argument(
        "--data",
        metavar="DIR|FILE.npz",
        help="generic-format directory (its --split) or one .npz (default: the run's own data)",
    )
    p.add_argument(
        "--raw",
        metavar="FILE.npz",
        help="raw inputs, one array per modality (e.g. image, audio), run through the run's backbones "
        "(runs on a registered dataset)",
    )
    p.add_argument("--split", default="test", help="split of --data DIR or of the run's data (default test)")
    p.add_argument("--out", metavar="FILE.csv|FILE.jsonl", required=True)
    p.add_argument("--batch-size", type=int, default=1024)
    p = _command(sub, "export-model", "export a run's trained network (TorchScript or ONNX)")
    run_args(p)
    p.add_argument("--format", choices=["torchscript", "onnx"], help="default: from --out's suffix")
    p.add_argument("--out", metavar="FILE", required=True)
    p.add_argument(
        "--features-in",
        action="store_true",
        help="export from pooled features even when the run's backbones could be included",
    )
    p = _command(sub, "robustness", "test metrics with each modality missing and under noise")
    run_args(p)
    p.add_argument(
        "--out", metavar="DIR", help="where to write robustness.{md,csv,json,png} (default RUN_DIR)"
    )
    p.add_argument("--data", metavar="DIR", help="generic-format directory (default: the run's own data)")
    p.add_argument(
        "--noise",
        type=float,
        nargs="+",
        default=[0.1, 0.5, 1.0],
        help="noise levels σ, relative to each feature's train std",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the noise draw")


def resolve_config(args: argparse.Namespace) -> Config:
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


def _options(args: argparse.Namespace) -> tuple[dict, dict]:
    return (
        parse_options(args.dataset_options, "--dataset-option"),
        parse_options(args.backbone_options, "--backbone-option"),
    )


def _open_run(args: argparse.Namespace, cfg: Config, data: FeatureData) -> RunDir:
    """Lock ``--out`` and check that it holds this run (or none) before anything is written.

    Under ``torchrun`` rank 0 opens (and locks) the directory; the other ranks only read from it.
    """
    from ..engine.distributed import barrier, current

    ranks = current()
    if ranks.main:
        run = RunDir(args.out)
        run.open(cfg, fingerprint(data), fresh=args.fresh)
    barrier(ranks)
    return run if ranks.main else RunDir(args.out, create=False)


def _setup_processes(args: argparse.Namespace, cfg: Config) -> None:
    """Join ``torchrun``'s process group (one search over several processes), before any data is read."""
    from ..engine.device import resolve_device
    from ..engine.distributed import current, init_from_env, launched

    if not launched() or current().active:
        return
    if args.command not in ("search", "train"):
        raise ConfigError(
            f"bmnas {args.command} runs in one process; under torchrun use `bmnas search` or `bmnas train`"
        )
    init_from_env(resolve_device(cfg.device))
    args.owns_process_group = True  # left in main's cleanup


def _set_threads(cfg: Config, data: FeatureData) -> int:
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


def cmd_search(args: argparse.Namespace, cfg: Config, data: FeatureData, run: RunDir):
    from ..engine.distributed import current
    from ..method.search import search

    result = search(data, cfg, run, progress=not args.quiet)
    if current().main:
        _show_search(result, run)
    return result


def cmd_sweep(args: argparse.Namespace, cfg: Config, data: FeatureData) -> int:
    """``bmnas sweep``: the sweep directory is shared by its workers, so each trial's run is locked
    (in :func:`bmnas.studies.sweep.sweep`), not ``--out`` itself."""
    import dataclasses

    from ..studies.sweep import SPACE, format_rows, import_optuna, load_space, sweep

    if args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    import_optuna().logging.set_verbosity(logging.WARNING)  # bmnas logs one line per trial
    loaded = {cfg.model.L: data}

    def load(L: int) -> FeatureData:
        if L not in loaded:
            c = cfg.replace(model=dataclasses.replace(cfg.model, L=L))
            loaded[L] = load_data(c, args.cache, not args.quiet, *_options(args))
        return loaded[L]

    space = load_space(args.space) if args.space else SPACE
    r = sweep(load, cfg, args.out, args.trials, args.storage, args.study, space, progress=not args.quiet)
    print()
    print(format_rows(r.rows, r.space, r.best_number))
    print(f"\nbest: trial {r.best_number}, val {r.best_value:.4f}")
    print(r.genotype.describe())
    print(f"written: {', '.join(str(p) for p in r.paths.values())}")
    return 0


def _show_search(result, run: RunDir) -> None:
    from ..report.plots import plot_history

    plot_history(result.history, run.plots_path)
    hypernet = f"hypernet's best epoch {result.best_epoch}: val {result.metric} {result.best_score:.4f}"
    chosen = next((c for c in result.candidates if c["genotype"] == result.genotype.to_dict()), None)
    if chosen is None:
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


def _train(
    genotype: Genotype, data: FeatureData, cfg: Config, run: RunDir, quiet: bool, stage: str, desc: str
) -> dict:
    from ..engine.distributed import current
    from ..method.train import train

    r = train(genotype, data, cfg, run, progress=not quiet, stage=stage, desc=desc)
    if stage == "train" and current().main:
        from ..serve.predict import save_model

        save_model(run.path, r.model, data, cfg.to_dict())
    return r.row()


class _StderrHandler(logging.Handler):
    """Writes records to the ``sys.stderr`` of the moment (tests and callers swap it), above any
    progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


class _LogFormat(logging.Formatter):
    """``bmnas: message``, ``bmnas: warning: message``; debug lines and other libraries' records
    name their logger."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        kind = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        ours = record.name.split(".")[0] == "bmnas"
        source = f"{record.name}: " if record.levelno < logging.INFO or not ours else ""
        return f"bmnas: {kind}{source}{text}"


@contextlib.contextmanager
def _log_to_stderr(level: int) -> Iterator[None]:
    """While a command runs: bmnas' records from ``level`` up, and other libraries' warnings, on stderr.

    The library itself only logs (``logging.getLogger(__name__)``); this is the one place that says
    where records go. The handler and level are removed again, so ``main`` can be called from Python.
    """
    handler = _StderrHandler()
    handler.setFormatter(_LogFormat())
    root, ours = logging.getLogger(), logging.getLogger("bmnas")
    saved = ours.level
    root.addHandler(handler)
    ours.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        ours.setLevel(saved)


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input is one ``bmnas: error:`` line and exit code 2, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:
        parser.error("--quiet and --verbose exclude each other")
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    with _log_to_stderr(level):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """The command, its errors turned into one line each and an exit code."""
    debug = args.debug or os.environ.get("BMNAS_DEBUG", "") not in ("", "0")
    try:
        return _dispatch(args)
    except BmnasError as err:
        print(f"bmnas: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args), file=sys.stderr)
        return 130
    except OSError as err:  # disk full, permissions: the environment, not the input or a bug
        if debug:
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"bmnas: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except Exception as err:
        if debug:
            raise
        print(f"bmnas: internal error: {_describe(err)}", file=sys.stderr)
        print(
            "bmnas: this is a bug in bmnas; please report it with the command you ran "
            "(rerun with --debug to see the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        locks.release_all()
        if getattr(args, "owns_process_group", False):
            import torch.distributed as dist

            dist.destroy_process_group()


def _interrupted(args: argparse.Namespace) -> str:
    """The one line for Ctrl-C: what is kept, and how to go on from there."""
    again = "rerun the same command" + (" without --fresh" if getattr(args, "fresh", False) else "")
    if args.command in ("run", "search", "train", "ablate"):  # checkpointed every epoch
        return f"bmnas: interrupted; finished epochs and stages are saved in {args.out}: {again} to resume"
    if args.command == "sweep":
        return f"bmnas: interrupted; finished trials are saved in {args.out}: {again} to resume"
    if args.command in ("pretrain", "export"):
        return f"bmnas: interrupted; prepared data and backbones are kept in {args.cache}: {again} to resume"
    return f"bmnas: interrupted before bmnas {args.command} finished: rerun the same command to start again"


def _describe(err: BaseException) -> str:
    """``Type: message (at file.py:line)`` of the innermost frame."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    at = f" (at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno})" if tb else ""
    return f"{type(err).__name__}: {str(err)[:300]}{at}"


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("predict", "export-model", "robustness"):
        from importlib import import_module

        module = {"predict": "predict", "export-model": "export", "robustness": "robustness"}[args.command]
        return import_module(f"bmnas.serve.{module}").cli(args)
    if args.command == "show":
        run = RunDir(args.run_dir, create=False)
        print(Genotype.load(run.genotype_path).describe())
        if run.metrics_path.exists():
            from ..report.summary import format_table, report_from_metrics

            print()
            print(format_table(report_from_metrics(read_json(run.metrics_path))))
            print(f"\nall figures: {run.metrics_path}")
        return 0
    cfg = resolve_config(args)
    log.debug("configuration:\n%s", cfg.to_yaml().rstrip())
    _setup_processes(args, cfg)
    progress = not args.quiet
    if args.command == "pretrain":
        data = load_data(cfg, args.cache, progress, *_options(args))
        print(
            f"{data.name}: features {dict(data.feature_channels)}; info {json.dumps(data.info, default=str)}"
        )
        return 0
    if args.command == "export":
        from ..features.generic import export_generic_dir

        data = load_data(cfg, args.cache, progress, *_options(args))
        print(f"wrote {export_generic_dir(data, args.out)}")
        return 0
    t0 = time.perf_counter()
    data = load_data(cfg, args.cache, progress, *_options(args))
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
    _set_threads(cfg, data)
    if args.command in ("search", "run", "ablate", "sweep"):
        check_searchable(data)
        from ..method.run import fit_config_to_data

        cfg = fit_config_to_data(cfg, data)
    if args.command == "train":  # checked before the run directory is touched
        genotype_path = Path(args.genotype or Path(args.out) / "genotype.json")
        genotype = Genotype.load(genotype_path)
        arity = {name: get_op(name).arity for name in list_ops()}
        check_data(genotype, data.feature_channels, data.feature_lengths, str(genotype_path), arity)
    if args.command == "sweep":
        return cmd_sweep(args, cfg, data)
    run = _open_run(args, cfg, data)
    if args.command == "ablate":
        from ..studies.ablate import cli as ablate_cli

        return ablate_cli(args, cfg, data, run)
    if args.command == "search":
        cmd_search(args, cfg, data, run)
        return 0
    if args.command == "train":
        from ..engine.distributed import current

        result = _train(genotype, data, cfg, run, args.quiet, "train", "train found net")
        if current().main:
            run.write_json("metrics.json", {**result, "genotype": genotype.to_dict()})
            print(f"test: {json.dumps(result['test'])}")
        return 0
    # run: search, train, baselines, table, recommendation
    from ..method.run import run as run_workflow
    from ..report.summary import format_table

    report = run_workflow(
        data,
        cfg,
        run,
        baselines=not args.no_baselines,
        progress=progress,
        on_search=lambda found: _show_search(found, run),
        data_seconds=data_seconds,
    )
    print()
    print(format_table(report))
    print(f"\nrun directory: {run.path} (metrics.json, genotype.json, recommended_genotype.json, plots/)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
