"""What a run directory records besides each stage's results: its configuration and its data.

Every library entry that writes a run (:func:`bmnas.method.run.run`, :func:`bmnas.method.search.search`,
:func:`bmnas.method.train.train`) opens a path it is given with :func:`open_run`, as the command line
opens ``--out``: the directory is locked, checked to hold this run (or none), and ``config.yaml``
and ``fingerprint.json`` are written before any epoch runs. So a run made from Python is one every
command accepts (``bmnas show | predict | export-model | robustness``, a resumed ``bmnas run``).
"""

from __future__ import annotations

from pathlib import Path

from ..core.config import Config
from ..core.data import FeatureData
from ..engine.distributed import barrier, current
from ..engine.rundir import RunDir
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
    barrier(ranks)
    return run if run is not None else RunDir(out, create=False)


def as_run(run: RunDir | str | Path | None, cfg: Config, data: FeatureData) -> RunDir | None:
    """``run`` as a :class:`RunDir`: a path is opened with :func:`open_run`; a ``RunDir`` is used as
    its caller opened it (the command line, or :func:`bmnas.method.run.run` for its stages)."""
    if run is None or isinstance(run, RunDir):
        return run
    return open_run(run, cfg, data)
