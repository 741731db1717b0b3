"""Linear probe: the simplest baseline a user would try first, so no searched network may hide behind it.

Logistic regression (scikit-learn) on the concatenation of each modality's last feature, each
pooled feature flattened to ``L_k · C_in`` values and standardised on the train split. The inverse
regularisation strength ``C`` is chosen like a network's epoch count: by its val score when fitted
on train alone, or with ``train.select_folds = k`` by its mean score over the k folds of train + val
(:func:`bmnas.engine.folds.kfold`, the folds every network of the run is scored on); then the
probe is refit on train + val and tested once — the evaluation stage's recipe. Multilabel tasks fit
one binary probe per label (one-vs-rest).

The fitted probe is a network (:func:`fit_probe`): a :class:`~bmnas.space.found.FoundNet` of a
genotype without Cells whose linear path is the regression, ``logits = W · (x − μ) / σ + b``; it is
saved, loaded, predicted with and exported like every other trained network, and its test metrics
are that network's.
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

from ..core.data import FeatureData, FeatureSplit, TaskInfo, memo_of, merge_splits
from ..core.genotype import FeatureSpec, Genotype, last_feature, modalities
from ..engine.folds import kfold
from ..engine.metrics import compute_metrics, primary_metric
from ..space.found import FoundNet

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


def _scores_by_C(data: FeatureData, names: Sequence[str], seed: int, threshold: float) -> dict[float, float]:
    """Val score of the probe fitted on train, per ``C`` of :data:`C_GRID`."""
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
    return scores


def choose_C(
    data: FeatureData, names: Sequence[str], seed: int = 0, threshold: float = 0.5, folds: int = 0
) -> tuple[float, float]:
    """The ``C`` of :data:`C_GRID` with the best selection score (ties: stronger regularisation), and
    that score: the val score when fitted on train (``folds`` = 0), or the mean over the ``folds``
    folds of train + val of each fold's held-out score when fitted on the rest. Memoised per train
    split, features, seed and folds.
    """
    key = ("probe C", tuple(names), seed, threshold, folds, data["val"].labels.tobytes())
    memo = memo_of(data["train"].labels)
    if key not in memo:
        if folds >= 2:
            per_fold = [_scores_by_C(d, names, seed, threshold) for d in kfold(data, folds, seed)]
            scores = {C: float(np.mean([s[C] for s in per_fold])) for C in C_GRID}
        else:
            scores = _scores_by_C(data, names, seed, threshold)
        best = max(C_GRID, key=lambda c: (scores[c], -c))
        memo[key] = (best, scores[best])
    return memo[key]


@torch.no_grad()
def init_from_probe(model, fit: LinearFit) -> None:
    """Start ``model`` (a FoundNet with a linear path) as the probe ``fit``: the linear path gets the
    probe's standardisation and weights and the head's classifier (if it has a head) starts at zero,
    so before training ``logits = W · (x − μ) / σ + b`` (in eval mode, to float precision) and
    training learns a residual on top.

    The normalisation divides by ``sqrt(σ² + ε)`` (BatchNorm's ε); the weights are scaled by
    ``sqrt(σ² + ε) / σ`` so that it is the regression's ``(x − μ) / σ`` all the same.
    """
    norm, linear = model.linear[0], model.linear[1]
    norm.running_mean.copy_(torch.as_tensor(fit.mean, dtype=norm.running_mean.dtype))
    norm.running_var.copy_(torch.as_tensor(fit.var, dtype=norm.running_var.dtype))
    scale = np.sqrt((fit.var + norm.eps) / fit.var)
    linear.weight.copy_(torch.as_tensor(fit.weight * scale, dtype=linear.weight.dtype))
    linear.bias.copy_(torch.as_tensor(fit.bias, dtype=linear.bias.dtype))
    if model.head is not None:
        torch.nn.init.zeros_(model.head.classifier.weight)
        torch.nn.init.zeros_(model.head.classifier.bias)


def probe_genotype(specs: Sequence[FeatureSpec], names: Sequence[str], C: int, L: int) -> Genotype:
    """The probe as a genotype: no Cells, no head states, a linear path from ``names``.

    ``C`` is unused by such a network (it has no projections) but kept as the run's; ``L`` is the
    length the run pools its features to.
    """
    return Genotype(C, L, tuple(specs), (), (), linear=tuple(names))


@dataclass(frozen=True)
class ProbeResult:
    """The fitted probe: its result ``row`` (as a trained network's), the network itself (eval mode)
    and its test logits."""

    row: dict
    model: FoundNet
    test_logits: np.ndarray  # (N_test, K), the test rows in order


def _network_logits(model: FoundNet, split: FeatureSplit, batch: int = 4096) -> np.ndarray:
    feats = {n: torch.tensor(np.asarray(split.features[n], dtype=np.float32)) for n in model.used}  # a copy
    with torch.no_grad():
        out = [
            model({n: f[i : i + batch] for n, f in feats.items()}).numpy()
            for i in range(0, len(split), batch)
        ]
    return np.concatenate(out) if out else np.zeros((0, model.linear[1].out_features), np.float32)


def fit_probe(
    data: FeatureData,
    seed: int = 0,
    threshold: float = 0.5,
    folds: int = 0,
    C: int = 8,
    L: int | None = None,
) -> ProbeResult:
    """Choose ``C`` (:func:`choose_C`; ``folds`` as ``train.select_folds``), refit on train + val and
    test the resulting network once.

    ``C``, ``L``: the genotype's width (unused) and length (default: the longest feature's).
    """
    t0 = time.perf_counter()
    names = probe_features(data)
    task = data.task
    best_C, val_score = choose_C(data, names, seed, threshold, folds)
    specs = data.specs()
    genotype = probe_genotype(specs, names, C, L or max(f.length for f in specs))
    fit = fit_linear(merge_splits(data["train"], data["val"]), names, task, best_C, seed)
    model = FoundNet(genotype, task.num_outputs, dropout=0.0)
    init_from_probe(model, fit)
    model.eval()
    logits = _network_logits(model, data["test"])
    test = compute_metrics(task, logits, data["test"].labels, threshold)
    n_in = fit.weight.shape[1]
    multilabel = task.type == "multilabel"
    n_params = (n_in + 1) * (task.num_outputs if (multilabel or task.num_outputs > 2) else 1)
    row = {
        "test": test,
        "val": val_score,
        "C": best_C,
        "features": names,
        "params": {"total": int(n_params), "fusion": 0, "classifier": int(n_params)},
        "epochs": 0,
        "train_seconds": time.perf_counter() - t0,
    }
    return ProbeResult(row, model, logits)


def linear_probe(data: FeatureData, seed: int = 0, threshold: float = 0.5, folds: int = 0) -> dict:
    """The result row of :func:`fit_probe`: ``test``, ``val`` (selection score), ``C``, ``features``,
    ``params``, ``epochs`` (0), ``train_seconds``."""
    return fit_probe(data, seed, threshold, folds).row
