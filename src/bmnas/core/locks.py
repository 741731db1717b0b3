"""Advisory, exclusive file locks: one process at a time per run directory or cache entry.

POSIX systems use ``flock``; Windows locks the file's first byte with ``msvcrt.locking``. Either way
the operating system drops the lock when its process dies, so a killed run never leaves a stale
lock. The lock file holds the owner's process id, which error messages quote (on Windows another
process cannot read a locked byte: the holder is then "unknown").
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .fileio import open_no_follow

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

_HELD: dict[Path, int] = {}  # lock file -> file descriptor, for the locks this process holds


def try_lock(path: str | Path) -> bool:
    """Take the lock ``path`` without waiting; False when another process (or descriptor) holds it."""
    path = Path(path)
    if path in _HELD:
        return True
    fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)  # no truncation before the lock is ours
    if not _lock(fd, wait=False):
        os.close(fd)
        return False
    os.ftruncate(fd, 0)  # our own plain, singly linked file (open_no_follow checked)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[path] = fd
    return True


def holder(path: str | Path) -> str:
    """The process id written in lock file ``path``, or ``"unknown"``."""
    try:
        return Path(path).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def release(path: str | Path) -> None:
    """Release the lock ``path`` if this process holds it (the file stays, so no race on its inode)."""
    fd = _HELD.pop(Path(path), None)
    if fd is not None:
        _unlock(fd)
        os.close(fd)


def release_all() -> None:
    """Release every lock this process holds (the end of a command)."""
    for path in list(_HELD):
        release(path)


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold the lock ``path`` for the ``with`` block, waiting for another holder to finish."""
    path = Path(path)
    fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)
    try:
        _lock(fd, wait=True)
        yield
    finally:
        _unlock(fd)
        os.close(fd)


def _lock(fd: int, wait: bool) -> bool:
    """Lock the open file ``fd`` exclusively; False when ``wait`` is off and another holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True
    while True:  # msvcrt: byte 0, whatever the file's length; LK_NBLCK fails at once when held
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            if not wait:
                return False
            time.sleep(0.1)


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
