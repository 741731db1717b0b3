"""Pre-training a backbone as a classifier on its own modality, and caching the weights it learns.

bmnas ships no weights for the AV-MNIST, MM-IMDB, NTU and EgoGesture backbones, so each network is
trained once on the train split and its state dict cached under ``root``, beside a JSON sidecar
holding the file's SHA-256 (weights that fail it are trained again) and how they were made.

Two recipes: :func:`train_classifier` runs a fixed number of epochs on inputs that may be large
and lazily read (memory maps, HDF5 rows); :func:`fit_classifier` keeps the epoch with the best val
accuracy, for inputs small enough to hold in memory (AV-MNIST). Both run the search's batch loop
(:func:`bmnas.engine.loop.train_epoch`), optimiser (:func:`~bmnas.engine.loop.build_optimizer`) and
evaluation loop (:func:`~bmnas.engine.loop.forward_batches`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...core.data import TaskInfo
from ...core.errors import DataError
from ...core.fileio import save_torch, write_json_sorted
from ...core.fileio import sha256 as sha256_file
from ...core.progress import bar as progress_bar
from ...engine.loop import (
    AdamSettings,
    Context,
    batch_indices,
    build_optimizer,
    forward_batches,
    split_batches,
    train_epoch,
)
from ..datasets.base import dataset_checksum
from .base import freeze

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ weights
def weights_key(**parts) -> str:
    """A short stable hash of everything that determines pre-trained weights (cache file names)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_weights(
    module: nn.Module, path: str | Path, *, prefix: str = "", strict: bool = True, assign: bool = False
) -> None:
    """Load a state dict file into ``module``; ``prefix`` selects (and strips) a key prefix.

    Accepts a bare state dict or one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``;
    ``assign=True`` for a module built on the meta device (no initialisation cost).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: backbone weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise DataError(f"{path}: cannot be read as a PyTorch state dict ({err})") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing and strict:
        raise DataError(
            f"{path}: missing {len(missing)} tensors for {type(module).__name__} (first: {missing[:4]}); "
            f"the file must hold this architecture's state dict"
        )
    wrong = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise DataError(f"{path}: tensor shapes differ from {type(module).__name__}: {wrong[:4]}")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False, assign=assign)


def save_state(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` to ``path`` atomically (:func:`bmnas.core.fileio.save_torch`): readers see the old
    file or the whole new one, even when several processes pre-train the same backbone at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch(path, state)


def load_cached(module: nn.Module, path: Path) -> dict | None:
    """Load the weights cached at ``path`` into ``module`` and return their sidecar, or None.

    None when there are no cached weights, or when they fail their recorded SHA-256 or do not fit
    ``module`` (logged: the caller trains again).
    """
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
        if sha256_file(path) != meta["sha256"]:
            raise ValueError("SHA-256 mismatch")
        load_weights(module, path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        log.warning("cached backbone weights %s are unusable (%s); pre-training again", path, err)
        return None
    log.info("loaded pre-trained backbone %s", path)
    return meta


def save_cached(state: Mapping[str, torch.Tensor], path: Path, meta: Mapping[str, object]) -> dict:
    """Cache ``state`` at ``path`` beside its sidecar: ``meta`` plus the file's SHA-256 (returned)."""
    save_state(state, path)
    sidecar = {**meta, "sha256": sha256_file(path)}
    write_json_sorted(path.with_suffix(".json"), sidecar)
    return sidecar


def pretrained(
    model: nn.Module, cache_file: Path, train: Callable[[nn.Module], list[float]], meta: dict | None = None
) -> nn.Module:
    """``model`` frozen, with the weights cached at ``cache_file``, or trained by ``train(model)`` first.

    The sidecar records ``meta``, the epoch losses ``train`` returns and the seconds it took.
    """
    cache_file = Path(cache_file)
    if load_cached(model, cache_file) is None:
        start = time.perf_counter()
        losses = train(model)
        seconds = round(time.perf_counter() - start, 2)
        save_cached(model.state_dict(), cache_file, {**(meta or {}), "losses": losses, "seconds": seconds})
    return freeze(model)


# ------------------------------------------------------------------------- fixed-epoch classifier
def merges_last_row(n: int, batch_size: int) -> bool:
    """Whether ``n`` rows in batches of ``batch_size`` end in a lone row, which joins the batch before it.

    Before the batch loop was shared that row was skipped (:func:`train_classifier`) or trained
    alone (:func:`fit_classifier`); such weights are cached under a key that says so.
    """
    return n > batch_size and n % batch_size == 1


def classifier_task(labels: np.ndarray, multilabel: bool) -> TaskInfo:
    """The task of a backbone's labels: multi-hot ``(N, K)`` or class indices ``(N,)``."""
    labels = np.asarray(labels)
    if multilabel:
        return TaskInfo("multilabel", int(labels.shape[1]))
    return TaskInfo("multiclass", int(labels.max()) + 1 if labels.size else 1)


def train_classifier(
    model: nn.Module,
    inputs,
    labels: np.ndarray,
    *,
    multilabel: bool,
    epochs: int,
    to_tensor: Callable[[np.ndarray], torch.Tensor],
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
    desc: str = "pretrain",
    device: str | torch.device | None = None,
) -> list[float]:
    """Train ``model`` (raw batch → logits) on ``inputs[i]``, ``labels[i]``; returns the epoch losses.

    ``inputs`` is any array-like indexed by sorted integer arrays (ndarray, memmap, lazy HDF5 rows);
    each batch (rows sorted, a lone last row joined to the batch before) is converted by
    ``to_tensor``. Adam with weight decay, fixed epochs, no selection. Runs on ``device`` (default:
    CUDA when available, else CPU); the model is left on the CPU.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(labels)
    opt = build_optimizer(model.parameters(), AdamSettings(lr, weight_decay))
    task = classifier_task(labels, multilabel)

    def gather(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_tensor(inputs[idx]).to(device, non_blocking=True)
        y = torch.as_tensor(np.asarray(labels[idx])).to(device)
        return x, y.float() if multilabel else y.long()

    total = epochs * len(split_batches(np.arange(n), batch_size))
    bar = progress_bar(total=total, desc=desc, enabled=progress)

    def tick(_i: int, _loss: torch.Tensor) -> None:
        bar.update()

    losses = []
    for _ in range(epochs):
        batches = [np.sort(b) for b in split_batches(rng.permutation(n), batch_size)]
        losses.append(train_epoch(model, batches, gather, task, opt, Context(device), after_step=tick).rows)
    bar.close()
    model.to("cpu")
    return losses


@dataclass(frozen=True)
class Pretrainer:
    """How the backbones of one dataset are pre-trained: classifiers of its train split, each cached
    as ``root/<dataset>/backbones/<name>-<key>.pt``."""

    raw: Any
    root: Path
    dataset: str
    seed: int
    progress: bool
    epochs: int
    batch_size: int
    multilabel: bool = False

    @property
    def num_classes(self) -> int:
        """Classes of a single-label dataset: its class names, else the largest train label + 1."""
        return len(self.raw.class_names) or int(self.raw.splits["train"].labels.max()) + 1

    def classifier(
        self,
        net: nn.Module,
        modality: str,
        weights: str | Path | None,
        *,
        name: str,
        key: Mapping[str, object],
        to_tensor: Callable[[np.ndarray], torch.Tensor],
    ) -> nn.Module:
        """``net`` frozen, with the user's ``weights`` or trained on ``modality`` by :func:`train_classifier`.

        The cache key hashes ``key`` (the architecture, and the batch size where it is part of the
        recipe) with the dataset's checksum, the seed and the epochs.
        """
        if weights:
            load_weights(net, weights)
            return freeze(net)
        train = self.raw.splits["train"]
        meta = {**key, "data": dataset_checksum(self.raw), "seed": self.seed, "epochs": self.epochs}
        if merges_last_row(len(train.labels), self.batch_size):  # other weights than before: another key
            meta["last_row"] = "joined"
        return pretrained(
            net,
            self.root / self.dataset / "backbones" / f"{name}-{weights_key(**meta)}.pt",
            lambda m: train_classifier(
                m,
                train.inputs[modality],
                train.labels,
                multilabel=self.multilabel,
                epochs=self.epochs,
                batch_size=self.batch_size,
                to_tensor=to_tensor,
                seed=self.seed,
                progress=self.progress,
                desc=f"pretrain {self.dataset} {modality}",
            ),
            meta,
        )


def option(explicit, raw, key: str, default=None, cast: Callable = str):
    """A backbone option: the explicit argument, else ``raw.provenance['backbone.<key>']``, else default."""
    if explicit is not None:
        return explicit
    value = raw.provenance.get(f"backbone.{key}")
    return default if value is None else cast(value)


# ---------------------------------------------------------------------------- best-val classifier
@dataclass(frozen=True)
class TrainRecipe:
    """How :func:`fit_classifier` trains a backbone (part of the weights' cache key)."""

    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``net`` in eval mode on ``(x, y)`` (its mode is restored afterwards)."""

    def gather(b: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        rows = slice(int(b[0]), int(b[-1]) + 1)
        return torch.from_numpy(np.array(x[rows], dtype=np.float32)), np.asarray(y[rows])

    batches = forward_batches(net, len(x), gather, batch_size, min_rows=1)
    correct = sum(int((logits.argmax(1).numpy() == labels).sum()) for labels, logits in batches)
    return correct / max(len(x), 1)


def fit_classifier(
    net: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    recipe: TrainRecipe,
    seed: int,
    progress: bool = True,
    desc: str = "pretrain",
) -> tuple[dict[str, torch.Tensor], float, int]:
    """Train ``net`` with cross-entropy on ``train``; keep the epoch with the best val accuracy.

    Adam under a one-cycle learning rate, on the CPU. Returns ``(best state dict, best val
    accuracy, best epoch)`` (epochs counted from 1).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.array(train[0], dtype=np.float32))
    y = torch.from_numpy(np.array(train[1], dtype=np.int64))
    opt = build_optimizer(net.parameters(), AdamSettings.of(recipe))
    steps = recipe.epochs * len(batch_indices(len(x), recipe.batch_size, None))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
    task = classifier_task(train[1], multilabel=False)
    best: tuple[float, int, dict[str, torch.Tensor]] = (-1.0, 0, {})
    bar = progress_bar(total=steps, desc=desc, unit="step", enabled=progress)

    def tick(_i: int, _loss: torch.Tensor) -> None:
        bar.update()

    for epoch in range(1, recipe.epochs + 1):
        batches = batch_indices(len(x), recipe.batch_size, gen)
        train_epoch(net, batches, lambda idx: (x[idx], y[idx]), task, opt, schedule=sched, after_step=tick)
        acc = accuracy(net, *val)
        bar.set_postfix(epoch=epoch, val_acc=f"{acc:.3f}")
        if acc > best[0]:
            best = (acc, epoch, {k: v.detach().clone() for k, v in net.state_dict().items()})
    bar.close()
    return best[2], best[0], best[1]
