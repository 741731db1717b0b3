"""Run a frozen backbone once over a split and keep its named features, pooled right away (docs/DESIGN.md §2).

Any ``nn.Module`` works: the features are the outputs of the submodules named in
:attr:`Backbone.layers <bmnas.features.backbones.base.Backbone.layers>` (dotted paths as in
``module.named_modules()``), caught with forward hooks. A path ``"forward_intermediates:<i>"``
takes instead the i-th intermediate of a timm-style ``module.forward_intermediates(x, indices=…,
intermediates_only=True)``, which then replaces the plain forward pass.

The module runs in eval mode under ``torch.inference_mode()``, batch by batch; each raw output is
pooled with :func:`bmnas.features.pooling.pool_feature` inside its hook, so the raw maps of only one batch
are ever alive. Raw outputs must be channels-first: ``(B, C)``, ``(B, C, T)``, ``(B, C, H, W)`` or
``(B, C, T, H, W)``; a tuple output (e.g. an LSTM's) contributes its first tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack

import numpy as np
import torch
from torch import nn

from ..core.errors import BmnasError
from ..core.progress import bar as progress_bar
from .backbones.base import Backbone, torch_threads
from .pooling import pool_feature

INTERMEDIATES = "forward_intermediates:"
MAX_LISTED = 60


class LayerPathError(BmnasError, ValueError):
    """A feature layer path that names no submodule of the backbone."""


def resolve_layers(module: nn.Module, layers: Mapping[str, str]) -> dict[str, nn.Module | int]:
    """Map each feature layer to its submodule (or intermediate index); raise on unknown paths.

    Raises:
        LayerPathError: naming the bad path and listing the module names that exist.
    """
    named = dict(module.named_modules())
    out: dict[str, nn.Module | int] = {}
    for layer, path in layers.items():
        if path.startswith(INTERMEDIATES):
            if not callable(getattr(module, "forward_intermediates", None)):
                raise LayerPathError(
                    f"layer {layer!r} asks for {path!r} but {type(module).__name__} has no "
                    f"forward_intermediates method"
                )
            try:
                out[layer] = int(path.removeprefix(INTERMEDIATES))
            except ValueError as err:
                raise LayerPathError(f"layer {layer!r}: {path!r} must end with an integer index") from err
        elif path in named:
            out[layer] = named[path]
        else:
            names = [n for n in named if n]
            shown = ", ".join(names[:MAX_LISTED]) + (
                f", … ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
            )
            raise LayerPathError(
                f"layer {layer!r}: {type(module).__name__} has no submodule {path!r}; "
                f"available module names: {shown or '(none)'}"
            )
    return out


def _first_tensor(output: object, where: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"{where} returned {type(output).__name__}, not a tensor; hook another module")


def _module_device(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _to_device(batch: torch.Tensor | Mapping[str, torch.Tensor], device: torch.device):
    if isinstance(batch, Mapping):
        return {k: v.to(device) for k, v in batch.items()}
    return batch.to(device)


def extract_features(
    backbone: Backbone,
    inputs: np.ndarray | Sequence,
    *,
    length: int,
    pooling: str = "max",
    batch_size: int = 256,
    progress: bool = True,
    desc: str | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Pooled features of ``backbone`` for every sample of ``inputs``.

    Args:
        backbone: the module, the layers to read and the preprocessing of a batch of inputs.
        inputs: ``N`` raw samples (an array ``(N, …)`` or any sliceable sequence) for ``preprocess``.
        length: L, positions of a pooled sequence/map feature; vectors keep 1 position.
        pooling: ``"max"`` or ``"avg"`` (see :func:`bmnas.features.pooling.pool_feature`).
        device: where to run; default the module's own device.
        threads: intra-op torch threads while extracting (None: torch's current setting).

    Returns:
        ``"<modality>.<layer>" -> (N, L_k, C_in)`` float32 arrays, in the backbone's layer order.
    """
    module = backbone.module
    targets = resolve_layers(module, backbone.layers)
    names = dict(zip(backbone.layers, backbone.feature_names(), strict=True))
    intermediates = {layer: i for layer, i in targets.items() if isinstance(i, int)}
    device = torch.device(device) if device is not None else _module_device(module)
    n = len(inputs)
    if n == 0:
        raise ValueError(f"no samples to extract {backbone.modality} features from")
    out: dict[str, np.ndarray] = {}
    pooled: dict[str, torch.Tensor] = {}

    def hook_for(layer: str):
        def hook(_mod: nn.Module, _inp: object, output: object) -> None:
            if layer in pooled:
                raise RuntimeError(
                    f"feature {names[layer]!r}: module {backbone.layers[layer]!r} ran twice in one "
                    f"forward pass; take features from a module that runs once"
                )
            raw = _first_tensor(output, f"module {backbone.layers[layer]!r}")
            pooled[layer] = pool_feature(raw, length, pooling)

        return hook

    was_training = module.training
    module.eval()
    module.to(device)
    try:
        with ExitStack() as stack, torch.inference_mode(), torch_threads(threads):
            for layer, target in targets.items():
                if isinstance(target, nn.Module):
                    stack.callback(target.register_forward_hook(hook_for(layer)).remove)
            bar = progress_bar(
                total=n, desc=desc or f"extract {backbone.modality}", unit="sample", enabled=progress
            )
            stack.callback(bar.close)
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                batch = _to_device(backbone.preprocess(inputs[start:stop]), device)
                pooled.clear()
                _forward(module, batch, intermediates, pooled, length, pooling)
                for layer in backbone.layers:
                    if layer not in pooled:
                        raise RuntimeError(
                            f"feature {names[layer]!r}: module {backbone.layers[layer]!r} did not run "
                            f"in the forward pass"
                        )
                    arr = pooled[layer].float().cpu().numpy()
                    if arr.shape[0] != stop - start:
                        raise RuntimeError(
                            f"feature {names[layer]!r} has batch size {arr.shape[0]}, expected "
                            f"{stop - start}; features must be batch-first"
                        )
                    if names[layer] not in out:
                        out[names[layer]] = np.empty((n, *arr.shape[1:]), dtype=np.float32)
                    out[names[layer]][start:stop] = arr
                bar.update(stop - start)
    finally:
        module.train(was_training)
    return {names[layer]: out[names[layer]] for layer in backbone.layers}


def _forward(
    module: nn.Module,
    batch,
    intermediates: dict[str, int],
    pooled: dict[str, torch.Tensor],
    length: int,
    pooling: str,
) -> None:
    """One forward pass; fill ``pooled`` for the ``forward_intermediates`` layers too."""
    if not intermediates:
        module(**batch) if isinstance(batch, Mapping) else module(batch)
        return
    indices = sorted(set(intermediates.values()))
    feats = module.forward_intermediates(batch, indices=indices, intermediates_only=True)
    if len(feats) != len(indices):
        raise RuntimeError(f"forward_intermediates returned {len(feats)} tensors for indices {indices}")
    by_index = dict(zip(indices, feats, strict=True))
    for layer, i in intermediates.items():
        pooled[layer] = pool_feature(_first_tensor(by_index[i], f"intermediate {i}"), length, pooling)
