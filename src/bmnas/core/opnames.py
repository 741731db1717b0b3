"""Names of the built-in fusion ops, importable without torch.

A configuration is read and checked before any network is built (``bmnas show``, ``--help``, a
config error), so its op names are validated here; :mod:`bmnas.space.ops` registers one factory under
each of these names and checks at import that its registry matches.
"""

from __future__ import annotations

import sys

ZERO = "zero"
BUILTIN_OPS = ("zero", "sum", "attention", "linear_glu", "concat_fc")  # paper eqs. 4-8
DEFAULT_OPS = BUILTIN_OPS  # the ops a search mixes unless model.ops says otherwise


def known_ops() -> list[str]:
    """The op names a configuration may use: the built-ins and every op registered so far.

    An op of your own is registered with :func:`bmnas.space.ops.register_op`, which imports
    :mod:`bmnas.space.ops`; while that module is not loaded, no op beyond the built-ins can exist.
    """
    ops = sys.modules.get("bmnas.space.ops")
    return ops.list_ops() if ops is not None else sorted(BUILTIN_OPS)
