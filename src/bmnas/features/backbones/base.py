"""The backbone contract: any frozen ``nn.Module`` plus the names of the layers to take features from.

A :class:`Backbone` says which modality it reads, which submodules' outputs are features
(``layers``: feature layer name -> dotted module path, read with forward hooks), and how to turn a
batch of raw inputs into the module's input (``preprocess``). Features are named
``<modality>.<layer>``. :func:`torch_threads` sets how many threads a backbone runs on, for
pre-training and feature extraction alike.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.errors import BmnasError, MissingDependencyError
from ...core.registry import import_quietly


def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(batch), dtype=torch.float32)


@dataclass
class Backbone:
    """A frozen unimodal feature extractor."""

    modality: str
    module: nn.Module
    layers: Mapping[str, str]
    preprocess: Callable[[np.ndarray], torch.Tensor | Mapping[str, torch.Tensor]] = field(default=_to_tensor)
    name: str = ""
    fit_on_train: bool = False  # trained by bmnas on the dataset's train split (engine/folds.py)

    def feature_names(self) -> list[str]:
        return [f"{self.modality}.{layer}" for layer in self.layers]

    def weights_hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the state dict: part of every feature-cache key."""
        h = hashlib.sha256()
        for key, value in sorted(self.module.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients: a frozen backbone."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


BackboneFactory = Callable[..., list[Backbone]]
_FACTORIES: dict[str, BackboneFactory] = {}


def register_backbones(dataset_name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: register ``factory(raw_dataset, root, seed=0, progress=True) -> [Backbone]``.

    The factory returns the frozen backbones (eval mode) that turn ``dataset_name``'s raw inputs
    into features, pre-training them first where bmnas ships no weights (cached under ``root``).
    """

    def wrap(fn: BackboneFactory) -> BackboneFactory:
        _FACTORIES[dataset_name] = fn
        return fn

    return wrap


def backbones_for(dataset_name: str, raw, root, **options) -> list[Backbone]:
    """The registered backbones of ``dataset_name`` (see :func:`register_backbones`)."""
    if dataset_name not in _FACTORIES:
        import_quietly(f"bmnas.features.backbones.{dataset_name}")
    if dataset_name not in _FACTORIES:
        raise BackboneError(
            f"no backbones registered for dataset {dataset_name!r}; known: {sorted(_FACTORIES)}"
        )
    factory = _FACTORIES[dataset_name]
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        valid = sorted(named[2:])  # after (raw, root)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise BackboneError(
                f"unknown --backbone-option {unknown} for {dataset_name!r}; valid options: {valid or 'none'}"
            )
    return factory(raw, root, **options)


class BackboneError(BmnasError, ValueError):
    """Backbones that cannot be built as asked (unknown dataset or option)."""


def package_dir(module: str, requirement: str, needs: str, install: str | None = None) -> Path:
    """The folder of the installed package ``module``, which ships backbone weights.

    The package is located, not imported: only its files are needed. Raises
    :class:`~bmnas.core.errors.MissingDependencyError` (``needs``, then how to install
    ``requirement``; ``install``: the command to show instead) when it is missing.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        how = install or f"pip install '{requirement}' (or pip install 'bmnas[pretrained]')"
        raise MissingDependencyError(f"{needs}: {how}")
    return Path(next(iter(spec.submodule_search_locations)))


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op torch threads (None: leave the setting alone), then restore.

    Small backbones run fastest on one thread, and OpenMP threads that spin at every op slow down
    badly when another process holds a core (docs/DESIGN.md §11).
    """
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
