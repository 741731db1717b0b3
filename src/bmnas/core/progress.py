"""Every progress bar bmnas shows, built in one place.

On a terminal a bar is a ``tqdm`` bar redrawn in place (``\\r`` frames, removed when it ends).
When stderr is not a terminal (a log file, a CI job, ``nohup``), the same calls print plain lines
instead: one every :data:`PLAIN_SECONDS` seconds, or sooner after each :data:`PLAIN_STEP` of its total
(but at most one per :data:`PLAIN_MIN_SECONDS`), and one at its end, e.g.::

    01:02:03 bmnas: train concat_fc · select epochs · fold 2/3: 12/30 (40%) loss=0.4210

A bar's ``desc`` names what it trains (:func:`label` joins the parts with `` · ``). Bars never go
into ``RUN_DIR/run.log``: they are written to ``sys.stderr`` directly, not logged.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

PLAIN_STEP = 0.1  # a plain line every 10 % of the total …
PLAIN_SECONDS = 30.0  # … or every 30 s, whichever comes first
PLAIN_MIN_SECONDS = 3.0  # a bar of a few seconds shows its end only


def label(*parts: str | None) -> str:
    """The parts that are given, joined: ``label("sum", None, "fold 2/3")`` → ``sum · fold 2/3``."""
    return " · ".join(p for p in parts if p)


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


class PlainBar:
    """The part of tqdm's interface bmnas uses, as periodic plain lines on ``sys.stderr``.

    Args:
        iterable: iterated through (its ``len`` is the total when ``total`` is not given).
        total: the number of steps (None: unknown, no percentage; a line every 30 s).
        initial: steps already done (a resumed loop).
        desc: what the bar is about.
        disable: show nothing (iterating still works).
        unit: the steps' unit (``it``: not shown).
        clock: seconds (tests pass a fake one).
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: float | None = None,
        initial: float = 0,
        desc: str = "",
        disable: bool = False,
        unit: str = "it",
        clock=time.monotonic,
    ):
        self.iterable, self.desc, self.disable, self.unit, self.clock = iterable, desc, disable, unit, clock
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, initial, ""
        self._shown_n, self._shown_t, self._closed = initial, clock(), False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> PlainBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.disable:
            return
        step, waited = (self.total or 0) * PLAIN_STEP, self.clock() - self._shown_t
        stepped = step > 0 and self.n - self._shown_n >= step and waited >= PLAIN_MIN_SECONDS
        if waited >= PLAIN_SECONDS or stepped:
            self._line()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **values: Any) -> None:
        values = {**(ordered_dict or {}), **values}
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if not self.disable and not self._closed and self.n != self._shown_n:
            self._line()
        self._closed = True

    def _line(self) -> None:
        self._shown_n, self._shown_t = self.n, self.clock()
        count = f"{self.n:g}" if self.total is None else f"{self.n:g}/{self.total:g}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        unit = f" {self.unit}" if self.unit != "it" else ""
        tail = f" {self.postfix}" if self.postfix else ""
        stamp = time.strftime("%H:%M:%S")
        print(f"{stamp} bmnas: {self.desc}: {count}{unit}{tail}", file=sys.stderr, flush=True)


def bar(
    iterable: Iterable | None = None,
    *,
    desc: str,
    total: float | None = None,
    initial: float = 0,
    enabled: bool = True,
    unit: str = "it",
) -> Any:
    """A progress bar over ``iterable`` (or ``total`` steps, advanced with ``update``): a tqdm bar on a
    terminal, :class:`PlainBar` lines otherwise; ``enabled=False`` shows nothing."""
    if not _is_terminal():
        return PlainBar(iterable, total=total, initial=initial, desc=desc, disable=not enabled, unit=unit)
    return tqdm(
        iterable, total=total, initial=initial, desc=desc, disable=not enabled, unit=unit, leave=False
    )
