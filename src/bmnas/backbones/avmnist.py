"""AV-MNIST backbones: a small image CNN and a small audio 1-D CNN, pre-trained by bmnas, then frozen.

Each network is trained on its own modality on the *train* split (Adam, a few epochs, seeded) and
the epoch with the best val accuracy is kept. Weights are cached under
``<root>/avmnist/backbones/<arch>-<dataset sha256>-s<seed>.pt`` with a JSON sidecar (SHA-256 of the
weights, val accuracy, epochs, seconds); a second call loads them.

Features (raw shapes per sample):

==============  ===============  =================
feature          module path      raw shape
==============  ===============  =================
image.conv1      ``conv1``        (8, 14, 14) map
image.conv2      ``conv2``        (16, 7, 7) map
image.conv3      ``conv3``        (32, 3, 3) map
image.fc         ``fc``           (128,) vector
audio.conv1      ``conv1``        (32, T/2) sequence
audio.conv2      ``conv2``        (64, T/4) sequence
audio.conv3      ``conv3``        (64, T/8) sequence
audio.fc         ``fc``           (128,) vector
==============  ===============  =================
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..cache import dataset_checksum, sha256_file, write_json_atomic
from ..datasets.base import RawDataset
from .base import Backbone, register_backbones, torch_threads

log = logging.getLogger(__name__)

LAYERS = {"conv1": "conv1", "conv2": "conv2", "conv3": "conv3", "fc": "fc"}


def _conv2d_block(c_in: int, c_out: int) -> nn.Sequential:
    """Conv 3×3 – BatchNorm – ReLU – MaxPool 2: ``(B, c_in, H, W) -> (B, c_out, H/2, W/2)``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def _conv1d_block(c_in: int, c_out: int, k: int) -> nn.Sequential:
    """Conv k – BatchNorm – ReLU – MaxPool 2: ``(B, c_in, T) -> (B, c_out, T/2)``."""
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, k, padding=k // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool1d(2),
    )


class ImageCNN(nn.Module):
    """LeNet-like CNN: ``(B, 1, 28, 28)`` -> conv1 (8, 14, 14) -> conv2 (16, 7, 7) -> conv3 (32, 3, 3)
    -> fc (128,) -> head (classes,)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.3) -> None:
        super().__init__()
        self.conv1 = _conv2d_block(1, 8)
        self.conv2 = _conv2d_block(8, 16)
        self.conv3 = _conv2d_block(16, 32)
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(32 * 3 * 3, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.conv3(self.conv2(self.conv1(x)))))


class AudioCNN(nn.Module):
    """1-D CNN over MFCC frames: ``(B, 13, T)`` -> conv1 (32, T/2) -> conv2 (64, T/4) -> conv3 (64, T/8)
    -> fc (128,) (global average and max over time, then linear) -> head (classes,)."""

    def __init__(self, n_mfcc: int = 13, num_classes: int = 10, dropout: float = 0.3) -> None:
        super().__init__()
        self.conv1 = _conv1d_block(n_mfcc, 32, 5)
        self.conv2 = _conv1d_block(32, 64, 3)
        self.conv3 = _conv1d_block(64, 64, 3)
        self.fc = _TimePoolFC(64, 128, dropout)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.conv3(self.conv2(self.conv1(x)))))


class _TimePoolFC(nn.Module):
    """``(B, C, T) -> (B, out)``: concatenated mean and max over T, dropout, linear, ReLU."""

    def __init__(self, c_in: int, c_out: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(2 * c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(-1), x.amax(-1)], dim=1)
        return torch.relu(self.linear(self.drop(pooled)))


@dataclass(frozen=True)
class TrainRecipe:
    """How a backbone is pre-trained (part of the weights' cache key)."""

    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain` did for one modality."""

    modality: str
    arch: str
    path: str
    val_accuracy: float
    best_epoch: int
    seconds: float
    cached: bool


def arch_id(name: str, net: nn.Module, recipe: TrainRecipe) -> str:
    """``<name>-<hash>``: the hash covers the module's structure and the training recipe."""
    text = json.dumps({"module": repr(net), "recipe": asdict(recipe)}, sort_keys=True)
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


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

    Returns ``(best state dict, best val accuracy, best epoch)`` (epochs counted from 1).
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


NETWORKS: dict[str, tuple[str, type[nn.Module]]] = {
    "image": ("image_cnn", ImageCNN),
    "audio": ("audio_cnn", AudioCNN),
}


def _load_weights(path: Path, net: nn.Module) -> dict | None:
    """Load cached weights into ``net`` if the file and its sidecar agree; else None."""
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        if sha256_file(path) != meta["sha256"]:
            raise ValueError("SHA-256 mismatch")
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        log.warning("cached backbone weights %s are unusable (%s); pre-training again", path, err)
        return None
    return meta


def pretrain(
    raw: RawDataset,
    root: str | Path,
    *,
    seed: int = 0,
    recipe: TrainRecipe | None = None,
    progress: bool = True,
    force: bool = False,
    threads: int | None = 1,
) -> tuple[dict[str, nn.Module], list[PretrainResult]]:
    """Pre-train (or load from ``root``) the AV-MNIST image and audio networks.

    Args:
        raw: the AV-MNIST raw dataset (``image (N, 1, 28, 28)``, ``audio (N, 13, T)``).
        root: cache root; weights go to ``root/avmnist/backbones``.
        seed: seed of initialisation and batch order (part of the cache key).
        force: train even if cached weights exist.
        threads: intra-op torch threads while training (1: fastest for these small networks, and
            deterministic; None: torch's setting).

    Returns:
        ``({modality: frozen module in eval mode}, [PretrainResult per modality])``.
    """
    recipe = recipe or TrainRecipe()
    checksum = dataset_checksum(raw)
    folder = Path(root) / "avmnist" / "backbones"
    folder.mkdir(parents=True, exist_ok=True)
    modules, results = {}, []
    for modality, (name, cls) in NETWORKS.items():
        arch = arch_id(name, cls(), recipe)
        path = folder / f"{arch}-{checksum[:16]}-s{seed}.pt"
        start = time.perf_counter()
        net = cls()
        meta = None if force else _load_weights(path, net)
        cached = meta is not None
        if meta is None:
            train, val = raw.splits["train"], raw.splits["val"]
            with torch.random.fork_rng(devices=[]), torch_threads(threads):
                torch.manual_seed(seed)
                net = cls()  # seeded initialisation; the caller's RNG state is left untouched
                state, acc, epoch = fit_classifier(
                    net,
                    (train.inputs[modality], train.labels),
                    (val.inputs[modality], val.labels),
                    recipe,
                    seed,
                    progress,
                    desc=f"pretrain {modality}",
                )
            net.load_state_dict(state)
            tmp = path.with_name(f".{path.name}.tmp")
            torch.save(state, tmp)
            tmp.replace(path)
            meta = {
                "arch": arch,
                "dataset_sha256": checksum,
                "seed": seed,
                "val_accuracy": acc,
                "best_epoch": epoch,
                "recipe": asdict(recipe),
                "sha256": sha256_file(path),
                "seconds": time.perf_counter() - start,
            }
            write_json_atomic(path.with_suffix(".json"), meta)
        net.eval().requires_grad_(False)
        modules[modality] = net
        results.append(
            PretrainResult(
                modality,
                arch,
                str(path),
                float(meta["val_accuracy"]),
                int(meta["best_epoch"]),
                time.perf_counter() - start,
                cached,
            )
        )
        log.info(
            "%s backbone %s: val accuracy %.3f (%s)",
            modality,
            arch,
            meta["val_accuracy"],
            "cached" if cached else "pre-trained",
        )
    return modules, results


@register_backbones("avmnist")
def avmnist_backbones(
    raw: RawDataset, root: str | Path, seed: int = 0, progress: bool = True
) -> list[Backbone]:
    """The frozen AV-MNIST backbones (image, then audio), pre-trained on first use."""
    modules, _ = pretrain(raw, root, seed=seed, progress=progress)
    return [Backbone(m, modules[m], dict(LAYERS), name=f"avmnist-{m}") for m in ("image", "audio")]
