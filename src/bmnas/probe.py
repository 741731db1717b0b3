"""Linear probe: the simplest baseline a user would try first, so no searched network may hide behind it.

Logistic regression (scikit-learn) on the concatenation of each modality's last feature, each
pooled feature flattened to ``L_k · C_in`` values and standardised on the train split. The inverse
regularisation strength ``C`` is chosen on val (trained on train alone), then the probe is refit on
train + val and tested once — the evaluation stage's recipe. Multilabel tasks fit one binary
probe per label (one-vs-rest).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from .baselines import last_feature, modalities
from .data import FeatureData, FeatureSplit
from .metrics import compute_metrics, primary_metric

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
MAX_ITER = 500


def probe_features(data: FeatureData) -> list[str]:
    """The features the probe reads: the last feature of each modality."""
    from .searcher import feature_specs

    specs = feature_specs(data)
    return [last_feature(specs, m) for m in modalities(specs)]


def _design(split: FeatureSplit, names: list[str]) -> np.ndarray:
    return np.concatenate([split.features[n].reshape(len(split), -1) for n in names], axis=1)


def _fit(x: np.ndarray, y: np.ndarray, C: float, multilabel: bool, seed: int):
    model = LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed)
    if multilabel:
        model = OneVsRestClassifier(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


def _logits(model, x: np.ndarray, multilabel: bool) -> np.ndarray:
    out = model.decision_function(x)
    if not multilabel and out.ndim == 1:  # binary: sklearn returns the positive class's margin only
        out = np.stack([np.zeros_like(out), out], axis=1)
    return out


def linear_probe(data: FeatureData, seed: int = 0, threshold: float = 0.5) -> dict:
    """Fit, select ``C`` on val, refit on train + val, test: a result row like a trained network's."""
    t0 = time.perf_counter()
    names = probe_features(data)
    task, metric = data.task, primary_metric(data.task)
    multilabel = task.type == "multilabel"
    xs = {s: _design(data[s], names) for s in ("train", "val", "test")}
    scaler = StandardScaler().fit(xs["train"])
    z = {s: scaler.transform(x) for s, x in xs.items()}
    val_scores = {}
    for C in C_GRID:
        model = _fit(z["train"], data["train"].labels, C, multilabel, seed)
        val_scores[C] = compute_metrics(
            task, _logits(model, z["val"], multilabel), data["val"].labels, threshold
        )[metric]
    best_C = max(C_GRID, key=lambda c: (val_scores[c], -c))  # ties: the stronger regularisation
    fit_x = np.concatenate([xs["train"], xs["val"]])
    scaler = StandardScaler().fit(fit_x)
    model = _fit(
        scaler.transform(fit_x),
        np.concatenate([data["train"].labels, data["val"].labels]),
        best_C,
        multilabel,
        seed,
    )
    test = compute_metrics(
        task, _logits(model, scaler.transform(xs["test"]), multilabel), data["test"].labels, threshold
    )
    n_in = xs["train"].shape[1]
    n_params = (n_in + 1) * (task.num_outputs if (multilabel or task.num_outputs > 2) else 1)
    return {
        "test": test,
        "val": val_scores[best_C],
        "C": best_C,
        "features": names,
        "params": {"total": int(n_params), "fusion": 0, "classifier": int(n_params)},
        "train_seconds": time.perf_counter() - t0,
    }
