"""Hugging Face ``transformers`` models (vision or text) as frozen backbones: ``--backbone image=hf:NAME``.

``hf_backbone("google/vit-base-patch16-224", "image")`` loads the model with ``AutoModel`` and its
own preprocessing: the image processor (``AutoImageProcessor``) for a vision model, the tokenizer
(``AutoTokenizer``) for a text model. ``NAME`` is a hub name (downloaded by ``transformers`` on first
use, cached in its own hub cache) or a local directory written by ``save_pretrained``. Needs
``pip install 'bmnas[hf]'``.

The features are hidden states (``output_hidden_states=True``; state 0 is the embedding output,
state ``i`` the output of block ``i``). :class:`HFFeatures` runs the model and feeds the chosen
states through parameter-free *taps* ``taps.hidden<i>``, the submodules the forward hooks of
:mod:`bmnas.features.extract` read; features are named ``<modality>.hidden<i>``. Default: four
evenly spaced blocks ending with the last (:func:`default_layers`). What a tap outputs:

* token states ``(B, T, C)`` of a vision transformer -> ``(B, C, T)``, every token (a [CLS] token
  included), pooled to L positions by :func:`bmnas.features.pooling.pool_feature`;
* maps ``(B, C, H, W)`` of a convolutional model (ConvNeXt, ResNet) -> unchanged (pooled as maps);
* token states of a text model -> each text's real tokens (the attention mask drops the padding;
  padding is on the right) linearly resampled to ``max_length`` positions, ``(B, C, max_length)``:
  a text's features never depend on the padding of its batch.

The model's config, the preprocessing settings and ``max_length`` are hashed into a buffer, so
:meth:`Backbone.weights_hash` (part of every feature-cache key) changes with any of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ...core.registry import optional
from .base import Backbone, BackboneError, freeze
from .minilm import resample_real_tokens

INSTALL = "pip install 'bmnas[hf]'"
KINDS = ("image", "text")
DEFAULT_TAPS = 4  # hidden states taken by default, evenly spaced, the last included


def _transformers():
    return optional("transformers", "a Hugging Face backbone (--backbone hf:NAME)", INSTALL)


def default_layers(blocks: int, taps: int = DEFAULT_TAPS) -> tuple[int, ...]:
    """``taps`` evenly spaced blocks of ``1..blocks`` ending with the last: ``round(blocks·k/taps)``,
    ``k = 1..taps`` (12 blocks -> 3, 6, 9, 12; 2 blocks -> 1, 2)."""
    return tuple(sorted({max(1, round(blocks * k / taps)) for k in range(1, taps + 1)}))


def block_count(config) -> int:
    """The number of blocks (hidden states after the embedding) a ``transformers`` config describes."""
    for key in ("num_hidden_layers", "num_layers", "n_layer"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value >= 1:
            return value
    depths = getattr(config, "depths", None)  # ConvNeXt, Swin, ResNet: one hidden state per stage
    if isinstance(depths, (list, tuple)) and depths:
        return len(depths)
    raise BackboneError(
        f"cannot tell how many blocks the {getattr(config, 'model_type', '?')!r} model has (its config has "
        f"no num_hidden_layers or depths); pass layers=(…) to hf_backbone"
    )


def infer_kind(config) -> str:
    """``image`` for a vision config (it has ``num_channels``), else ``text``; two towers are refused."""
    if (
        getattr(config, "vision_config", None) is not None
        and getattr(config, "text_config", None) is not None
    ):
        raise BackboneError(
            f"the {config.model_type!r} model has a vision and a text tower, and its forward needs both; "
            f"give a single-tower model (e.g. a CLIPVisionModel's checkpoint)"
        )
    return "image" if getattr(config, "num_channels", None) is not None else "text"


class HiddenTap(nn.Module):
    """Hidden state ``index`` as a channels-first feature (see the module docstring)."""

    def __init__(self, index: int, kind: str, positions: int) -> None:
        super().__init__()
        self.index, self.kind, self.positions = index, kind, positions

    def forward(self, h: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
        if h.dim() != 3:
            return h  # a map (B, C, H, W) or a vector (B, C)
        if self.kind == "image" or real is None:
            return h.transpose(1, 2)  # (B, T, C) -> (B, C, T)
        return resample_real_tokens(h, real, self.positions)  # (B, C, positions)


class HFFeatures(nn.Module):
    """A ``transformers`` model whose forward feeds chosen hidden states through :class:`HiddenTap` s.

    ``forward(**batch)``: the processor's or tokenizer's output (``pixel_values``; ``input_ids``,
    ``attention_mask`` …) -> the last hidden state.
    """

    def __init__(
        self, model: nn.Module, layers: Sequence[int], kind: str, positions: int, setup: str
    ) -> None:
        super().__init__()
        self.model = model
        self.taps = nn.ModuleDict({f"hidden{i}": HiddenTap(i, kind, positions) for i in layers})
        # Part of the state dict, hence of Backbone.weights_hash and the feature-cache key.
        digest = hashlib.sha256(setup.encode()).digest()
        self.register_buffer("setup_hash", torch.tensor(list(digest), dtype=torch.uint8))

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        out = self.model(**batch, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states
        if hidden is None:
            raise BackboneError(f"{type(self.model).__name__} returned no hidden states")
        real = batch.get("attention_mask")
        for tap in self.taps.values():
            tap(hidden[tap.index], real)
        return hidden[-1]


def _setup(config, processor, kind: str, max_length: int) -> str:
    """The settings besides the weights that change features: config, preprocessing, max_length."""
    if kind == "image":
        prep = processor.to_json_string() if hasattr(processor, "to_json_string") else repr(processor)
    else:
        backend = getattr(processor, "backend_tokenizer", None)
        prep = backend.to_str() if backend is not None else json.dumps(sorted(processor.get_vocab().items()))
    return f"{config.to_json_string()}|{prep}|{kind}|{max_length}"


def _load(what: str, loader, name: str):
    try:
        return loader.from_pretrained(name)
    except (OSError, ValueError, KeyError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise BackboneError(
            f"hf:{name}: cannot load its {what} ({first}); give a hub name (e.g. "
            f"google/vit-base-patch16-224) or a directory written by save_pretrained"
        ) from None


def image_preprocess(processor):
    """uint8 RGB ``(B, 3, H, W)`` (:class:`~bmnas.features.table.ImageFiles`) -> the processor's batch."""

    def preprocess(batch: np.ndarray) -> dict[str, torch.Tensor]:
        images = [np.ascontiguousarray(np.asarray(x, dtype=np.uint8).transpose(1, 2, 0)) for x in batch]
        return dict(processor(images=images, return_tensors="pt"))

    return preprocess


def text_preprocess(tokenizer, max_length: int):
    """``(B,)`` strings -> the tokenizer's batch, right-padded to the longest text, at most ``max_length``."""

    def preprocess(texts) -> dict[str, torch.Tensor]:
        texts = [str(t) for t in np.asarray(texts, dtype=object).reshape(-1)]
        return dict(
            tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        )

    return preprocess


def hf_backbone(
    name_or_path: str,
    modality: str,
    kind: str | None = None,
    layers: Sequence[int] | None = None,
    max_length: int = 64,
) -> Backbone:
    """A frozen ``transformers`` model as a :class:`Backbone` reading images or texts.

    Args:
        name_or_path: a hub name (``google/vit-base-patch16-224``) or a ``save_pretrained`` directory.
        modality: the modality name features are prefixed with (``<modality>.hidden<i>``).
        kind: ``"image"`` or ``"text"``; default inferred from the model's config (:func:`infer_kind`).
        layers: hidden states to take, ``1..blocks`` (0: the embedding output); default
            :func:`default_layers`.
        max_length: texts are truncated to this many tokens, and their token states resampled to
            this many positions.

    Raises:
        MissingDependencyError: ``transformers`` is not installed (``pip install 'bmnas[hf]'``).
        BackboneError: the model cannot be loaded, or ``kind``/``layers`` do not fit it.
    """
    tf = _transformers()
    config = _load("config", tf.AutoConfig, name_or_path)
    kind = kind or infer_kind(config)
    if kind not in KINDS:
        raise BackboneError(f"hf:{name_or_path}: kind must be one of {KINDS}, got {kind!r}")
    if max_length < 1:
        raise BackboneError(f"hf:{name_or_path}: max_length must be >= 1, got {max_length}")
    blocks = block_count(config)
    chosen = tuple(int(i) for i in layers) if layers else default_layers(blocks)
    bad = [i for i in chosen if not 0 <= i <= blocks]
    if bad:
        raise BackboneError(
            f"hf:{name_or_path}: layers {bad} out of range; the model has hidden states 0..{blocks}"
        )
    model = _load("weights", tf.AutoModel, name_or_path).float()
    if kind == "image":
        processor = _load("image processor", tf.AutoImageProcessor, name_or_path)
        preprocess = image_preprocess(processor)
    else:
        processor = _load("tokenizer", tf.AutoTokenizer, name_or_path)
        processor.padding_side = "right"
        limit = getattr(config, "max_position_embeddings", None)  # positions the model has
        preprocess = text_preprocess(
            processor, min(max_length, limit) if isinstance(limit, int) else max_length
        )
    module = freeze(HFFeatures(model, chosen, kind, max_length, _setup(config, processor, kind, max_length)))
    return Backbone(
        modality,
        module,
        {name: f"taps.{name}" for name in module.taps},
        preprocess,
        name=f"hf:{name_or_path}",
    )
