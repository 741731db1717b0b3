"""A network's per-row predictions on one split, saved beside its run: ``test_predictions.npz``.

What paired statistics between networks need (:mod:`bmnas.report.stats`): for every row of the
split, in the split's order, the logits, the decision they imply and the true label. The file is a
NumPy ``.npz`` (no pickles) of four entries, written atomically:

=============== ============================================================================
``meta``        a JSON string, :data:`~bmnas.core.schemas.PREDICTIONS_META`: format
                ``bmnas.predictions``, version 1, the split, the task, the threshold, ``rows``
``logits``      float32 or float64 ``(N, K)`` (as computed: networks float32, the probe float64), finite
``predicted``   int64 ``(N,)`` class indices ``argmax_k logit_k`` (multiclass), or a 0/1 ``(N, K)``
                label set ``σ(logit_k) > threshold`` (multilabel): the rules of
                :func:`bmnas.engine.metrics.compute_metrics`, so the saved metrics are the run's
``labels``      int64, the split's labels: ``(N,)`` classes or a 0/1 ``(N, K)`` label set
=============== ============================================================================

:func:`load` checks all of it (types, shapes, ranges, that ``predicted`` follows from ``logits``)
before returning anything, and raises :class:`~bmnas.core.fileio.FileFormatError` naming the file.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.data import TaskInfo
from ..core.fileio import FileFormatError, atomic_write
from ..core.schema import check
from ..core.schemas import PREDICTIONS_FORMAT, PREDICTIONS_META
from .metrics import compute_metrics

FILE = "test_predictions.npz"
VERSION = 1
MAX_ENTRY_BYTES = 1 << 32  # far above any split bmnas trains on (MM-IMDB's test: 7,799 x 23 logits)


@dataclass(frozen=True)
class SavedPredictions:
    """Logits, decisions and labels of ``N`` rows of ``split``, in the split's order."""

    logits: np.ndarray
    predicted: np.ndarray
    labels: np.ndarray
    task: TaskInfo
    threshold: float = 0.5
    split: str = "test"

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @classmethod
    def of(
        cls,
        logits: np.ndarray,
        labels: np.ndarray,
        task: TaskInfo,
        threshold: float = 0.5,
        split: str = "test",
    ):
        """The predictions ``logits`` imply (:func:`decide`), with the split's ``labels``."""
        logits = np.asarray(logits)
        logits = logits if logits.dtype in (np.float32, np.float64) else logits.astype(np.float32)
        return cls(
            logits,
            decide(logits, task, threshold),
            np.asarray(labels).astype(np.int64),
            task,
            threshold,
            split,
        )

    def metrics(self) -> dict:
        """The task metrics of these rows (:func:`bmnas.engine.metrics.compute_metrics`)."""
        return compute_metrics(self.task, self.logits, self.labels, self.threshold)

    def save(self, path: str | Path) -> Path:
        """Write the file atomically (a temporary file beside ``path``, then a rename)."""
        meta = {
            "format": PREDICTIONS_FORMAT,
            "version": VERSION,
            "split": self.split,
            "task": {"type": self.task.type, "num_outputs": self.task.num_outputs},
            "threshold": self.threshold,
            "rows": len(self),
        }

        def write(tmp: Path) -> None:
            with tmp.open("wb") as fh:  # a file object: np.savez would add ".npz" to a name
                np.savez(
                    fh,
                    meta=np.array(json.dumps(meta)),
                    logits=self.logits,
                    predicted=self.predicted.astype(np.int64),
                    labels=self.labels.astype(np.int64),
                )

        return atomic_write(path, write)


def decide(logits: np.ndarray, task: TaskInfo, threshold: float = 0.5) -> np.ndarray:
    """``argmax_k logit_k`` per row (multiclass) or the 0/1 label set ``σ(logit_k) > threshold``."""
    if task.type == "multiclass":
        return logits.argmax(axis=1).astype(np.int64)
    return (1.0 / (1.0 + np.exp(-logits)) > threshold).astype(np.int64)


def load(path: str | Path) -> SavedPredictions:
    """The predictions saved in ``path``, every entry checked (see the module).

    Raises:
        FileNotFoundError: no such file.
        FileFormatError: the file is not one bmnas wrote, or is damaged (the message names the entry).
    """
    path = Path(path)
    fix = "delete it to have it computed again"
    try:
        with np.load(path, allow_pickle=False) as npz:
            sizes = {i.filename.removesuffix(".npy"): i.file_size for i in npz.zip.infolist()}
            missing = [k for k in ("meta", "logits", "predicted", "labels") if k not in sizes]
            if missing:
                raise FileFormatError(f"{path}: no entry {missing[0]!r}; {fix}")
            big = next((k for k, v in sizes.items() if v > MAX_ENTRY_BYTES), None)
            if big is not None:
                raise FileFormatError(f"{path}: entry {big!r} is too large for a file bmnas wrote; {fix}")
            meta_text, logits, predicted, labels = (npz[k] for k in ("meta", "logits", "predicted", "labels"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise FileFormatError(
            f"{path}: not a readable predictions file ({type(err).__name__}: {err}); {fix}"
        ) from None
    if meta_text.shape != () or meta_text.dtype.kind != "U":
        raise FileFormatError(f"{path}: meta must be one JSON string; {fix}")
    try:
        meta = json.loads(str(meta_text))
    except (ValueError, RecursionError):
        raise FileFormatError(f"{path}: meta is not JSON; {fix}") from None
    check(meta, PREDICTIONS_META, f"{path}, meta", fix)
    task = TaskInfo(meta["task"]["type"], meta["task"]["num_outputs"])
    n, k = meta["rows"], task.num_outputs
    problem = _arrays_problem(logits, predicted, labels, task, n)
    if problem is None and not np.array_equal(predicted, decide(logits, task, meta["threshold"])):
        problem = "predicted does not follow from the logits"
    if problem is not None:
        raise FileFormatError(f"{path}: {problem} (meta: {n} rows, {k} outputs, {task.type}); {fix}")
    return SavedPredictions(logits, predicted, labels, task, float(meta["threshold"]), meta["split"])


def _arrays_problem(
    logits: np.ndarray, predicted: np.ndarray, labels: np.ndarray, task: TaskInfo, n: int
) -> str | None:
    k = task.num_outputs
    if logits.dtype not in (np.float32, np.float64) or logits.shape != (n, k):
        return f"logits must be float32 or float64 of shape ({n}, {k}), got {logits.dtype} {logits.shape}"
    if not np.isfinite(logits).all():
        return "logits must be finite"
    shape = (n,) if task.type == "multiclass" else (n, k)
    hi = k - 1 if task.type == "multiclass" else 1
    for name, arr in (("predicted", predicted), ("labels", labels)):
        if arr.dtype != np.int64 or arr.shape != shape:
            return f"{name} must be int64 of shape {shape}, got {arr.dtype} {arr.shape}"
        if arr.size and (arr.min() < 0 or arr.max() > hi):
            return f"{name} must hold values in [0, {hi}]"
    return None
