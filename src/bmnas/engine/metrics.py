"""Task metrics, computed with scikit-learn (docs/DESIGN.md §6 Head, losses, metrics)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from ..core.data import TaskInfo


def primary_metric(task: TaskInfo) -> str:
    """The headline metric: accuracy (multiclass) or weighted F1 (multilabel, the paper's MM-IMDB)."""
    return "accuracy" if task.type == "multiclass" else "f1_weighted"


def compute_metrics(task: TaskInfo, logits: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """Metrics of ``logits (N, num_outputs)`` against ``labels``.

    Multiclass: accuracy, macro F1. Multilabel (``σ(logit) > threshold``): weighted, macro and
    samples F1, and exact-match accuracy.
    """
    if task.type == "multiclass":
        pred = logits.argmax(axis=1)
        return {
            "accuracy": float(accuracy_score(labels, pred)),
            "f1_macro": float(
                f1_score(labels, pred, average="macro", labels=np.arange(task.num_outputs), zero_division=0)
            ),
        }
    pred = (1.0 / (1.0 + np.exp(-logits)) > threshold).astype(np.int64)
    y = labels.astype(np.int64)
    return {
        "f1_weighted": float(f1_score(y, pred, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(y, pred, average="macro", zero_division=0)),
        "f1_samples": float(f1_score(y, pred, average="samples", zero_division=0)),
        "subset_accuracy": float(accuracy_score(y, pred)),
    }
