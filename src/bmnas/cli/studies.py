"""``bmnas ablate | sweep``: studies over many runs of the method (tables over seeds, Optuna trials)."""

from __future__ import annotations

import argparse
import logging

from ..core.config import ConfigError
from .options import (
    SAVED_EPOCHS,
    SAVED_TRIALS,
    command,
    data_options,
    open_run,
    positive_int,
    prepare,
    read_data,
)

# torch-free copies (so `bmnas --help` loads no torch) of bmnas.studies.ablate.METHODS and of
# SMBOConfig.budget and .epochs, the defaults of the ablate options; tests/test_cli.py keeps them equal
METHODS = (
    "unimodal",
    "late_fusion",
    "linear_probe",
    "sum",
    "concat_fc",
    "mha",
    "aoa",
    "random",
    "searched",
    "searched_paper",
    "searched_shared",
    "searched_no_zero",
    "smbo",
)
SMBO_BUDGET, SMBO_EPOCHS = 20, 2


def register(sub) -> None:
    p = command(sub, "ablate", "baselines and ablations (paper Tables 5-7): a table over seeds")
    data_options(p)
    ablate_options(p)
    p.set_defaults(func=ablate_command, saved=SAVED_EPOCHS)
    p = command(sub, "sweep", "Optuna study over the search config (N, M, C, L, lrs); several workers")
    data_options(p, out=False)
    p.add_argument("--out", metavar="DIR", required=True, help="sweep directory (shared by workers; resumed)")
    p.add_argument(
        "--trials", type=positive_int, default=20, help="complete trials the study should hold (20)"
    )
    p.add_argument("--storage", metavar="URL", help="Optuna database URL (default sqlite:///OUT/study.db)")
    p.add_argument("--study", default="bmnas", help="study name in the storage (default bmnas)")
    p.add_argument("--space", metavar="YAML", help="search space (default: bmnas.studies.sweep.SPACE)")
    p.set_defaults(func=sweep_command, saved=SAVED_TRIALS)


def ablate_options(p: argparse.ArgumentParser) -> None:
    """The ``bmnas ablate`` options beyond the common data/config/run options."""
    p.add_argument("--seeds", default="3", help="number of seeds from the config seed (3), or a list (0,1,2)")
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated methods (default: all): {','.join(METHODS)}; or unimodal:<modality>",
    )
    p.add_argument("--random-samples", type=positive_int, default=5, help="random genotypes (default 5)")
    p.add_argument("--smbo-budget", type=positive_int, default=SMBO_BUDGET, help="genotypes SMBO trains")
    p.add_argument("--smbo-epochs", type=positive_int, default=SMBO_EPOCHS, help="epochs per SMBO genotype")


def ablate_command(args: argparse.Namespace) -> int:
    """Run the ablation into ``--out`` and print the Markdown table."""
    from ..studies.ablate import AblationOptions, ablate, expand_methods, markdown_table, parse_seeds
    from ..studies.smbo import SMBOConfig

    cfg, data, _ = prepare(args, searches=True)
    try:  # every option is checked before --out is touched
        smbo_cfg = SMBOConfig(
            budget=args.smbo_budget,
            initial=min(SMBOConfig.initial, args.smbo_budget),
            epochs=args.smbo_epochs,
        )
        opts = AblationOptions(
            methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
            seeds=parse_seeds(args.seeds, cfg.seed),
            random_samples=args.random_samples,
            smbo=smbo_cfg,
        )
        expand_methods(opts.methods, data)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    run = open_run(args, cfg, data)
    result = ablate(data, cfg, run.path, opts, progress=not args.quiet, fresh=args.fresh, verbose=True)
    print()
    print(markdown_table(result.rows, result.cost_ratio, result.comparisons))
    print(f"written: {', '.join(str(p) for p in result.paths.values())}")
    return 0


def sweep_command(args: argparse.Namespace) -> int:
    """The sweep directory is shared by its workers, so each trial's run is locked (in
    :func:`bmnas.studies.sweep.sweep`), not ``--out`` itself."""
    from ..studies.sweep import SPACE, format_rows, import_optuna, load_space, sweep

    cfg, data, _ = prepare(args, searches=True)
    import_optuna().logging.set_verbosity(logging.WARNING)  # bmnas logs one line per trial
    loaded = {cfg.model.L: data}

    def load(L: int):
        if L not in loaded:
            loaded[L] = read_data(args, cfg, L=L)
        return loaded[L]

    space = load_space(args.space) if args.space else SPACE
    r = sweep(load, cfg, args.out, args.trials, args.storage, args.study, space, progress=not args.quiet)
    print()
    print(format_rows(r.rows, r.space, r.best_number))
    print(f"\nbest: trial {r.best_number}, {r.scored_by} {r.best_value:.4f}")
    print(r.genotype.describe())
    print(f"written: {', '.join(str(p) for p in r.paths.values())}")
    return 0
