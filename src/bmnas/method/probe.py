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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from ..core.data import FeatureData, FeatureSplit, TaskInfo, memo_of
from ..core.genotype import last_feature, modalities
from ..engine.metrics import compute_metrics, primary_metric

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
MAX_ITER = 500


def probe_features(data: FeatureData) -> list[str]:
    """The features the probe reads: the last feature of each modality."""

    specs = data.specs()
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


@dataclass(frozen=True)
class LinearFit:
    """A fitted probe in the form of a network's linear path: ``logits = W · (x − μ) / σ + b``.

    ``mean``/``var`` (D,) standardise the flattened features, ``weight`` (num_outputs, D) and
    ``bias`` (num_outputs,) are the logistic regression's, laid out as the network's logits.
    """

    mean: np.ndarray
    var: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    C: float


def fit_linear(
    split: FeatureSplit, names: Sequence[str], task: TaskInfo, C: float, seed: int = 0
) -> LinearFit:
    """Standardise ``names`` on ``split`` and fit the logistic regression of inverse strength ``C``."""
    multilabel = task.type == "multilabel"
    x = _design(split, list(names))
    scaler = StandardScaler().fit(x)
    model = _fit(scaler.transform(x), split.labels, C, multilabel, seed)
    D, K = x.shape[1], task.num_outputs
    weight, bias = np.zeros((K, D)), np.zeros(K)
    if multilabel:  # one binary regression per label; a label constant in train has no coefficients
        for k, est in enumerate(model.estimators_):
            if hasattr(est, "coef_"):
                weight[k], bias[k] = est.coef_[0], est.intercept_[0]
    else:
        rows = model.classes_.astype(int)
        if model.coef_.shape[0] == 1:  # binary: sklearn keeps the positive class's margin only
            weight[rows[1]], bias[rows[1]] = model.coef_[0], model.intercept_[0]
        else:
            weight[rows], bias[rows] = model.coef_, model.intercept_
    var = np.where(scaler.scale_ == 1.0, 1.0, scaler.var_)  # StandardScaler leaves constant columns unscaled
    return LinearFit(scaler.mean_, var, weight, bias, C)


def choose_C(
    data: FeatureData, names: Sequence[str], seed: int = 0, threshold: float = 0.5
) -> tuple[float, float]:
    """The ``C`` of :data:`C_GRID` with the best val score when fitted on train (ties: stronger
    regularisation), and that score. Memoised per train split, features and seed.
    """
    key = ("probe C", tuple(names), seed, threshold, data["val"].labels.tobytes())
    memo = memo_of(data["train"].labels)
    if key not in memo:
        metric = primary_metric(data.task)
        multilabel = data.task.type == "multilabel"
        xs = {s: _design(data[s], list(names)) for s in ("train", "val")}
        scaler = StandardScaler().fit(xs["train"])
        z = {s: scaler.transform(x) for s, x in xs.items()}
        scores = {}
        for C in C_GRID:
            model = _fit(z["train"], data["train"].labels, C, multilabel, seed)
            logits = _logits(model, z["val"], multilabel)
            scores[C] = compute_metrics(data.task, logits, data["val"].labels, threshold)[metric]
        best = max(C_GRID, key=lambda c: (scores[c], -c))
        memo[key] = (best, scores[best])
    return memo[key]


@torch.no_grad()
def init_from_probe(model, fit: LinearFit) -> None:
    """Start ``model`` (a FoundNet with a linear path) as the probe ``fit``: the linear path gets the
    probe's standardisation and weights and the head's classifier starts at zero, so before training
    ``logits = W · (x − μ) / σ + b`` exactly (in eval mode) and training learns a residual on top.
    """
    norm, linear = model.linear[0], model.linear[1]
    norm.running_mean.copy_(torch.as_tensor(fit.mean, dtype=norm.running_mean.dtype))
    norm.running_var.copy_(torch.as_tensor(fit.var, dtype=norm.running_var.dtype))
    linear.weight.copy_(torch.as_tensor(fit.weight, dtype=linear.weight.dtype))
    linear.bias.copy_(torch.as_tensor(fit.bias, dtype=linear.bias.dtype))
    torch.nn.init.zeros_(model.head.classifier.weight)
    torch.nn.init.zeros_(model.head.classifier.bias)


def linear_probe(data: FeatureData, seed: int = 0, threshold: float = 0.5) -> dict:
    """Fit, select ``C`` on val, refit on train + val, test: a result row like a trained network's."""
    return fit_probe(data, seed, threshold)[0]


def fit_probe(data: FeatureData, seed: int = 0, threshold: float = 0.5) -> tuple[dict, np.ndarray]:
    """:func:`linear_probe`'s result row and the refit probe's test logits ``(N_test, K)``, rows in order."""
    t0 = time.perf_counter()
    names = probe_features(data)
    task = data.task
    multilabel = task.type == "multilabel"
    best_C, val_score = choose_C(data, names, seed, threshold)
    xs = {s: _design(data[s], names) for s in ("train", "val", "test")}
    fit_x = np.concatenate([xs["train"], xs["val"]])
    scaler = StandardScaler().fit(fit_x)
    model = _fit(
        scaler.transform(fit_x),
        np.concatenate([data["train"].labels, data["val"].labels]),
        best_C,
        multilabel,
        seed,
    )
    logits = _logits(model, scaler.transform(xs["test"]), multilabel)
    test = compute_metrics(task, logits, data["test"].labels, threshold)
    n_in = xs["train"].shape[1]
    n_params = (n_in + 1) * (task.num_outputs if (multilabel or task.num_outputs > 2) else 1)
    row = {
        "test": test,
        "val": val_score,
        "C": best_C,
        "features": names,
        "params": {"total": int(n_params), "fusion": 0, "classifier": int(n_params)},
        "train_seconds": time.perf_counter() - t0,
    }
    return row, logits
