"""The errors a user can fix: bad data, configuration, genotype or run directory.

Every one of them derives from :class:`BmnasError`; the command line prints its message as one
line (``bmnas: error: ...``, exit code 2) and keeps tracebacks for real bugs.
"""

from __future__ import annotations


class BmnasError(Exception):
    """Invalid input; the message says what is wrong, where, and how to fix it."""


class DataError(BmnasError, ValueError):
    """Invalid input data; the message says what is wrong, where, and how to fix it."""


class NotOursError(BmnasError, RuntimeError):
    """A file or directory bmnas did not write (a user's, a link, a device) where bmnas would write."""


class MissingDependencyError(BmnasError, ImportError):
    """An optional package a feature needs is not installed; the message says how to install it."""


class PreparedDataError(BmnasError, RuntimeError):
    """A dataset's prepared files are missing, corrupt or stale; the dataset prepares them again."""


class WriteError(BmnasError, OSError):
    """A write the machine refused (disk full, quota, read-only, permissions); names the file and the fix.

    Also an :class:`OSError`, so code that handles failed writes still does.
    """
