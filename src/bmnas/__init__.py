"""bmnas: Bilevel Multimodal Neural Architecture Search.

The Python API mirrors the command line:

* data: :func:`load_data` (a config's ``--dataset``/``--data``), :func:`dataset_features` (a
  registered dataset through its backbones), :func:`extract_features` (your own models and raw
  inputs -> the generic ``--data`` format);
* :func:`run` (``bmnas run``: search, train, baselines, recommended network); the stages alone
  are :func:`search` (``bmnas search``, :func:`bmnas.searcher.search`) and :func:`train`
  (``bmnas train``, the evaluation stage :func:`bmnas.trainer.train_found`). Their modules are
  named ``searcher`` and ``trainer`` so that importing them never replaces these functions;
* :func:`load` (a trained run -> a network that predicts), :class:`Config`, :class:`Genotype`.

Heavy modules (torch) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.2.0"

# name -> (module, attribute): resolved lazily by __getattr__
_API = {
    "Config": ("config", "Config"),
    "Genotype": ("genotype", "Genotype"),
    "load_data": ("cli", "load_data"),
    "dataset_features": ("pipeline", "dataset_features"),
    "extract_features": ("generic", "extract_features"),
    "run": ("workflow", "run"),
    "load": ("predict", "load"),
    "search": ("searcher", "search"),
    "train": ("trainer", "train_found"),
}
__all__ = [
    "Config",
    "Genotype",
    "__version__",
    "dataset_features",
    "extract_features",
    "load",
    "load_data",
    "run",
    "search",
    "train",
]

if TYPE_CHECKING:
    from .cli import load_data
    from .config import Config
    from .generic import extract_features
    from .genotype import Genotype
    from .pipeline import dataset_features
    from .predict import load
    from .searcher import search
    from .trainer import train_found as train
    from .workflow import run


def __getattr__(name: str):
    if name in _API:
        from importlib import import_module

        module, attr = _API[name]
        return getattr(import_module(f"bmnas.{module}"), attr)
    raise AttributeError(f"module 'bmnas' has no attribute {name!r}")
