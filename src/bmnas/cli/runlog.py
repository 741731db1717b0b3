"""What a command that writes a run directory records besides its results, while it runs.

* ``RUN_DIR/run.log``: every line the terminal showed, each with its date and time: the log records
  (the level and logger named) and what the command printed (tables, the genotype); progress bars
  are left out. Opened for appending and never through a link, so a resumed run continues it.
* ``--logger csv|tensorboard|mlflow``: the rows the run writes, fed to those loggers
  (:mod:`bmnas.report.loggers`).
* the start time and command line, for the model card and ``metrics.json``'s ``environment``.

:func:`start_session` begins it once the run directory is open; :func:`close_session` (called by
``main`` whatever happens) flushes and closes everything and puts ``sys.stdout`` back.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ..core.fileio import open_no_follow
from ..report.loggers import RowFeed, create_loggers, parse_loggers
from ..report.model_card import now

RUN_LOG = "run.log"
_CLOSING: list[Callable[[], None]] = []  # undone in reverse order by close_session


def _stamp(created: float | None = None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))


class _FileHandler(logging.Handler):
    """Log records as ``YYYY-MM-DD HH:MM:SS level logger: message`` lines in an open file."""

    def __init__(self, file: TextIO):
        super().__init__()
        self.file = file

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            level = record.levelname.lower()
            for line in text.splitlines() or [""]:
                self.file.write(f"{_stamp(record.created)} {level} {record.name}: {line}\n")
            self.file.flush()
        except Exception:
            self.handleError(record)


class _Early(logging.Handler):
    """The records of a command before its run directory is open (the data line), for run.log."""

    LIMIT = 10_000

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.LIMIT:
            self.records.append(record)


_EARLY = _Early()


def keep_early_records() -> None:
    """From now until :func:`start_session` (or :func:`close_session`), keep the log records."""
    _EARLY.records.clear()
    logging.getLogger().addHandler(_EARLY)
    _CLOSING.append(lambda: logging.getLogger().removeHandler(_EARLY))


class _Tee:
    """``sys.stdout`` that also writes each complete line, dated, into the run log."""

    def __init__(self, stream: TextIO, file: TextIO):
        self.stream, self.file, self._part = stream, file, ""

    def write(self, text: str) -> int:
        n = self.stream.write(text)
        *lines, self._part = (self._part + text).split("\n")
        for line in lines:
            self.file.write(f"{_stamp()} print: {line}\n")
        if lines:
            self.file.flush()
        return n

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def start_session(args: argparse.Namespace, run_path: Path, config: dict) -> None:
    """Open ``RUN_DIR/run.log`` and the ``--logger``s for this command; note its start time."""
    args.started = getattr(args, "started", None) or now()
    fd = open_no_follow(run_path / RUN_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    file = os.fdopen(fd, "a", encoding="utf-8")
    file.write(f"{_stamp()} start: bmnas {' '.join(getattr(args, 'argv', None) or sys.argv[1:])}\n")
    handler = _FileHandler(file)
    root = logging.getLogger()
    root.removeHandler(_EARLY)
    for record in _EARLY.records:
        handler.handle(record)
    _EARLY.records.clear()
    root.addHandler(handler)
    tee, saved = _Tee(sys.stdout, file), sys.stdout
    sys.stdout = tee

    def close_log() -> None:
        root.removeHandler(handler)
        if sys.stdout is tee:
            sys.stdout = saved
        if tee._part:
            file.write(f"{_stamp()} print: {tee._part}\n")
        file.write(f"{_stamp()} end\n")
        file.close()

    _CLOSING.append(close_log)
    feed = RowFeed(create_loggers(parse_loggers(getattr(args, "logger", None) or []), run_path, config))
    _CLOSING.append(feed.close)
    args.row_feed = feed


def close_session() -> None:
    """Close what :func:`start_session` opened (loggers first, then the run log); safe to repeat."""
    while _CLOSING:
        close = _CLOSING.pop()
        try:
            close()
        except Exception as err:  # a logger's service gone: the run's own results are written
            logging.getLogger(__name__).warning("closing a logger failed: %s", err)
