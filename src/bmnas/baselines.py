"""Hand-made fusion baselines written as genotypes, so they share every code path with found networks."""

from __future__ import annotations

from collections.abc import Sequence

from .genotype import FeatureSpec, Genotype


def last_feature(features: Sequence[FeatureSpec], modality: str) -> str:
    """The last feature of ``modality`` in feature order (its deepest layer)."""
    names = [f.name for f in features if f.name.split(".", 1)[0] == modality]
    if not names:
        raise ValueError(f"no feature of modality {modality!r} among {[f.name for f in features]}")
    return names[-1]


def modalities(features: Sequence[FeatureSpec]) -> list[str]:
    return list(dict.fromkeys(f.name.split(".", 1)[0] for f in features))


def unimodal(features: Sequence[FeatureSpec], modality: str, C: int, L: int) -> Genotype:
    """One modality's last feature, projected, straight into the head."""
    return Genotype(C, L, tuple(features), (), (last_feature(features, modality),))


def late_fusion(features: Sequence[FeatureSpec], C: int, L: int) -> Genotype:
    """Concatenation of each modality's last feature, then the head."""
    return Genotype(C, L, tuple(features), (), tuple(last_feature(features, m) for m in modalities(features)))
