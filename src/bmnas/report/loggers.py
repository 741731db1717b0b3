"""Experiment loggers fed from the rows a run already writes: CSV files, TensorBoard, MLflow.

Every loop writes its rows into the run directory (``history.jsonl`` per search epoch with the
val metrics and α/β/γ entropies, ``<stage>_history.jsonl`` per training epoch, ``rerank.jsonl`` per
re-ranked candidate, ``<stage>_selection.json`` with the val curve of the epoch selection (mean
over the folds), ``metrics.json`` with the final results). :class:`RowFeed` receives each of those
writes (:meth:`bmnas.engine.rundir.RunDir.observe`) and hands the *new* rows, as flat numbers, to
every :class:`Logger`: nothing is computed twice, and a resumed run does not log its finished
epochs again.

``--logger csv`` needs nothing (``RUN_DIR/logs/<kind>.csv``); ``--logger tensorboard`` needs
``pip install 'bmnas[tensorboard]'`` (event files in ``RUN_DIR/logs``) and
``--logger mlflow`` needs ``pip install 'bmnas[mlflow]'`` (the tracking URI of ``MLFLOW_TRACKING_URI``,
else ``./mlruns``).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from ..core.errors import BmnasError
from ..core.fileio import open_no_follow, write_text_atomic
from ..core.registry import optional

LOGGERS = ("csv", "tensorboard", "mlflow")
LOGS_DIR = "logs"
_SKIPPED = ("genotype", "arch", "ops")  # non-numeric payloads of a row (architectures, names)


class Logger(Protocol):
    """Where rows of numbers go: ``kind`` names the stream (``search``, ``train``, ``rerank``, …)."""

    def log_row(self, kind: str, step: int, values: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def scalars(row: Mapping, prefix: str = "") -> dict[str, float]:
    """The finite numbers of ``row``, nested keys joined with dots (``val.accuracy``, ``entropy.alpha``);
    lists, strings, genotypes and α/β/γ matrices are left out."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if not prefix and key in _SKIPPED:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(scalars(value, f"{name}."))
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
    return out


def kind_of(name: str) -> str | None:
    """The stream a run-directory file feeds (None: none): ``history.jsonl`` → ``search``,
    ``train_history.jsonl`` → ``train``, ``baseline_sum_selection.json`` → ``baseline_sum_selection``,
    ``rerank.jsonl`` → ``rerank``, ``metrics.json`` → ``metrics``."""
    if name == "history.jsonl":
        return "search"
    if name.endswith("_history.jsonl"):
        return name.removesuffix("_history.jsonl")
    if name.endswith("_selection.json"):
        return name.removesuffix(".json")
    if name in ("rerank.jsonl", "metrics.json"):
        return name.split(".")[0]
    return None


def rows_of(kind: str, row: Mapping) -> list[tuple[int, dict[str, float]]]:
    """``(step, values)`` pairs of one written row: an epoch's row at its epoch, a candidate at its
    rank + 1, a selection as its val curve (one step per epoch), the final metrics at step 0."""
    if kind.endswith("_selection"):
        metric = row.get("metric", "val")
        return [(i, {f"val_{metric}": float(v)}) for i, v in enumerate(row.get("curve", []), 1)]
    if kind == "rerank":
        return [(int(row.get("rank", 0)) + 1, scalars({k: v for k, v in row.items() if k != "curve"}))]
    return [(int(row.get("epoch", 0)), scalars(row))]


class CSVLogger:
    """``<dir>/<kind>.csv``: a ``step`` column and one per value; a value seen for the first time
    widens the file (it is rewritten with the new header, earlier rows empty there)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def log_row(self, kind: str, step: int, values: Mapping[str, float]) -> None:
        path = self.dir / f"{kind}.csv"
        self.dir.mkdir(parents=True, exist_ok=True)
        rows = _read_csv(path)
        header = list(rows[0]) if rows else ["step"]
        new = [k for k in values if k not in header]
        line = {"step": step, **values}
        if rows and not new:
            text = _csv_lines(header, [line], with_header=False)
            fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND)
            with os.fdopen(fd, "a", newline="") as f:
                f.write(text)
            return
        write_text_atomic(path, _csv_lines(header + new, [*rows, line], with_header=True))

    def close(self) -> None:
        pass


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _csv_lines(header: list[str], rows: Iterable[Mapping], with_header: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
    if with_header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


class TensorBoardLogger:
    """Scalars ``<kind>/<value>`` in ``<dir>`` (``tensorboard --logdir RUN_DIR/logs``)."""

    def __init__(self, directory: str | Path):
        optional("tensorboard", "--logger tensorboard", "pip install 'bmnas[tensorboard]'")
        board = optional(
            "torch.utils.tensorboard", "--logger tensorboard", "pip install 'bmnas[tensorboard]'"
        )
        self.writer = board.SummaryWriter(log_dir=str(directory))

    def log_row(self, kind: str, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class MLflowLogger:
    """One MLflow run named after the run directory: the configuration as parameters, each row's
    values as metrics ``<kind>.<value>`` at their step."""

    def __init__(self, run_name: str, params: Mapping[str, object]):
        self.mlflow = optional("mlflow", "--logger mlflow", "pip install 'bmnas[mlflow]'")
        self.mlflow.start_run(run_name=run_name)
        self.mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log_row(self, kind: str, step: int, values: Mapping[str, float]) -> None:
        self.mlflow.log_metrics({f"{kind}.{k}": v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def flat_params(d: Mapping, prefix: str = "") -> dict[str, object]:
    """``{"search": {"epochs": 3}}`` → ``{"search.epochs": 3}``."""
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def parse_loggers(values: Iterable[str]) -> tuple[str, ...]:
    """``--logger`` values (repeated or comma lists) as distinct names; an unknown one is refused."""
    names: list[str] = []
    for value in values:
        for name in (v.strip().lower() for v in value.split(",")):
            if name and name not in LOGGERS:
                raise BmnasError(f"--logger {name!r}: unknown logger; choose from {', '.join(LOGGERS)}")
            if name and name not in names:
                names.append(name)
    return tuple(names)


def create_loggers(names: Iterable[str], run_dir: str | Path, config: Mapping) -> list[Logger]:
    """The loggers ``names`` for the run directory ``run_dir`` (missing extras: one line each)."""
    run_dir = Path(run_dir)
    made: list[Logger] = []
    for name in names:
        if name == "csv":
            made.append(CSVLogger(run_dir / LOGS_DIR))
        elif name == "tensorboard":
            made.append(TensorBoardLogger(run_dir / LOGS_DIR))
        elif name == "mlflow":
            made.append(MLflowLogger(run_dir.resolve().name, flat_params(config)))
    return made


class RowFeed:
    """What :meth:`~bmnas.engine.rundir.RunDir.observe` calls with each write: hands the new rows of
    the files a run writes to ``loggers``.

    A history file is rewritten whole each epoch (``replaces``): only the rows past those the file
    held before are new, which also skips the epochs a resumed run finished before its kill.
    """

    def __init__(self, loggers: Iterable[Logger]):
        self.loggers = list(loggers)
        self._held: dict[str, int] = {}

    def __call__(self, path: Path, rows: list[dict], replaces: bool) -> None:
        kind = kind_of(path.name)
        if kind is None or not self.loggers:
            return
        if replaces:
            before = self._held.get(path.name)
            if before is None:
                before = _count_lines(path)
            self._held[path.name] = len(rows)
            rows = rows[before:]
        for row in rows:
            for step, values in rows_of(kind, row):
                if values:
                    for logger in self.loggers:
                        logger.log_row(kind, step, values)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0
