"""NTU RGB+D backbones: an HCN-style skeleton CNN and a pass-through for the user's RGB features.

* ``skeleton``: :class:`HCN`, the co-occurrence network (Li et al., IJCAI 2018) as the BM-NAS authors
  use it, on ``(3, 32, 25, 2)`` inputs. Position and motion streams: conv1 (1×1, 3→64) → conv2
  ((3, 1), 64→32) → joints become channels → conv3 (3×3, 25→32, max-pool 2) → conv4 (3×3, 32→64,
  max-pool 2); both streams concatenated → conv5 (128, max-pool 2) → conv6 (256, max-pool 2); the two
  bodies are max-ed; fc7 (1024→512) → fc8 (→60). Features (max over bodies):
  ``skeleton.conv5`` ``(128, 4, 4)``, ``skeleton.conv6`` ``(256, 2, 2)``, ``skeleton.flat``
  ``(1024,)``, ``skeleton.fc7`` ``(512,)``. Pre-trained by bmnas on the train split (cross-entropy)
  unless ``skeleton_weights=PATH`` gives an :class:`HCN` state dict.
* ``rgb``: :class:`PrecomputedFeatures` serves the user's per-sample arrays (see
  :mod:`bmnas.features.datasets.ntu`); one feature ``rgb.<layer>`` per layer of the store.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...core.errors import DataError
from ..datasets.ntu import FeatureStore, sample_stem
from .base import Backbone, freeze, register_backbones
from .pretrain import Pretrainer, option

HCN_LAYERS = {"conv5": "conv5_max", "conv6": "conv6_max", "flat": "flat", "fc7": "fc7"}


class BodyMax(nn.Module):
    """``(N·M, C, …) → (N, C, …)``: the maximum over the M bodies of each sample."""

    def __init__(self, bodies: int = 2) -> None:
        super().__init__()
        self.bodies = bodies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, self.bodies, *x.shape[1:]).amax(1)


def _stream(in_channels: int, joints: int, frames: int, out_channels: int, dropout: float) -> nn.Sequential:
    """Point-level convs, then the joints as channels (co-occurrence), ``(B, 3, T, V) → (B, 64, T/4, ·)``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1),
        nn.ReLU(),
        nn.Conv2d(out_channels, frames, (3, 1), padding=(1, 0)),
        _Transpose(),  # (B, T', T, V) → (B, V, T, T')
        nn.Conv2d(joints, out_channels // 2, 3, padding=1),
        nn.MaxPool2d(2),
        nn.Conv2d(out_channels // 2, out_channels, 3, padding=1),
        nn.Dropout2d(dropout),
        nn.MaxPool2d(2),
    )


class _Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 2, 1).contiguous()


class HCN(nn.Module):
    """Hierarchical co-occurrence network: ``(B, 3, T, 25, M)`` skeletons → ``(B, classes)`` logits."""

    def __init__(
        self,
        num_classes: int = 60,
        frames: int = 32,
        joints: int = 25,
        bodies: int = 2,
        channels: int = 64,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if frames < 16:
            raise DataError(
                f"HCN needs at least 16 frames (four 2x poolings), got {frames}; "
                f"use --dataset-option frames=16 or more"
            )
        self.bodies = bodies
        self.position = _stream(3, joints, frames, channels, dropout)
        self.motion = _stream(3, joints, frames, channels, dropout)
        self.conv5 = nn.Sequential(
            nn.Conv2d(2 * channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.Dropout2d(dropout),
            nn.MaxPool2d(2),
        )
        self.conv6 = nn.Sequential(
            nn.Conv2d(2 * channels, 4 * channels, 3, padding=1),
            nn.ReLU(),
            nn.Dropout2d(dropout),
            nn.MaxPool2d(2),
        )
        self.conv5_max, self.conv6_max = BodyMax(bodies), BodyMax(bodies)
        self.flat = nn.Flatten()
        side = max(frames // 16, 1)
        self.fc7 = nn.Sequential(nn.Linear(4 * channels * side * side, 512), nn.ReLU(), nn.Dropout(dropout))
        self.fc8 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v, m = x.shape
        motion = x[:, :, 1:] - x[:, :, :-1]  # (N, C, T-1, V, M)
        motion = F.interpolate(
            motion.permute(0, 1, 4, 2, 3).reshape(n, c * m, t - 1, v),
            size=(t, v),
            mode="bilinear",
            align_corners=False,
        ).view(n, c, m, t, v)
        pos = x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v)  # bodies into the batch
        mot = motion.permute(0, 2, 1, 3, 4).reshape(n * m, c, t, v)
        h5 = self.conv5(torch.cat([self.position(pos), self.motion(mot)], 1))  # (N·M, 128, T/8, ·)
        h6 = self.conv6(h5)  # (N·M, 256, T/16, ·)
        self.conv5_max(h5)  # feature only: read by a hook
        return self.fc8(self.fc7(self.flat(self.conv6_max(h6))))


def skeletons_to_tensor(batch: np.ndarray) -> torch.Tensor:
    """``(B, 3, T, 25, 2)`` skeletons (a read-only memmap slice) → a float32 tensor (a copy)."""
    return torch.from_numpy(np.array(batch, dtype=np.float32))


def codes_to_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(batch), dtype=torch.int64)


class PrecomputedFeatures(nn.Module):
    """The user's RGB features as a backbone: sample codes ``(B,)`` in, one array per layer out.

    Each layer's batch ``(B, *shape)`` passes through ``out.<layer>`` (an identity) so that the
    usual forward hooks read it. The buffer ``fingerprint`` (SHA-256 of the store's index) makes the
    weights hash, and so the feature-cache key, follow the feature files.
    """

    def __init__(self, store: FeatureStore) -> None:
        super().__init__()
        self.store = store
        self.out = nn.ModuleDict({layer: nn.Identity() for layer in store.layers})
        digest = bytes.fromhex(store.fingerprint())
        self.register_buffer("fingerprint", torch.tensor(list(digest), dtype=torch.uint8))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        stems = [sample_stem(int(c)) for c in codes]
        out = codes
        for layer in self.store.layers:
            batch = np.stack([self.store.load(s, layer) for s in stems]).astype(np.float32, copy=False)
            out = self.out[layer](torch.from_numpy(batch))
        return out


def _skeleton_backbone(pre: Pretrainer, weights) -> Backbone:
    frames = pre.raw.splits["train"].inputs["skeleton"].shape[2]
    torch.manual_seed(pre.seed)
    net = HCN(num_classes=pre.num_classes, frames=frames)
    key = {"arch": "hcn-64", "frames": frames, "batch_size": pre.batch_size}
    net = pre.classifier(
        net, "skeleton", weights, name="skeleton-hcn", key=key, to_tensor=skeletons_to_tensor
    )
    return Backbone(
        "skeleton", net, HCN_LAYERS, preprocess=skeletons_to_tensor, name="hcn", fit_on_train=not weights
    )


@register_backbones("ntu")
def ntu_backbones(
    raw,
    root,
    seed: int = 0,
    progress: bool = True,
    *,
    skeleton_weights: str | None = None,
    epochs: int | None = None,
    batch_size: int = 64,
) -> list[Backbone]:
    """``rgb`` (when the dataset has user RGB features) then ``skeleton`` backbones, frozen.

    Args:
        raw: the NTU :class:`RawDataset` (:func:`bmnas.features.datasets.ntu.ntu`).
        root: cache directory; the pre-trained HCN goes to ``root/ntu/backbones/``.
        skeleton_weights: an :class:`HCN` state dict to use instead of pre-training.
        epochs: HCN pre-training epochs (default 10).
    """
    root = Path(root)
    weights = option(skeleton_weights, raw, "skeleton_weights")
    epochs = option(epochs, raw, "pretrain_epochs", default=10, cast=int)
    out = []
    if "rgb" in raw.modalities:
        store = FeatureStore(
            raw.provenance["rgb_features"], raw.provenance.get("rgb_default_layer", "features")
        )
        name = f"precomputed-{hashlib.sha256(str(store.path).encode()).hexdigest()[:8]}"
        out.append(
            Backbone(
                "rgb",
                freeze(PrecomputedFeatures(store)),
                {layer: f"out.{layer}" for layer in store.layers},
                preprocess=codes_to_tensor,
                name=name,
            )
        )
    pre = Pretrainer(raw, root, "ntu", seed=seed, progress=progress, epochs=epochs, batch_size=batch_size)
    out.append(_skeleton_backbone(pre, weights))
    return out
