"""MM-IMDB backbones: a VGG-style poster CNN and the Maxout-MLP plot encoder (paper §4.1).

* ``text``: :class:`MaxoutMLP` as in GMU / BM-NAS: Maxout(300→64, k=5) → BN → Dropout(0.5) →
  Maxout(64→128, k=5) → BN → Dropout(0.5) → Linear(128→23). Features ``text.maxout1`` ``(64,)`` and
  ``text.maxout2`` ``(128,)``. Pre-trained by bmnas on the train split (BCE, 23 genres); the BM-NAS
  authors left it random during search.
* ``image``, default: :class:`SmallVGG`, an ImageNet-free VGG-style CNN pre-trained by bmnas on the
  train posters, resized to ``image_size`` (default 128×80). Features ``image.block2`` ``(64, 32, 20)``,
  ``image.block3`` ``(128, 16, 10)``, ``image.block4`` ``(256, 8, 5)``, ``image.fc`` ``(256,)``.
* ``image``, with ``image_weights=PATH``: :class:`VGG19Features`, torchvision's VGG19 ``features``
  layout, loaded from the user's file (e.g. torchvision's ``vgg19-dcbb9e9d.pth`` state dict; only the
  ``features.*`` tensors are used). Features as in BM-NAS: ``image.relu4_1`` ``(512, 32, 20)``,
  ``image.relu4_4`` ``(512, 32, 20)``, ``image.relu5_3`` ``(512, 16, 10)``, ``image.pool5``
  ``(512, 8, 5)`` on 256×160 posters. Unlike BM-NAS, the input is scaled to 0..1 and normalised with
  the ImageNet mean/std those weights expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, freeze, register_backbones
from .layers import conv_block
from .pretrain import Pretrainer, load_weights, option

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG19_CFG = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)
VGG19_LAYERS = {
    "relu4_1": "features.20",
    "relu4_4": "features.26",
    "relu5_3": "features.33",
    "pool5": "features.36",
}
SMALL_VGG_LAYERS = {"block2": "block2", "block3": "block3", "block4": "block4", "fc": "fc"}
MAXOUT_LAYERS = {"maxout1": "maxout1", "maxout2": "maxout2"}


# --------------------------------------------------------------------------- modules
def images_to_tensor(batch: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``(B, 3, H, W)`` → float, scaled to 0..1 and normalised with the ImageNet mean/std."""
    x = torch.as_tensor(np.asarray(batch)).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def text_to_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(batch), dtype=torch.float32)


class Maxout(nn.Module):
    """Maxout unit: ``max_k (W x + b)_k``, ``(B, d_in) → (B, d_out)`` with ``k`` pieces per unit."""

    def __init__(self, d_in: int, d_out: int, k: int = 5) -> None:
        super().__init__()
        self.d_out, self.k = d_out, k
        self.lin = nn.Linear(d_in, d_out * k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).view(*x.shape[:-1], self.d_out, self.k).amax(-1)


class MaxoutMLP(nn.Module):
    """The GMU / BM-NAS plot encoder: ``(B, 300)`` word2vec average → ``(B, num_outputs)`` logits."""

    def __init__(
        self, d_in: int = 300, hidden: int = 64, num_outputs: int = 23, k: int = 5, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.maxout1 = Maxout(d_in, hidden, k)  # (B, 64)
        self.drop1 = nn.Sequential(nn.BatchNorm1d(hidden), nn.Dropout(dropout))
        self.maxout2 = Maxout(hidden, 2 * hidden, k)  # (B, 128)
        self.drop2 = nn.Sequential(nn.BatchNorm1d(2 * hidden), nn.Dropout(dropout))
        self.head = nn.Linear(2 * hidden, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop2(self.maxout2(self.drop1(self.maxout1(x)))))


class SmallVGG(nn.Module):
    """VGG-style poster CNN: resize to ``size``, 4 × (conv3×3 → BN → ReLU → max-pool 2), then
    global average pool → ``fc`` (Linear + ReLU) → dropout → Linear to the genres.

    Shapes for ``size=(128, 80)``: block1 ``(32, 64, 40)``, block2 ``(64, 32, 20)``, block3
    ``(128, 16, 10)``, block4 ``(256, 8, 5)``, fc ``(256,)``.
    """

    def __init__(
        self,
        num_outputs: int = 23,
        size: Sequence[int] = (128, 80),
        widths: Sequence[int] = (32, 64, 128, 256),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.size = tuple(int(s) for s in size)
        chans = (3, *widths)
        for i in range(4):
            self.add_module(f"block{i + 1}", conv_block(chans[i], chans[i + 1]))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1], widths[-1]), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(widths[-1], num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.head(self.fc(F.adaptive_avg_pool2d(x, 1)))


class VGG19Features(nn.Module):
    """torchvision's ``vgg19().features`` layout (same state-dict keys ``features.<i>.*``)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# --------------------------------------------------------------------------- factory
def _text_backbone(pre: Pretrainer, weights) -> Backbone:
    train = pre.raw.splits["train"]
    torch.manual_seed(pre.seed)
    net = MaxoutMLP(d_in=train.inputs["text"].shape[1], num_outputs=train.labels.shape[1])
    key = {"arch": "maxout-mlp-64-k5"}  # no batch size: adding one would orphan the cached weights
    net = pre.classifier(net, "text", weights, name="text-maxout", key=key, to_tensor=text_to_tensor)
    return Backbone(
        "text", net, MAXOUT_LAYERS, preprocess=text_to_tensor, name="maxout-mlp", fit_on_train=not weights
    )


def _image_backbone(pre: Pretrainer, weights, image_size: Sequence[int]) -> Backbone:
    if weights:
        with torch.device("meta"):  # skip the random initialisation of 20 M weights
            net = VGG19Features()
        load_weights(net, weights, strict=True, assign=True)
        return Backbone("image", freeze(net), VGG19_LAYERS, preprocess=images_to_tensor, name="vgg19")
    torch.manual_seed(pre.seed)
    net = SmallVGG(num_outputs=pre.raw.splits["train"].labels.shape[1], size=image_size)
    key = {"arch": "small-vgg-32-256", "size": list(net.size), "batch_size": pre.batch_size}
    pre.classifier(net, "image", None, name="image-smallvgg", key=key, to_tensor=images_to_tensor)
    return Backbone(
        "image", net, SMALL_VGG_LAYERS, preprocess=images_to_tensor, name="small-vgg", fit_on_train=True
    )


@register_backbones("mmimdb")
def mmimdb_backbones(
    raw,
    root,
    seed: int = 0,
    progress: bool = True,
    *,
    image_weights: str | None = None,
    text_weights: str | None = None,
    epochs: int | None = None,
    image_size: Sequence[int] = (128, 80),
    batch_size: int = 64,
) -> list[Backbone]:
    """Frozen ``image`` and ``text`` backbones for MM-IMDB, pre-training them (cached under ``root``).

    Args:
        raw: the MM-IMDB :class:`RawDataset`.
        root: cache directory; pre-trained weights go to ``root/mmimdb/backbones/``.
        image_weights: torchvision-format VGG19 state dict → :class:`VGG19Features`; default: a
            :class:`SmallVGG` trained here.
        text_weights: a :class:`MaxoutMLP` state dict; default: trained here.
        epochs: pre-training epochs for both nets (default: image 5, text 20).
        image_size: ``(H, W)`` the SmallVGG resizes posters to.
    """
    root = Path(root)
    image_weights = option(image_weights, raw, "image_weights")
    text_weights = option(text_weights, raw, "text_weights")
    epochs = option(epochs, raw, "pretrain_epochs", cast=int)
    pre = Pretrainer(
        raw,
        root,
        "mmimdb",
        seed=seed,
        progress=progress,
        epochs=epochs or 5,
        batch_size=batch_size,
        multilabel=True,
    )
    return [
        _image_backbone(pre, image_weights, image_size),
        _text_backbone(replace(pre, epochs=epochs or 20, batch_size=128), text_weights),
    ]
