"""The predictions of a trained network: logits, probabilities, decisions, and their CSV/JSONL rows.

Probabilities are ``softmax(logits)`` (multiclass; prediction = argmax) or ``σ(logits)``
(multilabel; predicted label set = ``{k : σ(logit_k) > threshold}``), the rules of
:func:`bmnas.engine.metrics.compute_metrics`, so metrics of written predictions equal the run's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.data import TaskInfo
from ..core.errors import DataError
from ..core.fileio import write_jsonl
from ..engine.metrics import compute_metrics
from ..report import tables


@dataclass(frozen=True)
class Predictions:
    """Logits and probabilities ``(N, K)`` of N samples, and the decisions they imply."""

    logits: np.ndarray
    probabilities: np.ndarray
    task: TaskInfo
    class_names: tuple[str, ...]
    threshold: float

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @property
    def predicted(self) -> np.ndarray:
        """Class indices ``(N,)`` (multiclass) or a multi-hot ``(N, K)`` int array (multilabel)."""
        if self.task.type == "multiclass":
            return self.logits.argmax(axis=1)
        return (self.probabilities > self.threshold).astype(np.int64)

    def label_names(self) -> list[str | list[str]]:
        """Per sample: the predicted class name, or the list of predicted label names."""
        names = self.class_names
        if self.task.type == "multiclass":
            return [names[i] for i in self.predicted]
        return [[names[k] for k in np.flatnonzero(row)] for row in self.predicted]

    def metrics(self, labels: np.ndarray) -> dict:
        """The run's task metrics (:func:`bmnas.engine.metrics.compute_metrics`) against ``labels``."""
        return compute_metrics(self.task, self.logits, np.asarray(labels), self.threshold)

    def write(self, path: str | Path, labels: np.ndarray | None = None) -> Path:
        """Write one row per sample as CSV (``.csv``) or JSON lines (``.jsonl``/``.json``).

        CSV columns: ``index, prediction[, label], prob_<class>…``; a multilabel prediction or label
        is its names joined by ``;``. JSON lines: ``{"index", "prediction", "probabilities":
        {class: p}[, "label"]}`` with a multilabel prediction as a list of names.
        """
        path = Path(path)
        kind = output_kind(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        preds = self.label_names()
        truth = None if labels is None else self._label_names(np.asarray(labels))
        if kind != "csv":
            rows = []
            for i, (pred, probs) in enumerate(zip(preds, self.probabilities, strict=True)):
                row = {
                    "index": i,
                    "prediction": pred,
                    "probabilities": dict(zip(self.class_names, map(float, probs), strict=True)),
                }
                if truth:
                    row["label"] = truth[i]
                rows.append(row)
            return write_jsonl(path, rows)

        header = [
            "index",
            "prediction",
            *(["label"] if truth else []),
            *(f"prob_{c}" for c in self.class_names),
        ]

        def csv_rows() -> Iterator[list]:
            for i, (pred, probs) in enumerate(zip(preds, self.probabilities, strict=True)):
                names = [pred, *(truth[i : i + 1] if truth else [])]
                cells = [";".join(v) if isinstance(v, list) else v for v in names]  # a multilabel set
                yield [i, *cells, *(repr(float(p)) for p in probs)]

        return tables.write_csv(path, header, csv_rows())

    def _label_names(self, labels: np.ndarray) -> list[str | list[str]]:
        if self.task.type == "multiclass":
            return [self.class_names[int(i)] for i in labels]
        return [[self.class_names[k] for k in np.flatnonzero(row)] for row in labels]


def output_kind(path: Path) -> str:
    """``"csv"`` or ``"jsonl"`` from the file suffix; anything else is a :class:`DataError`."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    raise DataError(f"--out {path}: unknown output type {suffix or '(no suffix)'!r}; use .csv or .jsonl")
