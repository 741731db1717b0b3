"""The ``bmnas`` command line: ``run | search | train | ablate | sweep | pretrain | export | show``;
using a trained run: ``predict | export-model | robustness``; ``config`` prints the configuration.

Every command takes its data from ``--dataset NAME`` (a registered dataset, prepared and cached on
first use) or ``--data DIR`` (the generic format, docs/DESIGN.md §12), a YAML ``--config`` and dotted
``--set key=value`` overrides. Runs write into ``--out RUN_DIR`` and resume from it when killed.

Each command group is a module with ``register(sub)``, which adds its parsers and sets ``func``
(the command, which prints its results) and ``saved`` (what a Ctrl-C leaves for a rerun):
:mod:`.search`, :mod:`.studies`, :mod:`.data`, :mod:`.serve`, :mod:`.configure`; their shared
options and the prelude config → data → run directory are in :mod:`.options`. This module parses,
decides once where log records go (the library only logs), calls ``args.func(args)`` and turns its
errors into one line. Importing it loads no torch: a command imports its work when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .._version import __version__
from ..core import locks
from ..core.errors import BmnasError
from ..core.fileio import write_error
from . import configure, data, runlog, search, serve, studies
from .options import epilog, output_options

COMMAND_GROUPS = (search, studies, data, serve, configure)  # in the order of the command list

DESCRIPTION = """\
Find how to fuse your modalities (BM-NAS, bilevel multimodal neural architecture search):
search a fusion network over the features of pre-trained backbones, train it, compare it with
baselines, and use the trained network.

Commands that read data take --dataset NAME (a registered dataset such as avmnist, prepared and
cached on first use) or --data DIR (train/val/test.npz in the generic format), a --config file
and --set KEY=VALUE overrides. A run writes into --out RUN_DIR; rerunning the same command after
a kill resumes it."""


def build_parser() -> argparse.ArgumentParser:
    """``bmnas`` with the global output options and every command group's subcommands."""
    parser = argparse.ArgumentParser(
        prog="bmnas",
        description=DESCRIPTION,
        epilog=epilog(None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    output_options(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"bmnas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


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
    """``HH:MM:SS bmnas: message``, ``bmnas: warning: message``; debug lines and other libraries'
    records name their logger. Info and debug lines carry the time; warnings and errors stand out
    without it (``RUN_DIR/run.log`` has the full date of every line)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        kind = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        ours = record.name.split(".")[0] == "bmnas"
        source = f"{record.name}: " if record.levelno < logging.INFO or not ours else ""
        stamp = (
            time.strftime("%H:%M:%S ", time.localtime(record.created))
            if record.levelno <= logging.INFO
            else ""
        )
        return f"{stamp}bmnas: {kind}{source}{text}"


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
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for run.log and the model card
    if args.quiet and args.verbose:
        parser.error("--quiet and --verbose exclude each other")
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    with _log_to_stderr(level):
        runlog.keep_early_records()  # for RUN_DIR/run.log, once the command opens one
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """The command, its errors turned into one line each and an exit code."""
    debug = args.debug or os.environ.get("BMNAS_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except BmnasError as err:
        print(f"bmnas: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args), file=sys.stderr)
        return 130
    except OSError as err:  # disk full, permissions: the environment, not the input or a bug
        if debug:
            raise
        # bmnas' writers name the file (a WriteError); one that did not: a cause only writes have
        refused = write_error(err, err.filename) if err.errno != errno.EACCES else None
        if refused is not None:
            print(f"bmnas: error: {refused}", file=sys.stderr)
            return 2
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
        runlog.close_session()
        locks.release_all()
        if getattr(args, "owns_process_group", False):
            import torch.distributed as dist

            dist.destroy_process_group()


def _interrupted(args: argparse.Namespace) -> str:
    """The one line for Ctrl-C: what is kept (the command's ``saved``), and how to go on from there."""
    saved = getattr(args, "saved", None)
    if saved is None:
        return (
            f"bmnas: interrupted before bmnas {args.command} finished: rerun the same command to start again"
        )
    again = "rerun the same command" + (" without --fresh" if getattr(args, "fresh", False) else "")
    return f"bmnas: interrupted; {saved.format(**vars(args))}: {again} to resume"


def _describe(err: BaseException) -> str:
    """``Type: message (at file.py:line)`` of the innermost frame."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    at = f" (at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno})" if tb else ""
    return f"{type(err).__name__}: {str(err)[:300]}{at}"


if __name__ == "__main__":
    raise SystemExit(main())
