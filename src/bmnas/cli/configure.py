"""``bmnas config``: the configuration a command would run with, as commented YAML.

The same order as every command (:func:`bmnas.cli.options.resolve_config`): the dataset's preset,
then ``--config``, then ``--set``; each key is printed with its documentation (the
``metadata["doc"]`` of its field in :mod:`bmnas.core.config`) as a comment above it. The output is
a valid ``--config`` file. Loads no torch.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..core.config import Config, preset
from .options import command


def register(sub) -> None:
    p = command(sub, "config", "print the resolved configuration as YAML, each key with its meaning")
    p.add_argument("--dataset", help="apply this dataset's preset first (and name it in data.dataset)")
    p.add_argument("--data", metavar="DIR", help="name this generic-format directory in data.dir")
    p.add_argument("--config", metavar="YAML", help="a YAML file of keys, applied after the preset")
    p.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override a config value, e.g. --set search.epochs=3 (repeatable)",
    )
    p.set_defaults(func=config_command, saved=None)


def resolved(args: argparse.Namespace) -> Config:
    """Preset → ``--config`` → ``--set`` → ``--dataset``/``--data``, as the commands that run resolve it."""
    cfg = Config.from_sources(args.config, args.overrides, base=preset(args.dataset) if args.dataset else {})
    if args.dataset or args.data:
        where = {"dataset": args.dataset, "dir": args.data}
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, **{k: v for k, v in where.items() if v}))
    return cfg


def config_command(args: argparse.Namespace) -> int:
    print(resolved(args).to_commented_yaml(), end="")
    return 0
