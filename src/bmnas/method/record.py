"""What a run directory records besides each stage's results: its configuration and its data.

Every library entry that writes a run (:func:`bmnas.method.run.run`, :func:`bmnas.method.search.search`,
:func:`bmnas.method.train.train`) opens a path it is given with :func:`open_run`, as the command line
opens ``--out``: the directory is locked, checked to hold this run (or none), and ``config.yaml``
and ``fingerprint.json`` are written before any epoch runs. So a run made from Python is one every
command accepts (``bmnas show | predict | export-model | robustness``, a resumed ``bmnas run``).
:func:`entry` makes a function such an entry: bmnas' thread policy for its duration, and the run
directory it locked given back when it returns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..core import locks
from ..core.config import Config
from ..core.data import FeatureData
from ..engine.device import uses_threads
from ..engine.distributed import barrier, current
from ..engine.rundir import RunDir
from ..features.table import write_split_file
from ..features.validate import fingerprint


def open_run(out: str | Path, cfg: Config, data: FeatureData, fresh: bool = False) -> RunDir:
    """Lock ``out`` and check that it holds this run (or none); record ``config.yaml`` and the data's
    fingerprint (:meth:`~bmnas.engine.rundir.RunDir.open`).

    Under ``torchrun`` rank 0 opens (and locks) the directory; the other ranks only read from it.
    ``fresh``: discard what bmnas wrote there first (``--fresh``).
    """
    ranks = current()
    run = None
    if ranks.main:
        run = RunDir(out)
        run.open(cfg, fingerprint(data), fresh=fresh)
        write_split_file(run.path, data.info)  # a table's split, made by bmnas or given
    barrier(ranks)
    return run if run is not None else RunDir(out, create=False)


def as_run(run: RunDir | str | Path | None, cfg: Config, data: FeatureData) -> RunDir | None:
    """``run`` as a :class:`RunDir`: a path is opened with :func:`open_run`; a ``RunDir`` is used as
    its caller opened it (the command line, or :func:`bmnas.method.run.run` for its stages)."""
    if run is None or isinstance(run, RunDir):
        return run
    return open_run(run, cfg, data)


F = TypeVar("F", bound=Callable[..., Any])


def entry(fn: F) -> F:
    """A public entry of the method (``cfg`` and ``data`` among its arguments): it computes under
    :func:`~bmnas.engine.device.uses_threads`' policy, and the run directory locks it takes (a path
    given as its run) are released when it returns, so another process may open the run next."""
    threaded = uses_threads()(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with locks.scoped():
            return threaded(*args, **kwargs)

    return call  # type: ignore[return-value]
