"""``bmnas show | predict | export-model | robustness``: read or use a finished run's trained network."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import MAX_NOISE, command, noise_level, output_options, positive_int, trained_run_options


def register(sub) -> None:
    p = command(sub, "show", "print a run's genotype and metrics")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out of bmnas run, search or train")
    output_options(p, suppress=True)
    p.set_defaults(func=show_command)

    p = command(sub, "predict", "predict with a run's trained network; per-sample CSV/JSONL + metrics")
    trained_run_options(p)
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
    p.add_argument(
        "--table",
        metavar="FILE.csv|FILE.parquet",
        help="new rows of a table run's table: the same columns (the label column optional), run through "
        "the run's backbones",
    )
    p.add_argument("--split", default="test", help="split of --data DIR or of the run's data (default test)")
    p.add_argument("--out", metavar="FILE.csv|FILE.jsonl", required=True)
    p.add_argument(
        "--batch-size", type=positive_int, default=1024, help="samples per forward pass (default 1024)"
    )
    p.set_defaults(func=predict_command)

    p = command(sub, "export-model", "export a run's trained network (TorchScript or ONNX)")
    trained_run_options(p)
    p.add_argument(
        "--format",
        choices=["torchscript", "onnx"],
        help="default: from --out's suffix (.pt, .pth, .ts: torchscript; .onnx: onnx), which it must match",
    )
    p.add_argument("--out", metavar="FILE", required=True)
    p.add_argument(
        "--features-in",
        action="store_true",
        help="export from pooled features even when the run's backbones could be included",
    )
    p.add_argument(
        "--pooling-in-graph",
        action="store_true",
        help="--data runs: the graph takes the raw per-layer maps (the shapes of the run's data) and pools "
        "them itself (table and registered-dataset runs take their backbones' inputs already)",
    )
    p.set_defaults(func=export_model_command)

    p = command(sub, "robustness", "test metrics with each modality missing and under noise")
    trained_run_options(p)
    p.add_argument(
        "--out", metavar="DIR", help="where to write robustness.{md,csv,json,png} (default RUN_DIR)"
    )
    p.add_argument("--data", metavar="DIR", help="generic-format directory (default: the run's own data)")
    p.add_argument(
        "--noise",
        type=noise_level,
        nargs="+",
        default=[0.1, 0.5, 1.0],
        help=f"noise levels σ in (0, {MAX_NOISE:g}], relative to each feature's train std",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the noise draw")
    p.set_defaults(func=robustness_command)


def show_command(args: argparse.Namespace) -> int:
    """The genotype and, once trained, the results table of a run directory: of ``bmnas run`` or
    ``search`` (``genotype.json``), or of ``bmnas train --genotype G`` (the genotype it trained is in
    ``metrics.json``)."""
    from ..core.genotype import Genotype
    from ..engine.rundir import RunDir
    from ..report.summary import format_table, read_metrics, report_from_metrics

    run = RunDir(args.run_dir, create=False)
    metrics = read_metrics(run.metrics_path)  # checked by its schema
    trained = metrics.get("genotype") if isinstance(metrics, dict) else None
    if run.genotype_path.exists() or not trained:
        genotype = Genotype.load(run.genotype_path)
    else:  # a `bmnas train --genotype G` run: the genotype it trained is in metrics.json
        genotype = Genotype.from_dict(trained, where=f"{run.metrics_path}: genotype")
    print(genotype.describe())
    if metrics is not None:
        print()
        print(format_table(report_from_metrics(metrics)))
        names = ((metrics.get("data") or {}).get("info") or {}).get("class_names") or []
        if names:
            shown = ", ".join(map(str, names[:20])) + (
                f" and {len(names) - 20} more" if len(names) > 20 else ""
            )
            print(f"\nclasses ({len(names)}): {shown}")
        print(f"\nall figures: {run.metrics_path}")
    return 0


def predict_command(args: argparse.Namespace) -> int:
    """``bmnas predict RUN [--data DIR|FILE.npz | --raw FILE.npz | --table FILE] [--split S] --out FILE``."""
    from ..core.fileio import remove_stale_temps
    from ..serve.predict import load, output_kind, predict_input, write_predictions

    out = Path(args.out)
    output_kind(out)  # a wrong suffix is refused before the model is loaded
    for file in (out, out.with_name(out.stem + ".metrics.json")):  # what write_predictions writes
        remove_stale_temps(file)
    model = load(args.run_dir, args.stage)
    preds, labels, name = predict_input(
        model,
        args.cache,
        args.data,
        args.raw,
        args.split,
        args.batch_size,
        progress=not args.quiet,
        table=args.table,
    )
    metrics = write_predictions(preds, args.out, labels)
    print(f"{len(preds)} predictions of {name} by {describe(model)} -> {Path(args.out)}")
    if metrics is not None:
        print(f"metrics: {json.dumps(metrics)}")
    return 0


def export_model_command(args: argparse.Namespace) -> int:
    """``bmnas export-model RUN [--format F] --out FILE [--features-in | --pooling-in-graph]``."""
    from ..core.errors import DataError
    from ..core.fileio import remove_stale_temps
    from ..serve.export import export_run, format_for

    if args.features_in and args.pooling_in_graph:
        raise DataError(
            "give --features-in (pooled features in) or --pooling-in-graph (raw maps in), not both"
        )
    format_for(args.out, args.format)  # an unknown suffix is refused before the model is loaded
    remove_stale_temps(args.out)
    meta = export_run(
        args.run_dir,
        args.out,
        args.format,
        args.stage,
        args.cache,
        features_in=args.features_in,
        progress=not args.quiet,
        pooling_in_graph=args.pooling_in_graph,
    )
    words = {"raw": "backbone input", "map": "raw map, pooled in the graph", "pooled": "pooled feature"}
    ins = ", ".join(
        f"{i['name']} ({', '.join(map(str, i['shape']))}) ({words[i['kind']]})" for i in meta["inputs"]
    )
    net = f"{meta['method']} (--stage {meta['stage']})"
    print(f"wrote {format_for(args.out, args.format)} model {args.out} of {net}; inputs: {ins}")
    for i in meta["inputs"]:
        if i.get("note"):
            print(f"  {i['name']}: {i['note']}")
    return 0


def describe(model) -> str:
    """``late_fusion (--stage baseline_late_fusion)``: which of a run's networks ``model`` is."""
    return f"{model.method} (--stage {model.stage})"


def robustness_command(args: argparse.Namespace) -> int:
    """``bmnas robustness RUN [--data DIR] [--out DIR] [--noise σ …]``: table (md, csv, json), plot."""
    from ..serve.robustness import robustness_report

    report = robustness_report(
        args.run_dir, args.cache, args.out, args.data, args.noise, args.seed, progress=not args.quiet
    )
    print(report.table)
    if report.chance is not None:
        probe = (
            f"; linear probe on the clean test split: {report.probe:.4f}" if report.probe is not None else ""
        )
        print(f"{report.chance[1]}: {report.chance[0]:.4f}{probe}")
    print(f"\nrecommended network: {report.recommended}")
    print(f"\nwrote {report.paths['markdown']}, robustness.csv, robustness.json, robustness.png")
    return 0
