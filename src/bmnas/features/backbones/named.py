"""Backbones by name: ``default``, ``efficientnet-lite0``, ``minilm-l6`` or ``hf:<hub name or directory>``.

:func:`named_backbone` is a pure function of its arguments: a run records each modality's spec
(``metrics.json``: ``data.info.modalities.<name>.backbone``) and the same call rebuilds the same
backbone, e.g. to predict on new rows of a table.
"""

from __future__ import annotations

from .base import Backbone, BackboneError
from .efficientnet_lite import efficientnet_lite0_backbone
from .hf import hf_backbone
from .minilm import minilm_backbone

HF_PREFIX = "hf:"
SHIPPED = {"efficientnet-lite0": "image", "minilm-l6": "text"}  # name -> the kind it reads
DEFAULTS = {"image": "efficientnet-lite0", "text": "minilm-l6"}
FORMS = ("default", *SHIPPED, f"{HF_PREFIX}<hub name or local directory>")


def check_spec(spec: str, kind: str | None = None, where: str = "--backbone") -> str:
    """``spec`` stripped, or a one-line :class:`BackboneError` listing the forms a spec takes."""
    text = spec.strip() if isinstance(spec, str) else ""
    if text == "default" or (text.startswith(HF_PREFIX) and text[len(HF_PREFIX) :].strip()):
        return text
    if text in SHIPPED:
        if kind is not None and SHIPPED[text] != kind:
            raise BackboneError(
                f"{where} {text!r} reads {SHIPPED[text]}s, not {kind}s; pick a {kind} backbone"
            )
        return text
    raise BackboneError(f"{where}: unknown backbone {spec!r}; give one of {', '.join(FORMS)}")


def resolved_spec(spec: str, kind: str) -> str:
    """``spec`` with ``default`` replaced by the shipped backbone it stands for (as a run records it)."""
    return DEFAULTS.get(kind, spec) if spec == "default" else spec


def named_backbone(
    spec: str, modality: str, kind: str, image_size: int = 224, max_length: int = 64
) -> Backbone:
    """The frozen backbone ``spec`` names, reading the ``kind`` (``image``/``text``) of ``modality``.

    Args:
        spec: ``default`` (EfficientNet-Lite0 for images, all-MiniLM-L6-v2 for texts),
            ``efficientnet-lite0``, ``minilm-l6``, or ``hf:NAME`` (:func:`~.hf.hf_backbone`).
        modality: the modality name features are prefixed with.
        kind: what the modality holds, ``image`` or ``text``.
        image_size: EfficientNet-Lite0's input size (a Hugging Face model's image processor sets its own).
        max_length: texts are truncated to this many tokens.
    """
    if kind not in DEFAULTS:
        raise BackboneError(f"modality {modality!r}: a backbone reads images or texts, not {kind!r}")
    spec = check_spec(spec, kind)
    if spec.startswith(HF_PREFIX):
        return hf_backbone(spec[len(HF_PREFIX) :].strip(), modality, kind, max_length=max_length)
    name = DEFAULTS[kind] if spec == "default" else spec
    if name == "efficientnet-lite0":
        return efficientnet_lite0_backbone(modality, image_size=image_size)
    return minilm_backbone(modality, max_length=max_length)
