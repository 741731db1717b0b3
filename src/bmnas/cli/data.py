"""``bmnas pretrain | export``: a dataset's features, prepared and cached (and written out) without a run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import SAVED_CACHE, command, config_of, data_options, read_data


def register(sub) -> None:
    p = command(sub, "pretrain", "prepare a dataset and pre-train (or load) its backbones")
    data_options(p, out=False)
    p.set_defaults(func=pretrain_command, saved=SAVED_CACHE)
    p = command(sub, "export", "write a dataset's pooled features in the generic --data format")
    data_options(p, out=False)
    p.add_argument("--out", metavar="DIR", required=True)
    p.set_defaults(func=export_command, saved=SAVED_CACHE)


def pretrain_command(args: argparse.Namespace) -> int:
    """Prepare the data, pre-train (or load) the backbones, extract and cache the features."""
    data = read_data(args, config_of(args))
    print(f"{data.name}: features {dict(data.feature_channels)}; info {json.dumps(data.info, default=str)}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    """The cached features as a generic ``--data`` directory (new, empty, or an earlier export of bmnas')."""
    from ..engine import owned
    from ..features.generic import export_generic_dir

    owned.check_claimable(Path(args.out))  # refused before the features are computed
    data = read_data(args, config_of(args))
    owned.claim(Path(args.out))  # a user's train.npz is never written over
    print(f"wrote {export_generic_dir(data, args.out)}")
    return 0
