"""Name registries filled by importing modules: ``bmnas.features.datasets.<name>`` and
``bmnas.features.backbones.<name>``
register their builders with a decorator when imported, so a registry looks a name up by importing
the module of that name first.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError


def optional(module: str, needs: str, install: str) -> ModuleType:
    """Import the optional dependency ``module``, or raise one line: what ``needs`` it, ``install``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and err.name != module and not module.startswith(f"{err.name}."):
            raise  # the package is there but broken inside: not a missing dependency
        raise MissingDependencyError(f"{needs} needs {module.split('.')[0]}: {install}") from None


def import_quietly(module: str) -> None:
    """Import ``module`` so that its ``@register_*`` decorators run; a missing module is fine."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
