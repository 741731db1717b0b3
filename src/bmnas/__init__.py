"""bmnas: Bilevel Multimodal Neural Architecture Search.

The front door: :func:`extract_features` (your models and raw inputs -> the generic ``--data``
format) and :func:`load` (a trained run -> a network that predicts). Heavy modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["__version__", "extract_features", "load"]

if TYPE_CHECKING:
    from .generic import extract_features
    from .predict import load


def __getattr__(name: str):
    if name == "extract_features":
        from .generic import extract_features

        return extract_features
    if name == "load":
        from .predict import load

        return load
    raise AttributeError(f"module 'bmnas' has no attribute {name!r}")
