"""EgoGesture backbones: one small 3-D CNN per modality (``rgb``, ``depth``), pre-trained by bmnas.

:class:`Small3DCNN` on ``(C, T, H, W)`` clips (C = 3 for RGB, 1 for depth): block1 conv3d 3×3×3
stride (1, 2, 2) → BN → ReLU → max-pool (1, 2, 2); blocks 2-4 conv3d 3×3×3 → BN → ReLU → max-pool
(2, 2, 2), (2, 2, 2), (2, 1, 1) (ceil mode); global average → ``fc`` (Linear + ReLU) → dropout →
Linear to the 83 classes. For 8 frames of 48×64 the features are ``<m>.block2`` ``(64, 4, 6, 8)``,
``<m>.block3`` ``(128, 2, 3, 4)``, ``<m>.block4`` ``(256, 1, 3, 4)`` and ``<m>.fc`` ``(256,)``.
The BM-NAS authors used ResNeXt-101 3-D CNNs pre-trained on EgoGesture at 112×112; pass your own
:class:`Small3DCNN` state dicts with ``rgb_weights=`` / ``depth_weights=`` to skip pre-training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, register_backbones
from .layers import conv_block
from .pretrain import Pretrainer, option

LAYERS = {"block2": "block2", "block3": "block3", "block4": "block4", "fc": "fc"}
MODALITY_CHANNELS = {"rgb": 3, "depth": 1}


def _block(c_in: int, c_out: int, pool: tuple[int, int, int], stride: tuple[int, int, int] = (1, 1, 1)):
    return conv_block(c_in, c_out, dims=3, stride=stride, pool=pool, ceil_mode=True)


class Small3DCNN(nn.Module):
    """``(B, C, T, H, W)`` clips → ``(B, num_classes)`` logits (see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 83,
        widths: Sequence[int] = (32, 64, 128, 256),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.block1 = _block(in_channels, widths[0], (1, 2, 2), stride=(1, 2, 2))
        self.block2 = _block(widths[0], widths[1], (2, 2, 2))
        self.block3 = _block(widths[1], widths[2], (2, 2, 2))
        self.block4 = _block(widths[2], widths[3], (2, 1, 1))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(widths[3], widths[3]), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(widths[3], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.head(self.fc(F.adaptive_avg_pool3d(x, 1)))


def clips_to_tensor(batch: np.ndarray) -> torch.Tensor:
    """uint8 clips ``(B, C, T, H, W)`` → float32, scaled to about [-2, 2]."""
    return torch.from_numpy(np.array(batch, dtype=np.float32)).div_(255.0).sub_(0.5).div_(0.25)


def _backbone(pre: Pretrainer, modality: str, weights) -> Backbone:
    torch.manual_seed(pre.seed)
    net = Small3DCNN(MODALITY_CHANNELS[modality], pre.num_classes)
    key = {
        "arch": "small3dcnn-32-256",
        "modality": modality,
        "input": list(pre.raw.splits["train"].inputs[modality].shape[1:]),
        "batch_size": pre.batch_size,
    }
    net = pre.classifier(
        net, modality, weights, name=f"{modality}-small3dcnn", key=key, to_tensor=clips_to_tensor
    )
    return Backbone(
        modality, net, LAYERS, preprocess=clips_to_tensor, name="small3dcnn", fit_on_train=not weights
    )


@register_backbones("egogesture")
def egogesture_backbones(
    raw,
    root,
    seed: int = 0,
    progress: bool = True,
    *,
    rgb_weights: str | None = None,
    depth_weights: str | None = None,
    epochs: int | None = None,
    batch_size: int = 32,
) -> list[Backbone]:
    """Frozen ``rgb`` and ``depth`` :class:`Small3DCNN` backbones, pre-trained on the train split.

    Args:
        raw: the EgoGesture :class:`RawDataset`.
        root: cache directory; weights go to ``root/egogesture/backbones/``.
        rgb_weights, depth_weights: :class:`Small3DCNN` state dicts to use instead of pre-training.
        epochs: pre-training epochs per modality (default 10).
    """
    root = Path(root)
    epochs = option(epochs, raw, "pretrain_epochs", default=10, cast=int)
    weights = {
        "rgb": option(rgb_weights, raw, "rgb_weights"),
        "depth": option(depth_weights, raw, "depth_weights"),
    }
    pre = Pretrainer(
        raw, root, "egogesture", seed=seed, progress=progress, epochs=epochs, batch_size=batch_size
    )
    return [_backbone(pre, m, weights[m]) for m in ("rgb", "depth")]
