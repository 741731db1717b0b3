"""Modality dropout: train a network that still works when a whole modality is missing.

Each sample of a batch loses each modality independently with probability ``p``: every feature of
that modality (``<modality>.*``) is replaced by zeros, the same input bmnas feeds for a missing
modality at test time (``bmnas robustness``, condition ``missing:<m>:zeros``). A sample never
loses all its modalities: if the draw drops them all, one drawn uniformly is kept. With a single
modality nothing is ever dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def modality_of(feature: str) -> str:
    """``"image.conv2" -> "image"``."""
    return feature.split(".", 1)[0]


def drop_modalities(
    features: Mapping[str, torch.Tensor], p: float, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Features ``name -> (B, ...)`` with whole modalities zeroed per sample (a new dict; inputs untouched).

    ``keep[b, m] ~ Bernoulli(1 - p)`` for sample b and modality m, redrawn so that every sample keeps
    at least one modality; ``out[name][b] = keep[b, modality(name)] · features[name][b]``.
    ``generator`` (a CPU ``torch.Generator``) makes the masks reproducible; ``p = 0`` returns the
    same tensors. Pass only the features the network reads (``{n: f[n] for n in net.used}``): a
    modality it ignores must not be the one a sample keeps.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"modality dropout p must be in [0, 1), got {p}")
    mods = list(dict.fromkeys(modality_of(n) for n in features))
    if p == 0.0 or len(mods) < 2:
        return dict(features)
    B = next(iter(features.values())).shape[0]
    drop = torch.rand(B, len(mods), generator=generator) < p  # (B, M)
    dead = drop.all(dim=1)
    if dead.any():
        keep = torch.randint(len(mods), (int(dead.sum()),), generator=generator)
        drop[dead.nonzero().squeeze(1), keep] = False
    out = {}
    for name, f in features.items():
        kept = (~drop[:, mods.index(modality_of(name))]).to(device=f.device, dtype=f.dtype)
        out[name] = f * kept.view(B, *([1] * (f.dim() - 1)))
    return out
