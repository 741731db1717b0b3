"""AV-MNIST backbones: a small image CNN and a small audio 1-D CNN, pre-trained by bmnas, then frozen.

Each network is trained on its own modality on the *train* split (Adam, a few epochs, seeded) and
the epoch with the best val accuracy is kept. It learns the modality's own digit
(``RawSplit.labels_of``): the task's label for the default digit task, the written or spoken digit
for an interaction task (``task=match``/``parity``), whose label either modality alone is blind to.
Weights are cached under ``<root>/avmnist/backbones/<arch>-<dataset sha256>-s<seed>.pt`` with a
JSON sidecar (SHA-256 of the weights, val accuracy, epochs, seconds); a second call loads them.

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

import torch
from torch import nn

from ..datasets.base import RawDataset, dataset_checksum
from .base import Backbone, freeze, register_backbones, torch_threads
from .layers import conv_block
from .pretrain import TrainRecipe, fit_classifier, load_cached, merges_last_row, save_cached

log = logging.getLogger(__name__)

LAYERS = {"conv1": "conv1", "conv2": "conv2", "conv3": "conv3", "fc": "fc"}


class ImageCNN(nn.Module):
    """LeNet-like CNN: ``(B, 1, 28, 28)`` -> conv1 (8, 14, 14) -> conv2 (16, 7, 7) -> conv3 (32, 3, 3)
    -> fc (128,) -> head (classes,)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.3) -> None:
        super().__init__()
        self.conv1 = conv_block(1, 8)
        self.conv2 = conv_block(8, 16)
        self.conv3 = conv_block(16, 32)
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(32 * 3 * 3, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.conv3(self.conv2(self.conv1(x)))))


class AudioCNN(nn.Module):
    """1-D CNN over MFCC frames: ``(B, 13, T)`` -> conv1 (32, T/2) -> conv2 (64, T/4) -> conv3 (64, T/8)
    -> fc (128,) (global average and max over time, then linear) -> head (classes,)."""

    def __init__(self, n_mfcc: int = 13, num_classes: int = 10, dropout: float = 0.3) -> None:
        super().__init__()
        self.conv1 = conv_block(n_mfcc, 32, dims=1, kernel=5)
        self.conv2 = conv_block(32, 64, dims=1)
        self.conv3 = conv_block(64, 64, dims=1)
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


NETWORKS: dict[str, tuple[str, type[nn.Module]]] = {
    "image": ("image_cnn", ImageCNN),
    "audio": ("audio_cnn", AudioCNN),
}


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
    # a lone last row joins the batch before it: weights unlike those of older bmnas, under their own name
    joined = "-joined" if merges_last_row(len(raw.splits["train"].labels), recipe.batch_size) else ""
    for modality, (name, cls) in NETWORKS.items():
        arch = arch_id(name, cls(), recipe)
        path = folder / f"{arch}-{checksum[:16]}-s{seed}{joined}.pt"
        start = time.perf_counter()
        net = cls()
        meta = None if force else load_cached(net, path)
        cached = meta is not None
        if meta is None:
            train, val = raw.splits["train"], raw.splits["val"]
            with torch.random.fork_rng(devices=[]), torch_threads(threads):
                torch.manual_seed(seed)
                net = cls()  # seeded initialisation; the caller's RNG state is left untouched
                state, acc, epoch = fit_classifier(
                    net,
                    (train.inputs[modality], train.labels_of(modality)),
                    (val.inputs[modality], val.labels_of(modality)),
                    recipe,
                    seed,
                    progress,
                    desc=f"pretrain {modality}",
                )
            net.load_state_dict(state)
            meta = {
                "arch": arch,
                "dataset_sha256": checksum,
                "seed": seed,
                "val_accuracy": acc,
                "best_epoch": epoch,
                "recipe": asdict(recipe),
                "seconds": time.perf_counter() - start,
            }
            meta = save_cached(state, path, meta)
        modules[modality] = freeze(net)
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
    return [
        Backbone(m, modules[m], dict(LAYERS), name=f"avmnist-{m}", fit_on_train=True)
        for m in ("image", "audio")
    ]
