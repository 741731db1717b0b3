"""Pre-training a backbone as a classifier on its own modality, and caching the weights it learns.

bmnas ships no weights for the AV-MNIST, MM-IMDB, NTU and EgoGesture backbones, so each network is
trained once on the train split and its state dict cached under ``root``, beside a JSON sidecar
holding the file's SHA-256 (weights that fail it are trained again) and how they were made.

Two recipes: :func:`train_classifier` runs a fixed number of epochs on inputs that may be large
and lazily read (memory maps, HDF5 rows); :func:`fit_classifier` keeps the epoch with the best val
accuracy, for inputs small enough to hold in memory (AV-MNIST).
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
from tqdm.auto import tqdm

from ...core.errors import DataError
from ...core.fileio import save_torch, write_json_sorted
from ...core.fileio import sha256 as sha256_file
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
    each batch is converted by ``to_tensor``. Adam with weight decay, fixed epochs, no selection.
    Runs on ``device`` (default: CUDA when available, else CPU); the model is left on the CPU.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(labels)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    model.train()
    losses = []
    bar = tqdm(total=epochs * -(-n // batch_size), desc=desc, disable=not progress, leave=False)
    for _ in range(epochs):
        order, total = rng.permutation(n), 0.0
        for i in range(0, n, batch_size):
            idx = np.sort(order[i : i + batch_size])
            if len(idx) < 2 and n > 1:  # BatchNorm needs two samples
                continue
            x = to_tensor(inputs[idx]).to(device, non_blocking=True)
            y = torch.as_tensor(np.asarray(labels[idx])).to(device)
            y = y.float() if multilabel else y.long()
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            bar.update()
        losses.append(total / max(n, 1))
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


@torch.no_grad()
def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``net`` in eval mode on ``(x, y)``."""
    net.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = net(torch.from_numpy(np.array(x[start : start + batch_size], dtype=np.float32)))
        correct += int((logits.argmax(1).numpy() == np.asarray(y[start : start + batch_size])).sum())
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
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * -(-len(x) // recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
    best: tuple[float, int, dict[str, torch.Tensor]] = (-1.0, 0, {})
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress, leave=False)
    for epoch in range(1, recipe.epochs + 1):
        net.train()
        for idx in torch.randperm(len(x), generator=gen).split(recipe.batch_size):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
        acc = accuracy(net, *val)
        bar.set_postfix(epoch=epoch, val_acc=f"{acc:.3f}")
        if acc > best[0]:
            best = (acc, epoch, {k: v.detach().clone() for k, v in net.state_dict().items()})
    bar.close()
    return best[2], best[0], best[1]
