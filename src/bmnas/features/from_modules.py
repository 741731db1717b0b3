"""Your own backbones and raw inputs -> the generic ``--data DIR`` format, in one call.

:func:`extract_features` runs each modality's ``nn.Module`` once over every split's raw inputs,
reads the named layers with forward hooks (:mod:`bmnas.features.extract`), pools each to L positions
(:mod:`bmnas.features.pooling`) and writes ``DIR/{train,val,test}.npz``. Pooled maps are stored as
``(N, C_in, L)`` sequences and vectors as ``(N, C_in)``, so loading the directory with the same L
(``model.L``) gives exactly the pooled features extracted here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.data import SPLITS
from ..core.errors import DataError
from .backbones.base import Backbone, _to_tensor
from .extract import extract_features as _extract
from .generic import generic_layout, write_npz
from .validate import validate_split


def extract_features(
    modules: Mapping[str, nn.Module],
    layers: Mapping[str, Sequence[str] | Mapping[str, str]],
    inputs: Mapping[str, Mapping[str, np.ndarray | Sequence]],
    labels: Mapping[str, np.ndarray],
    out: str | Path,
    *,
    length: int = 8,
    pooling: str = "max",
    preprocess: Mapping[str, Callable[[np.ndarray], torch.Tensor]] | None = None,
    batch_size: int = 256,
    progress: bool = False,
    threads: int | None = None,
) -> Path:
    """Extract features of your own models on your own raw inputs and write the generic format.

    Args:
        modules: modality -> frozen ``nn.Module`` (run in eval mode, without gradients).
        layers: modality -> the submodules to read, as names of ``module.named_modules()``
            (features ``<modality>.<name>``), or a dict ``feature layer name -> module path``.
        inputs: split (``train``, ``val``, ``test``) -> modality -> N raw samples (an array or any
            sliceable sequence the module, or ``preprocess``, accepts batch by batch).
        labels: split -> ``(N,)`` class indices or ``(N, K)`` multi-hot labels.
        out: the directory to write ``{train,val,test}.npz`` into.
        length: L, positions of pooled sequence/map features; use the ``model.L`` you search with.
        pooling: ``"max"`` or ``"avg"``.
        preprocess: modality -> function turning a batch slice of raw inputs into the module's
            input (default: ``torch.as_tensor(batch, dtype=float32)``).

    Returns:
        ``out``, ready for ``bmnas run --data out`` (with ``--set model.L=<length>``).
    """
    missing = [s for s in SPLITS if s not in inputs or s not in labels]
    if missing:
        raise DataError(
            f"extract_features: inputs and labels need the splits {list(SPLITS)}; missing {missing}"
        )
    unknown = sorted(set(layers) - set(modules))
    if unknown or not modules:
        raise DataError(f"extract_features: layers name modalities {unknown} without a module in `modules`")
    backbones = []
    for modality, module in modules.items():
        chosen = layers.get(modality)
        if not chosen:
            raise DataError(f"extract_features: no layers given for modality {modality!r}")
        paths = dict(chosen) if isinstance(chosen, Mapping) else {name: name for name in chosen}
        prep = (preprocess or {}).get(modality, _to_tensor)
        backbones.append(Backbone(modality, module, paths, prep, name=modality))
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        arrays: dict[str, np.ndarray] = {}
        for b in backbones:
            if b.modality not in inputs[split]:
                raise DataError(
                    f"extract_features: split {split!r} has no inputs for modality {b.modality!r}"
                )
            pooled = _extract(
                b,
                inputs[split][b.modality],
                length=length,
                pooling=pooling,
                batch_size=batch_size,
                progress=progress,
                threads=threads,
                desc=f"extract {split}/{b.modality}",
            )
            arrays.update(generic_layout(pooled))
        y = np.asarray(labels[split])
        validate_split(f"{root}/{split}", arrays, y)
        write_npz(root / f"{split}.npz", y, arrays)
    return root
