"""bmnas: Bilevel Multimodal Neural Architecture Search.

The Python API mirrors the command line:

* data: :func:`load_data` (a config's ``--dataset``/``--data``), :func:`dataset_features` (a
  registered dataset through its backbones), :func:`extract_features` (your own models and raw
  inputs -> the generic ``--data`` format);
* :func:`run` (``bmnas run``: search, train, baselines, recommended network); the stages alone
  are :func:`search` (``bmnas search``, :func:`bmnas.method.search.search`) and :func:`train`
  (``bmnas train``, :func:`bmnas.method.run.train_found`: the evaluation stage, then ``model.pt``
  and ``metrics.json``). Their modules live in :mod:`bmnas.method`, so that importing them never
  replaces these functions. Given a path, each writes the run directory the command would
  (``config.yaml``, fingerprint, results, plots), so every command accepts it;
* :func:`load` (a trained run -> a network that predicts), :class:`Config` (``Config.from_dict``:
  the checks of ``--config``/``--set``), :class:`Genotype`.

Computing entries (``run``, ``search``, ``train``, a loaded network's ``predict``) apply bmnas'
thread policy (config ``threads``; :func:`bmnas.engine.device.uses_threads`) for their duration and
restore torch's thread count after. Heavy modules (torch) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__

# name -> (module, attribute): resolved lazily by __getattr__; attribute None = the module itself
_API = {
    "Config": ("core.config", "Config"),
    "Genotype": ("core.genotype", "Genotype"),
    "load_data": ("features.pipeline", "load_data"),
    "dataset_features": ("features.pipeline", "dataset_features"),
    "extract_features": ("features.from_modules", "extract_features"),
    "register_op": ("space.ops", "register_op"),
    "ops": ("space.ops", None),
    "run": ("method.run", "run"),
    "load": ("serve.model", "load"),
    "search": ("method.search", "search"),
    "train": ("method.run", "train_found"),
}
__all__ = [
    "Config",
    "Genotype",
    "__version__",
    "dataset_features",
    "extract_features",
    "load",
    "load_data",
    "register_op",
    "run",
    "search",
    "train",
]

if TYPE_CHECKING:
    from .core.config import Config
    from .core.genotype import Genotype
    from .features.from_modules import extract_features
    from .features.pipeline import dataset_features, load_data
    from .method.run import run
    from .method.run import train_found as train
    from .method.search import search
    from .serve.model import load
    from .space import ops as ops
    from .space.ops import register_op


def __getattr__(name: str):
    if name in _API:
        from importlib import import_module  # allowed: the API loads torch only on first use

        module, attr = _API[name]
        mod = import_module(f"bmnas.{module}")
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'bmnas' has no attribute {name!r}")
