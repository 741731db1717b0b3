"""What bmnas may assume of each file it reads back: one declarative schema per file type.

A run directory or a cache holds files bmnas wrote, but a failing disk, a hand edit or a hostile
copy can change them. Every reader passes the parsed content through :func:`check` (or
:func:`load_json`, :func:`load_rows`) with its file type's schema *before* using any of it, so that
a damaged file is refused in one line naming the file and the field, or, where the file only
memoises work (selections, the logs of re-ranking, SMBO and ablations), that work is redone with a
warning. Nothing beyond the schema is trusted: types, ranges, finite numbers and list lengths are
bounded by what a run could have written (e.g. at most :data:`~bmnas.core.data.MAX_OUTPUTS`
outputs), so no reader allocates from a number it has not checked.

A schema is a small value: :class:`Num`, :class:`Text`, :class:`Flag`, :class:`Seq` (a list),
:class:`Tup` (a list of fixed length), :class:`Obj` (an object with named fields; other fields are
allowed, so older and newer files pass), :class:`Map` (an object of any keys), :class:`Opt` (null
or a value), :class:`Either` and :data:`ANY`. The schemas of the run directory's files are
:mod:`bmnas.core.schemas`; a genotype's is :meth:`~bmnas.core.genotype.Genotype.from_dict`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BmnasError
from .fileio import FileFormatError, read_jsonl_lines, write_jsonl

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 << 20  # far above any JSON file a run writes (metrics.json of a big run: ~100 KiB)
_MISSING: Any = object()


# ------------------------------------------------------------------------------------------ schemas
@dataclass(frozen=True)
class Num:
    """A number (never a bool): finite unless ``finite`` is False; ``integer``; in [lo, hi]
    (``lo_open``/``hi_open``: an open end)."""

    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    finite: bool = True
    lo_open: bool = False
    hi_open: bool = False

    def what(self) -> str:
        kind = "an integer" if self.integer else "a finite number" if self.finite else "a number"
        lo, hi = (
            None if v is None else str(v) if isinstance(v, int) else f"{v:g}" for v in (self.lo, self.hi)
        )
        if lo is not None and hi is not None:
            return f"{kind} in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f"{kind} {'>' if self.lo_open else '>='} {lo}"
        return kind if hi is None else f"{kind} {'<' if self.hi_open else '<='} {hi}"

    def ok(self, v: object) -> bool:
        if isinstance(v, bool) or not isinstance(v, int if self.integer else (int, float)):
            return False
        if isinstance(v, float) and not math.isfinite(v):
            return not self.finite and (math.isnan(v) or self._in_range(v))
        return self._in_range(v)

    def _in_range(self, v: float) -> bool:
        lo, hi = self.lo, self.hi
        return (lo is None or (v > lo if self.lo_open else v >= lo)) and (
            hi is None or (v < hi if self.hi_open else v <= hi)
        )


@dataclass(frozen=True)
class Text:
    """A string: one of ``choices``, at most ``max_len`` characters, matching ``pattern``, or
    (``name``) a plain file or method name: no path separator, not starting with a dot."""

    choices: tuple[str, ...] = ()
    max_len: int = 10_000
    pattern: str | None = None
    name: bool = False
    described: str = ""

    def what(self) -> str:
        if self.described:
            return self.described
        if self.choices:
            return f"one of {list(self.choices)}"
        if self.name:
            return f"a name of 1 to {self.max_len} characters, without '/' and not starting with '.'"
        return f"a string of at most {self.max_len} characters"

    def ok(self, v: object) -> bool:
        if not isinstance(v, str) or len(v) > self.max_len:
            return False
        if self.choices and v not in self.choices:
            return False
        if self.pattern is not None and re.fullmatch(self.pattern, v) is None:
            return False
        return not self.name or (bool(v) and not v.startswith(".") and not any(c in v for c in "/\\\0"))


@dataclass(frozen=True)
class Flag:
    """``true`` or ``false``."""

    def what(self) -> str:
        return "true or false"

    def ok(self, v: object) -> bool:
        return isinstance(v, bool)


@dataclass(frozen=True)
class Any_:
    """Anything (a value no reader looks into, or one a reader checks itself)."""

    def what(self) -> str:
        return "anything"

    def ok(self, v: object) -> bool:
        return True


@dataclass(frozen=True)
class Seq:
    """A list (or tuple) of ``min_len`` to ``max_len`` items, each ``item``."""

    item: Schema = field(default_factory=Any_)
    max_len: int | None = None
    min_len: int = 0

    def what(self) -> str:
        if self.max_len is None:
            return "a list" if not self.min_len else f"a list of at least {self.min_len} item(s)"
        if self.min_len == self.max_len:
            return f"a list of {self.max_len} items"
        if not self.min_len:
            return f"a list of at most {self.max_len} items"
        return f"a list of {self.min_len} to {self.max_len} items"

    def ok(self, v: object) -> bool:
        n = len(v) if isinstance(v, (list, tuple)) else -1
        return n >= self.min_len and (self.max_len is None or n <= self.max_len)


@dataclass(frozen=True)
class Tup:
    """A list of ``len(items)`` values, the i-th one ``items[i]``."""

    items: tuple[Schema, ...]

    def what(self) -> str:
        return f"a list of {len(self.items)} items"

    def ok(self, v: object) -> bool:
        return isinstance(v, (list, tuple)) and len(v) == len(self.items)


@dataclass(frozen=True)
class Obj:
    """An object with ``fields`` (all required but ``optional``); fields not named are allowed."""

    fields: Mapping[str, Schema]
    optional: tuple[str, ...] = ()

    def what(self) -> str:
        return "an object"

    def ok(self, v: object) -> bool:
        return isinstance(v, Mapping)


@dataclass(frozen=True)
class Map:
    """An object of at most ``max_len`` entries, keys ``key``, each value ``value``."""

    value: Schema
    max_len: int | None = None
    key: Text = field(default_factory=Text)

    def what(self) -> str:
        return "an object" if self.max_len is None else f"an object of at most {self.max_len} entries"

    def ok(self, v: object) -> bool:
        return isinstance(v, Mapping) and (self.max_len is None or len(v) <= self.max_len)


@dataclass(frozen=True)
class Opt:
    """``null`` or ``schema``."""

    schema: Schema

    def what(self) -> str:
        return f"null or {self.schema.what()}"

    def ok(self, v: object) -> bool:
        return v is None or self.schema.ok(v)


@dataclass(frozen=True)
class Either:
    """One of ``schemas`` (the first whose own type fits is checked further)."""

    schemas: tuple[Schema, ...]

    def what(self) -> str:
        return " or ".join(s.what() for s in self.schemas)

    def ok(self, v: object) -> bool:
        return any(s.ok(v) for s in self.schemas)


Schema = Num | Text | Flag | Any_ | Seq | Tup | Obj | Map | Opt | Either
ANY = Any_()


# ------------------------------------------------------------------------------------------- checks
def problem(value: object, schema: Schema, at: str = "") -> str | None:
    """The first way ``value`` breaks ``schema``, as ``"<field> must be …, got …"``; None if it fits."""
    if not schema.ok(value):
        return f"{at + ' ' if at else ''}must be {schema.what()}, got {describe(value)}"
    if isinstance(schema, Opt):
        return None if value is None else problem(value, schema.schema, at)
    if isinstance(schema, Either):
        return problem(value, next(s for s in schema.schemas if s.ok(value)), at)
    if isinstance(schema, (Seq, Tup)):
        items = schema.items if isinstance(schema, Tup) else (schema.item,) * len(value)
        return _first(problem(v, s, f"{at}[{i}]") for i, (v, s) in enumerate(zip(value, items, strict=True)))
    if isinstance(schema, Obj):
        missing = [k for k in schema.fields if k not in value and k not in schema.optional]
        if missing:
            return f"{_join(at, missing[0])} is missing"
        return _first(problem(value[k], s, _join(at, k)) for k, s in schema.fields.items() if k in value)
    if isinstance(schema, Map):
        bad_key = next((k for k in value if not schema.key.ok(k)), None)
        if bad_key is not None:
            return f"{at or 'the file'} has the key {describe(bad_key)}; keys must be {schema.key.what()}"
        return _first(problem(v, schema.value, _join(at, str(k))) for k, v in value.items())
    return None


def _join(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def _first(problems) -> str | None:
    return next((p for p in problems if p is not None), None)


def describe(value: object, limit: int = 60) -> str:
    """A short description of a value for an error message (containers by kind, never whole)."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return f"an object of {len(value)} entries"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} items"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    if isinstance(value, (str, bool, int, float)):
        text = repr(value[: limit + 1] if isinstance(value, str) else value)
        return text if len(text) <= limit else text[:limit] + "..."
    return f"a {type(value).__name__}"


def check(
    value: object, schema: Schema, where: str, fix: str = "", error: type[BmnasError] = FileFormatError
) -> Any:
    """``value`` if it fits ``schema``; else ``error("<where>: <field> must be …, got …; <fix>")``."""
    found = problem(value, schema)
    if found is not None:
        raise error(f"{where}: {found}" + (f"; {fix}" if fix else ""))
    return value


def load_json(
    path: str | Path,
    schema: Schema,
    fix: str = "",
    error: type[BmnasError] = FileFormatError,
    default: Any = _MISSING,
) -> Any:
    """The JSON value of ``path``, checked against ``schema`` (:func:`check`).

    A missing file returns ``default`` (without one: :class:`FileNotFoundError`); a file that is too
    large, unreadable or not JSON is ``error`` too, naming the file.
    """
    path, then = Path(path), (f"; {fix}" if fix else "")
    try:
        size = path.stat().st_size
        text = path.read_text() if size <= MAX_JSON_BYTES else None
    except FileNotFoundError:
        if default is _MISSING:
            raise
        return default
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: unreadable ({type(err).__name__}: {err}){then}") from None
    if text is None:
        raise error(f"{path}: {size} bytes is too large for a file bmnas wrote{then}")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:  # not JSON, cut short, or nested beyond any file of ours
        why = f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"
        raise error(f"{path}: not a readable JSON file ({why}){then}") from None
    return check(value, schema, str(path), fix, error)


def load_rows(
    path: str | Path | None,
    schema: Schema,
    redo: str,
    *,
    valid: Callable[[Any], str | None] | None = None,
    prefix: bool = False,
    rewrite: bool = True,
) -> list:
    """The rows of a JSON-lines log of finished work that fit ``schema`` (and ``valid``, a check of
    their meaning returning a problem or None).

    A row that does not is logged (``"<file>, line <n>: <field> must be …; <redo>"``) and dropped,
    so its work is redone; with ``prefix`` every row after it is dropped too (rows that build on
    the earlier ones, as SMBO's rounds do). With ``rewrite`` the file is then rewritten without them
    (atomically), so that the redone rows replace them. ``[]`` when there is no file.
    """
    if path is None:
        return []
    rows, dropped = [], False
    for line, row in read_jsonl_lines(path):
        found = problem(row, schema)
        if found is None and valid is not None:
            found = valid(row)
        if found is not None:
            log.warning("%s, line %d: %s; %s", path, line, found, redo)
            dropped = True
            if prefix:
                break
            continue
        rows.append(row)
    if dropped and rewrite:
        write_jsonl(path, rows)
    return rows
