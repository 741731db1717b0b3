"""What in a run directory is bmnas' own: the marker, the names bmnas writes, and safe removal.

bmnas never deletes or changes a file it did not write. A directory becomes a run directory when
bmnas claims it, and only if it is new, empty, or already a run directory:

* the marker ``RUN_DIR/.bmnas-run`` (JSON: format, version, bmnas version) says bmnas made it;
* a directory an older bmnas wrote (no marker, but a ``fingerprint.json`` or ``genotype.json`` in
  bmnas' own format) is adopted, so old runs still resume;
* anything else is refused with one line before a byte is written (no lock file, no config).

``--fresh`` removes only files whose names bmnas writes (:data:`OWNED_FILES`, bmnas' plots in
``plots/``, its own temporary files, sub-runs that carry the marker). Nothing is ever removed or
written through a symbolic link: a link where bmnas would write is refused, one line naming it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from pathlib import Path

from .._version import __version__
from ..core.errors import NotOursError
from ..core.fileio import is_own_temp, write_json

MARKER = ".bmnas-run"
MARKER_FORMAT = "bmnas.run"
MARKER_VERSION = 1
LOCK = ".lock"
# Files bmnas writes at the top of a run directory (globs); a file matching none is never touched.
OWNED_FILES = (
    MARKER,
    LOCK,
    "config.yaml",
    "fingerprint.json",
    "genotype.json",
    "recommended_genotype.json",
    "model.pt",
    "linear_probe.pt",
    "history.jsonl",
    "metrics.json",
    "split.csv",
    "smbo.jsonl",
    "rerank.jsonl",
    "perturb.json",
    "robustness.md",
    "robustness.csv",
    "robustness.json",
    "robustness.png",
    "ablation.md",
    "ablation.csv",
    "ablation.png",
    "ablation_paired.csv",
    "test_predictions.npz",
    "study.db",
    ".sweep.lock",
    "best_config.yaml",
    "trials.csv",
    "sweep.png",
    "*.ckpt.pt",
    "*_history.jsonl",
    "*_selection.json",
    "run.log",
    "devices.json",
)
# Files a user may have of the same name: bmnas' own only when they start with bmnas' mark.
MARKED_FILES = {"README.md": "<!-- bmnas model card"}
# Folders bmnas writes into, and what it writes there.
OWNED_DIRS = {
    "plots": (
        *("search_curves.png", "arch_weights.png", "search_diagnostics.png", "genotype.png"),
        "recommended_genotype.png",
    ),
    "ablate": ("spec.json", "results.jsonl", "lock"),  # and its jobs' run directories
    "trials": (),  # a sweep's trials: run directories
    "logs": ("*.csv", "events.out.tfevents.*"),  # --logger csv | tensorboard
}


def is_owned_name(name: str, patterns: Iterable[str] = OWNED_FILES) -> bool:
    return any(Path(name).match(p) for p in patterns)


def is_marked_ours(path: Path) -> bool:
    """A :data:`MARKED_FILES` file that bmnas wrote (its first bytes are bmnas' mark); never a link."""
    mark = MARKED_FILES.get(path.name)
    if mark is None or path.is_symlink() or not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            return f.read(len(mark)).decode("utf-8", "replace") == mark
    except OSError:
        return False


def is_left_temp(path: Path) -> bool:
    """A temporary file a killed write of bmnas left: ``.<name>.<random>.tmp`` (before 0.2 ``<name>.tmp``)."""
    return is_own_temp(path) or (path.name.endswith(".tmp") and is_owned_name(path.name[: -len(".tmp")]))


def has_marker(path: Path) -> bool:
    marker = path / MARKER
    if marker.is_symlink() or not marker.is_file():
        return False
    try:
        d = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(d, dict) and d.get("format") == MARKER_FORMAT


def _written_by_old_bmnas(path: Path) -> bool:
    """A run directory of bmnas < 0.4 (no marker): its fingerprint or genotype is in bmnas' format."""
    for name, check in (
        ("fingerprint.json", lambda d: isinstance(d.get("data"), dict)),
        ("genotype.json", lambda d: d.get("format") == "bmnas.genotype"),
    ):
        file = path / name
        if file.is_file() and not file.is_symlink() and file.stat().st_size < 16 << 20:
            try:
                d = json.loads(file.read_text())
            except (OSError, UnicodeDecodeError, ValueError, RecursionError):
                continue
            if isinstance(d, dict) and check(d):
                return True
    return False


def claim(path: Path, what: str = "--out") -> None:
    """Make ``path`` a bmnas run directory, or refuse (one line) before anything is written.

    New or empty: created and marked. Marked, or written by an older bmnas: used (and marked).
    Anything else, a symbolic link, or a file: :class:`NotOursError`, and nothing is touched.
    """
    if not check_claimable(path, what):
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            pass
        except OSError as err:
            raise NotOursError(f"cannot create the run directory {path} ({err.strerror})") from None
    elif has_marker(path):
        return
    write_json(path / MARKER, {"format": MARKER_FORMAT, "version": MARKER_VERSION, "bmnas": __version__})


def check_claimable(path: Path, what: str = "--out") -> bool:
    """Refuse (one line, :class:`NotOursError`) a ``path`` :func:`claim` would refuse, writing nothing;
    returns whether the directory exists. Lets a command refuse its ``--out`` before long work."""
    if path.is_symlink():
        raise NotOursError(f"{what} {path} is a symbolic link; give the real directory or a new one")
    if path.exists() and not path.is_dir():
        raise NotOursError(f"{what} {path} is a file, not a directory; give a new or empty directory")
    if path.is_dir():
        if has_marker(path):
            return True
        entries = sorted(p.name for p in path.iterdir())
        if entries and not _written_by_old_bmnas(path):
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise NotOursError(
                f"{what} {path} is not a bmnas run directory (it holds {shown}, which bmnas did not "
                f"write); bmnas writes only into a new, empty or bmnas run directory: choose another {what}"
            )
        return True
    return False


def refuse_links(path: Path) -> None:
    """One line for the first symbolic link where bmnas would write in run directory ``path``."""
    names = sorted(n for n in (p.name for p in path.iterdir()) if is_owned_name(n) or n in OWNED_DIRS)
    candidates = [path / n for n in names]
    for folder, files in OWNED_DIRS.items():
        d = path / folder
        if d.is_dir() and not d.is_symlink():
            candidates += [d / name for name in files]
    for link in (c for c in candidates if c.is_symlink()):
        raise NotOursError(
            f"{link} is a symbolic link; bmnas never writes or deletes through links: "
            f"remove the link, or choose another --out"
        )


def remove_own_temps(path: Path, depth: int = 4, inside: bool = False) -> int:
    """Delete the temporary files killed writes of bmnas left under ``path`` (never through a link).

    Looks into bmnas' folders (:data:`OWNED_DIRS`, marked sub-runs and what they hold), ``depth`` deep.
    """
    removed = 0
    for entry in _entries(path):
        if entry.is_symlink():
            continue
        if entry.is_dir() and depth > 1 and (inside or entry.name in OWNED_DIRS or has_marker(entry)):
            removed += remove_own_temps(entry, depth - 1, inside=True)
        elif is_left_temp(entry) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def clear(path: Path, keep: Iterable[str] = (MARKER, LOCK)) -> list[Path]:
    """``--fresh``: delete what bmnas wrote in run directory ``path``; the user's files stay.

    Removes files named in :data:`OWNED_FILES`, bmnas' files in :data:`OWNED_DIRS` (a folder only
    if it is then empty), and marked sub-runs, recursively. Links are never followed nor removed.
    Returns the paths removed.
    """
    removed: list[Path] = []
    keep = set(keep)
    for entry in _entries(path):
        if entry.is_symlink() or entry.name in keep:
            continue
        if entry.is_file() and (is_owned_name(entry.name) or is_left_temp(entry) or is_marked_ours(entry)):
            entry.unlink(missing_ok=True)
            removed.append(entry)
        elif entry.is_dir() and entry.name in OWNED_DIRS:
            removed += _clear_folder(entry, OWNED_DIRS[entry.name])
    return removed


def clear_folder(folder: Path, names: tuple[str, ...], keep: Iterable[str] = ()) -> list[Path]:
    """Delete bmnas' files ``names``, its temporary files and marked sub-runs in ``folder``."""
    return _clear_folder(folder, names, set(keep))


def _clear_folder(folder: Path, names: tuple[str, ...], keep: set[str] = frozenset()) -> list[Path]:
    removed: list[Path] = []
    for entry in _entries(folder):
        if entry.is_symlink() or entry.name in keep:
            continue
        if entry.is_file() and (is_owned_name(entry.name, names) or is_left_temp(entry)):
            entry.unlink(missing_ok=True)
            removed.append(entry)
        elif entry.is_dir() and has_marker(entry):  # a sub-run (an ablation's job, a trial)
            removed += clear(entry, keep=())
            _remove_if_empty(entry)
        elif entry.is_dir():  # e.g. ablate/<method>/ holding the seeds' runs
            removed += _clear_folder(entry, ())
    _remove_if_empty(folder)
    return removed


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: a user's file stays, and so does its folder
        folder.rmdir()


def _entries(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
