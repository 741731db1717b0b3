"""Every file bmnas writes goes through here: atomic writes, JSON and JSON lines, checksums.

Why one module: a run can be killed at any instant (Ctrl-C, a cluster's time limit, OOM), and the
next run must find either the old file or the new one, never half of one. So:

* :func:`atomic_write` writes to a uniquely named temporary file in the target's directory
  (``.<name>.<random>.tmp``, :func:`tempfile.mkstemp`: two writers never share it) and renames it
  over the target with :func:`os.replace`; on any error the temporary file is removed and the old
  file stays as it was. :class:`~bmnas.engine.rundir.RunDir` deletes the ``*.tmp`` a killed process left.
* JSON lines are the one format that is appended to (a row per finished unit of work, so that a
  killed run resumes after the last one). Appending is not atomic, so :func:`read_jsonl` has one
  policy for damage: an unparsable **last** line is what a kill in the middle of an append leaves;
  it is skipped with a warning (that unit of work is redone) and the next :func:`append_jsonl`
  cuts it off. An unparsable line anywhere else is not a kill but a damaged file: a
  :class:`~bmnas.core.errors.BmnasError` naming the file and the line.
* Directories (cache entries, prepared datasets) are built in a staging directory and published
  with one rename (:func:`make_staging_dir`, :func:`publish_dir`).
* A write the machine refuses (disk full, quota, read-only file system, permissions) is a
  :class:`~bmnas.core.errors.WriteError` naming the file and the fix (:func:`naming_write_errors`);
  the old file stays, so the same command, rerun, resumes.
* An output file a user names (``predict --out``) lives in no run directory: before it is written,
  :func:`remove_stale_temps` deletes the temporaries of it that killed writes left.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import BmnasError, NotOursError, WriteError

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
# atomic_write's temporary files: ``.<name>.<8 characters of mkstemp>.tmp`` (a user's ``draft.tmp`` is not)
_TEMP_TAIL = r"\.[A-Za-z0-9_]{8}\.tmp$"  # mkstemp's 8 random characters, then TMP_SUFFIX
_OWN_TEMP = re.compile(r"^\..+" + _TEMP_TAIL)
_NO_DEFAULT: Any = object()
STALE_SECONDS = 300
"""A temporary file unchanged this long is a killed write's (a live writer keeps touching its own)."""
# errno of a write the machine refused -> (the cause, what to do)
WRITE_FIXES = {
    errno.ENOSPC: ("no space left on device", "free space and rerun the same command to resume"),
    errno.EDQUOT: (
        "disk quota exceeded",
        "free space (or raise the quota) and rerun the same command to resume",
    ),
    errno.EROFS: ("read-only file system", "write to a writable location, or remount it read-write"),
    errno.EACCES: ("permission denied", "make its folder writable, or write to another location"),
}


class FileFormatError(BmnasError, ValueError):
    """A file bmnas wrote earlier that can no longer be parsed (damaged or edited by hand)."""


# ------------------------------------------------------------------------------------------- writes
def write_error(err: OSError, path: str | Path | None) -> WriteError | None:
    """The one-line :class:`WriteError` of a write of ``path`` that failed with ``err``, if the
    machine refused it (:data:`WRITE_FIXES`); None for any other error."""
    if err.errno not in WRITE_FIXES:
        return None
    cause, fix = WRITE_FIXES[err.errno]
    where = f"cannot write {path}" if path is not None else "a write failed"
    return WriteError(f"{where}: {cause}: {fix}")


@contextlib.contextmanager
def naming_write_errors(path: str | Path) -> Iterator[None]:
    """Turn a refused write (:func:`write_error`) inside the block into a :class:`WriteError` naming
    ``path``, the file (or directory) being written, not a temporary one."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        failure = write_error(err, path)
        if failure is None:
            raise
        raise failure from err


def atomic_write(path: str | Path, write_fn: Callable[[Path], object]) -> Path:
    """Call ``write_fn(tmp)`` on a fresh temporary file beside ``path``, then rename it to ``path``.

    ``write_fn`` receives the temporary file's path (it exists, empty) and writes the content;
    library writers that pick a format from the file name need the format passed explicitly
    (the temporary name ends in ``.tmp``). If ``write_fn`` raises, ``path`` is untouched and the
    temporary file is removed. The file gets the permissions ``open()`` would give it (mkstemp's
    0600 would hide a shared run directory or cache from the rest of a group). A write the machine
    refuses is a :class:`WriteError` naming ``path`` (:func:`naming_write_errors`).
    """
    path = Path(path)
    with naming_write_errors(path):
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())
        finally:
            os.close(fd)
        tmp = Path(name)
        try:
            write_fn(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """``obj`` as JSON (one line per value at ``indent``, a final newline), atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def write_json_sorted(path: str | Path, obj: Any) -> Path:
    """``obj`` as compact, key-sorted JSON (manifests, sidecars of checksummed files), atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Replace ``path`` by one JSON line per row, atomically (a log rewritten whole)."""
    return write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save(obj)`` atomically.

    Write only tensors and plain Python values, so that the file loads with
    ``torch.load(weights_only=True)`` and a shared file cannot run code. Through a file object:
    then a full disk is an :class:`OSError` (torch's own writer reports it as a RuntimeError) and the
    archive's folder is ``archive``, not the temporary file's random name.
    """
    import torch

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


def is_own_temp(path: Path) -> bool:
    """Is ``path`` a temporary file that an interrupted :func:`atomic_write` left?"""
    return bool(_OWN_TEMP.match(path.name))


def remove_stale_temps(path: str | Path, min_age: float = STALE_SECONDS) -> int:
    """Delete the temporary files killed :func:`atomic_write` calls of ``path`` left beside it.

    Only ``.<name of path>.<8 characters>.tmp``, only regular files (never a link or a folder) and
    only those unchanged for ``min_age`` seconds: a live writer's file is newer. Returns how many.
    """
    path = Path(path)
    own = re.compile(r"^\." + re.escape(path.name) + _TEMP_TAIL)
    try:
        entries = [e for e in os.scandir(path.parent) if own.match(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    now = time.time()
    for entry in entries:
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < min_age:
            continue
        with contextlib.suppress(FileNotFoundError):  # another process removed it first
            os.unlink(entry.path)
            removed += 1
    if removed:
        log.info("removed %d temporary file(s) of %s that killed writes left", removed, path)
    return removed


def open_no_follow(path: str | Path, flags: int) -> int:
    """``os.open(path, flags)`` that refuses a symbolic link, a non-regular and a hard-linked file.

    Whatever bmnas appends to, truncates or locks in place goes through here: a link planted in a
    run directory or cache can never make bmnas change the file it points to.
    """
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o644)
    except OSError:
        if path.is_symlink():
            raise NotOursError(
                f"{path} is a symbolic link; bmnas never writes through links: remove the link"
            ) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        what = "hard-linked" if st.st_nlink > 1 else "not a regular file"
        raise NotOursError(f"{path} is not a plain file of bmnas' ({what}); remove it")
    return fd


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append ``row`` as one JSON line; an unparsable last line a killed append left is cut first."""
    path = Path(path)
    line = (json.dumps(row) + "\n").encode()
    with naming_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(open_no_follow(path, os.O_RDWR | os.O_CREAT | os.O_APPEND), "a+b") as f:
            _end_with_complete_line(f, path)
            f.write(line)


def _end_with_complete_line(f, path: Path) -> None:
    """Make the file open in ``f`` end with a newline: add one, or cut an incomplete last line."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return
    start = end
    while start > 0:  # find the start of the last line, reading backwards
        chunk_start = max(0, start - 65536)
        f.seek(chunk_start)
        newline = f.read(start - chunk_start).rfind(b"\n")
        if newline >= 0:
            start = chunk_start + newline + 1
            break
        start = chunk_start
    f.seek(start)
    tail = f.read()
    try:
        json.loads(tail)
    except ValueError:  # cut short by a kill: the reader skips it, so drop it before appending
        log.warning("%s: removing an incomplete last line (a run killed while appending it)", path)
        f.truncate(start)
    else:  # a whole row without its newline
        f.write(b"\n")


# -------------------------------------------------------------------------------------------- reads
def read_json(path: str | Path, default: Any = _NO_DEFAULT) -> Any:
    """The JSON value in ``path``.

    Without ``default``: a missing file raises :class:`FileNotFoundError`, one that is not JSON a
    :class:`FileFormatError` naming it. With ``default`` (for files that are simply redone when
    unusable, such as a memo of earlier work), either case returns ``default``.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if default is not _NO_DEFAULT:
            return default
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        if default is not _NO_DEFAULT:
            return default
        raise FileFormatError(f"{path}: not a readable JSON file ({err}); repair or delete it") from None


def read_jsonl(path: str | Path | None) -> list[Any]:
    """The rows of a JSON-lines file; ``[]`` when there is none (``path`` missing or None).

    Blank lines are ignored. An unparsable last line (a kill during an append) is skipped with a
    warning; an unparsable line before it raises :class:`FileFormatError` with its line number.
    """
    return [row for _, row in read_jsonl_lines(path)]


def read_jsonl_lines(path: str | Path | None) -> list[tuple[int, Any]]:
    """:func:`read_jsonl`'s rows with their line numbers (1-based), for messages about one row."""
    if path is None or not Path(path).exists():
        return []
    path = Path(path)
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()  # a cut character too
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append((i + 1, json.loads(line)))
        except (ValueError, RecursionError) as err:
            if i == last:
                log.warning("%s: skipping line %d, cut short (a run killed while writing it)", path, i + 1)
                break
            raise FileFormatError(
                f"{path}, line {i + 1}: not valid JSON ({err}); the file is damaged: repair or delete "
                f"that line (its work is then redone)"
            ) from None
    return rows


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# -------------------------------------------------------------------------------------- directories
def make_staging_dir(final: Path) -> Path:
    """A fresh temporary directory beside ``final`` (same file system, so publishing is a rename)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.parent))


def publish_dir(staging: Path, final: Path) -> bool:
    """Move a fully written ``staging`` directory to ``final`` atomically.

    An existing ``final`` is moved aside and deleted first. Returns False (and deletes ``staging``)
    when another process published ``final`` in between; the caller then reads theirs.
    """
    if final.exists():
        trash = final.with_name(f".{final.name}.{uuid.uuid4().hex}.old")
        try:
            os.replace(final, trash)
        except FileNotFoundError:
            pass
        else:
            shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(staging, final)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if final.is_dir():
            return False
        raise
    return True


def remove_dir(path: Path) -> None:
    """Delete a directory (first renamed, so that a reader never sees it half-deleted)."""
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
    try:
        os.replace(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def default_root() -> Path:
    """The cache root: ``$BMNAS_CACHE`` if set, else ``~/.cache/bmnas`` (datasets, backbones, features)."""
    return Path(os.environ.get("BMNAS_CACHE") or Path.home() / ".cache" / "bmnas").expanduser()
