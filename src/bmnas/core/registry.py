"""Name registries filled by importing modules: ``bmnas.features.datasets.<name>`` and
``bmnas.features.backbones.<name>``
register their builders with a decorator when imported, so a registry looks a name up by importing
the module of that name first.
"""

from __future__ import annotations

import importlib


def import_quietly(module: str) -> None:
    """Import ``module`` so that its ``@register_*`` decorators run; a missing module is fine."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
