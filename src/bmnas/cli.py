"""Command line: ``bmnas search | train | run | pretrain | export | show``.

Every command takes its data from ``--dataset NAME`` (a registered dataset, prepared and cached on
first use) or ``--data DIR`` (the generic format, SPEC §10), a YAML ``--config`` and dotted
``--set key=value`` overrides. Runs write into ``--out RUN_DIR`` and resume from it when killed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from .config import Config, ConfigError, preset
from .data import DataError, FeatureData, load_generic_dir
from .genotype import Genotype, GenotypeError
from .runs import RunDir, RunError

DEFAULT_CACHE = Path(os.environ.get("BMNAS_CACHE", Path.home() / ".cache" / "bmnas"))


def _common(p: argparse.ArgumentParser, out: bool = True) -> None:
    src = p.add_argument_group("data (one of)")
    src.add_argument("--dataset", help="registered dataset name, e.g. avmnist (prepared on first use)")
    src.add_argument("--data", metavar="DIR", help="directory with train/val/test.npz (generic format)")
    src.add_argument("--dataset-option", metavar="KEY=VALUE", action="append", default=[],
                     dest="dataset_options",
                     help="option for the dataset builder, e.g. path=multimodal_imdb.hdf5 (repeatable)")
    src.add_argument("--backbone-option", metavar="KEY=VALUE", action="append", default=[],
                     dest="backbone_options", help="option for the dataset's backbones (repeatable)")
    p.add_argument("--config", metavar="YAML", help="configuration file (see configs/)")
    p.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override a config value, e.g. --set search.epochs=3 (repeatable)",
    )
    p.add_argument(
        "--cache",
        metavar="DIR",
        default=str(DEFAULT_CACHE),
        help="where datasets, backbones and feature caches live (env BMNAS_CACHE)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if out:
        p.add_argument("--out", metavar="RUN_DIR", required=True, help="run directory (resumed if it exists)")
        p.add_argument("--fresh", action="store_true", help="discard checkpoints in RUN_DIR and start over")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bmnas", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("search", help="search a fusion architecture; writes genotype.json")
    _common(p)
    p = sub.add_parser("train", help="evaluation stage: train a genotype on train+val, test it")
    _common(p)
    p.add_argument("--genotype", metavar="JSON", help="genotype to train (default: RUN_DIR/genotype.json)")
    p = sub.add_parser("run", help="search, then train the found network and the baselines; print a table")
    _common(p)
    p.add_argument("--no-baselines", action="store_true", help="skip the unimodal and late-fusion baselines")
    p = sub.add_parser("pretrain", help="prepare a dataset and pre-train (or load) its backbones")
    _common(p, out=False)
    p = sub.add_parser("export", help="write a dataset's pooled features in the generic --data format")
    _common(p, out=False)
    p.add_argument("--out", metavar="DIR", required=True)
    p = sub.add_parser("ablate", help="baselines and ablations (paper Tables 5-7): a table over seeds")
    _common(p)
    from .ablate import add_arguments

    add_arguments(p)
    p = sub.add_parser("show", help="print a run's genotype and metrics")
    p.add_argument("run_dir")
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    base = preset(args.dataset) if args.dataset else {}
    cfg = Config.from_sources(args.config, args.overrides, base=base)
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
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def load_data(cfg: Config, cache: str | Path, progress: bool = True, dataset_options: dict | None = None,
              backbone_options: dict | None = None) -> FeatureData:
    """Features for ``cfg.data``: the generic directory, or a registered dataset through the pipeline."""
    d = cfg.data
    if d.dir:
        data = load_generic_dir(d.dir, cfg.model.L, d.pooling, d.task, d.num_outputs)
    else:
        from .pipeline import dataset_features

        data = dataset_features(
            d.dataset,
            root=Path(cache),
            length=cfg.model.L,
            pooling=d.pooling,
            seed=cfg.seed,
            progress=progress,
        )
        if d.task or d.num_outputs:
            from .data import infer_task

            task = infer_task({s: sp.labels for s, sp in data.splits.items()}, d.task, d.num_outputs)
            data = FeatureData(data.splits, task, data.name, data.info)
    return data.select(list(d.features)) if d.features else data


def _options(args: argparse.Namespace) -> tuple[dict, dict]:
    return (parse_options(args.dataset_options, "--dataset-option"),
            parse_options(args.backbone_options, "--backbone-option"))


def _open_run(args: argparse.Namespace, cfg: Config) -> RunDir:
    run = RunDir(args.out)
    if args.fresh:
        run.clear()
    run.write_config(cfg)
    return run


def cmd_search(args: argparse.Namespace, cfg: Config, data: FeatureData, run: RunDir):
    from .plot import plot_history
    from .search import search

    result = search(data, cfg, run, progress=not args.quiet)
    plot_history(result.history, run.plots_path)
    print(
        f"best genotype (epoch {result.best_epoch}, val {result.metric} {result.best_score:.4f}) "
        f"-> {run.genotype_path}"
    )
    print(result.genotype.describe())
    return result


def _train(
    genotype: Genotype, data: FeatureData, cfg: Config, run: RunDir, quiet: bool, stage: str, desc: str
) -> dict:
    from .train import train_found

    r = train_found(genotype, data, cfg, run, progress=not quiet, stage=stage, desc=desc)
    return {"test": r.test, "params": r.params, "train_seconds": r.seconds}


def format_table(rows: list[tuple[str, dict]], metric: str) -> str:
    """A plain-text table of methods with their test metric, parameters and seconds."""
    lines = [f"{'method':<22} {'test ' + metric:>16} {'params':>10} {'search s':>9} {'train s':>8}", "-" * 69]
    for name, r in rows:
        lines.append(
            f"{name:<22} {r['test'][metric]:>16.4f} {r['params']['total']:>10,} "
            f"{r.get('search_seconds', 0.0):>9.1f} {r['train_seconds']:>8.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ConfigError, DataError, GenotypeError, RunError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"bmnas: error: {msg}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "show":
        run = RunDir(args.run_dir)
        print(Genotype.load(run.genotype_path).describe())
        if run.metrics_path.exists():
            print(run.metrics_path.read_text())
        return 0
    cfg = resolve_config(args)
    progress = not args.quiet
    if args.command == "pretrain":
        data = load_data(cfg, args.cache, progress, *_options(args))
        print(
            f"{data.name}: features {dict(data.feature_channels)}; info {json.dumps(data.info, default=str)}"
        )
        return 0
    if args.command == "export":
        from .data import export_generic_dir

        data = load_data(cfg, args.cache, progress, *_options(args))
        print(f"wrote {export_generic_dir(data, args.out)}")
        return 0
    t0 = time.perf_counter()
    data = load_data(cfg, args.cache, progress, *_options(args))
    data_seconds = time.perf_counter() - t0
    run = _open_run(args, cfg)
    if args.command == "ablate":
        from .ablate import cli as ablate_cli

        return ablate_cli(args, cfg, data, run)
    if args.command == "search":
        cmd_search(args, cfg, data, run)
        return 0
    if args.command == "train":
        genotype = Genotype.load(args.genotype or run.genotype_path)
        result = _train(genotype, data, cfg, run, args.quiet, "train", "train found net")
        run.write_json("metrics.json", {**result, "genotype": genotype.to_dict()})
        print(f"test: {json.dumps(result['test'])}")
        return 0
    # run: search, train, baselines, table
    found = cmd_search(args, cfg, data, run)
    result = _train(found.genotype, data, cfg, run, args.quiet, "train", "train found net")
    metrics = {
        **result,
        "search_seconds": found.seconds,
        "data_seconds": data_seconds,
        "best_epoch": found.best_epoch,
        "val_" + found.metric: found.best_score,
        "genotype": found.genotype.to_dict(),
        "data": {
            "name": data.name,
            "sizes": {s: len(sp) for s, sp in data.splits.items()},
            "task": data.task.__dict__,
            "info": data.info,
        },
    }
    rows = [("searched (bm-nas)", metrics)]
    if not args.no_baselines:
        from .baselines import late_fusion, modalities, unimodal

        specs = found.genotype.features
        baselines = {f"unimodal:{m}": unimodal(specs, m, cfg.model.C, cfg.model.L) for m in modalities(specs)}
        baselines["late_fusion"] = late_fusion(specs, cfg.model.C, cfg.model.L)
        metrics["baselines"] = {}
        for name, g in baselines.items():
            stage = "baseline_" + name.replace(":", "_")
            metrics["baselines"][name] = _train(g, data, cfg, run, args.quiet, stage, f"train {name}")
        rows = list(metrics["baselines"].items()) + rows
    run.write_json("metrics.json", metrics)
    from .metrics import primary_metric

    print()
    print(format_table(rows, primary_metric(data.task)))
    print(f"\nrun directory: {run.path} (genotype.json, metrics.json, history.jsonl, plots/)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
