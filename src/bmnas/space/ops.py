"""Primitive fusion ops (docs/DESIGN.md §5 Ops, paper eqs. 4–8) and the registry that names them.

Every op maps ``k`` tensors of shape ``(B, L, C)`` (channels last, see docs/ARCHITECTURE.md) to one
``(B, L, C)`` tensor; ``k`` is the op's arity (2 for the built-ins). A factory has the signature
``factory(C, L, dropout) -> nn.Module``. Register your own with :func:`register_op`::

    @register_op("product")
    class Product(nn.Module):
        def __init__(self, C, L, dropout): super().__init__()
        def forward(self, x, y): return x * y

    @register_op("gated_sum3", arity=3)
    def gated_sum3(C, L, dropout): return MyTernaryOp(C)
"""

from __future__ import annotations

import fnmatch
import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.opnames import BUILTIN_OPS, ZERO
from ..core.opnames import DEFAULT_OPS as DEFAULT_OPS  # re-exported: bmnas.ops.DEFAULT_OPS

OpFactory = Callable[[int, int, float], nn.Module]


@dataclass(frozen=True)
class OpSpec:
    """A registered op: its name, factory and number of inputs."""

    name: str
    factory: OpFactory
    arity: int = 2
    commutative: bool = False  # op(x, y) == op(y, x) bit for bit, parameters independent of the order


_OPS: dict[str, OpSpec] = {}


_BITS = threading.local()


def _bit_generator() -> np.random.PCG64:
    """This thread's PCG64, its 256-bit state freshly drawn from torch's default generator.

    Drawing the state at every call keeps masks a function of torch's RNG state, so that
    ``torch.manual_seed`` and ``torch.set_rng_state`` (resume) reproduce them; setting the state of
    one generator costs a fifth of constructing a seeded one.
    """
    gen = getattr(_BITS, "gen", None)
    if gen is None:
        gen = _BITS.gen = np.random.PCG64()
    a, b, c, d = (v % 2**64 for v in torch.randint(-(2**63), 2**63 - 1, (4,), dtype=torch.int64).tolist())
    state = {"state": a | b << 64, "inc": c | d << 64 | 1}  # PCG needs an odd increment
    gen.state = {"bit_generator": "PCG64", "state": state, "has_uint32": 0, "uinteger": 0}
    return gen


def dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A dropout mask for ``x``: each entry ``1 / (1 - p)`` with probability ``1 - p``, else 0.

    The distribution of ``nn.Dropout``'s mask, at 2⁻³² resolution: keep iff a uniform 32-bit
    ``u ≥ T = round(p·2³²)``. On CPU the bits come from numpy's PCG64 (:func:`_bit_generator`):
    torch's CPU ``bernoulli_`` is a serial per-element Mersenne Twister on non-Intel CPUs, a large
    share of a search iteration (measured in benchmarks/README.md). Only the top byte of ``u`` is
    drawn for every entry; the low 24 bits only where that byte equals the top byte of ``T`` (1
    entry in 256), which decides exactly the same comparison.
    """
    if x.device.type != "cpu":
        return torch.empty_like(x).bernoulli_(1.0 - p).div_(1.0 - p)
    n = x.numel()
    bits = _bit_generator()
    threshold = min(round(p * 2.0**32), 2**32 - 1)
    t_hi, t_lo = threshold >> 24, threshold & 0xFFFFFF
    hi = bits.random_raw((n + 7) // 8).view(np.uint8)[:n]
    keep = hi > t_hi
    ties = np.flatnonzero(hi == t_hi)
    if ties.size:
        lo = bits.random_raw((ties.size + 1) // 2).view(np.uint32)[: ties.size] & 0xFFFFFF
        keep[ties] = lo >= t_lo
    dtype = np.float64 if x.dtype == torch.float64 else np.float32
    mask = np.multiply(keep, dtype(1.0 / (1.0 - p)), dtype=dtype)
    return torch.from_numpy(mask).view(x.shape).to(x.dtype)


def vmapped(x: torch.Tensor) -> bool:
    """Whether ``x`` is a tensor inside ``torch.func.vmap`` (stacked folds, :mod:`bmnas.engine.batched`)."""
    return torch._C._functorch.is_batchedtensor(x)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with a faster mask on CPU (:func:`dropout_mask`).

    Under ``vmap`` on CPU the mask is ``1[u ≥ p] / (1 − p)`` with ``u = rand_like(x)``: the NumPy mask
    would be one mask shared by every vmapped network, where ``rand_like`` with
    ``randomness="different"`` draws one per network (and at half the cost of ``bernoulli_``).
    """
    if not training or p == 0.0:
        return x
    if p >= 1.0 or x.device.type != "cpu" or torch.compiler.is_compiling():
        return F.dropout(x, p, True)
    if vmapped(x):
        return x * (torch.rand_like(x) >= p).to(x.dtype).div_(1.0 - p)
    return x * dropout_mask(x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` that draws its mask with :func:`dropout_mask` (same distribution, faster on CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def register_op(name: str, arity: int = 2, commutative: bool = False) -> Callable[[OpFactory], OpFactory]:
    """Decorator: register ``factory(C, L, dropout) -> nn.Module`` as the op ``name``.

    ``commutative``: swapping the op's inputs gives the same network bit for bit, trained or not
    (its parameters, if any, do not depend on which input is which): ``sum``. Re-ranking then trains
    two candidates that differ only in that order once (:func:`bmnas.method.rerank.network_key`).
    """
    if arity < 1:
        raise ValueError(f"op {name!r}: arity must be >= 1, got {arity}")

    def wrap(factory: OpFactory) -> OpFactory:
        if name in _OPS:
            warnings.warn(f"op {name!r} is registered again; the new factory replaces the old", stacklevel=2)
        _OPS[name] = OpSpec(name, factory, arity, commutative)
        return factory

    return wrap


def is_commutative(name: str) -> bool:
    """Whether the registered op ``name`` gives the same network with its inputs swapped."""
    spec = _OPS.get(name)
    return spec is not None and spec.commutative


def list_ops(pattern: str = "*") -> list[str]:
    """Registered op names matching a glob pattern."""
    return sorted(n for n in _OPS if fnmatch.fnmatch(n, pattern))


def get_op(name: str) -> OpSpec:
    """The :class:`OpSpec` registered as ``name``; a clear error lists the valid names."""
    if name not in _OPS:
        raise KeyError(f"unknown op {name!r}; registered ops: {list_ops()}")
    return _OPS[name]


def create_op(name: str, C: int, L: int, dropout: float = 0.0) -> nn.Module:
    """Instantiate the op ``name`` for ``C`` channels and ``L`` positions."""
    return get_op(name).factory(C, L, dropout)


@register_op(ZERO)
class Zero(nn.Module):
    """``Zero(x, y) = 0`` (eq. 4). Mixed steps skip it; a derived zero step outputs zeros."""

    def __init__(self, C: int, L: int, dropout: float = 0.0):
        super().__init__()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(inputs[0])


@register_op("sum", commutative=True)
class Sum(nn.Module):
    """``Sum(x, y) = x + y`` (eq. 5); no parameters, and IEEE addition commutes: ``Sum(x, y) = Sum(y, x)``."""

    def __init__(self, C: int, L: int, dropout: float = 0.0):
        super().__init__()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


@register_op("attention")
class Attention(nn.Module):
    """Guided scaled dot-product attention over the L positions (eq. 6), query x, key = value y.

    With rows as positions, ``A = softmax(x yᵀ / √C)`` is ``(B, L, L)`` and the output is
    ``LayerNorm_{(L, C)}(Dropout(A y))``.
    """

    def __init__(self, C: int, L: int, dropout: float = 0.0):
        super().__init__()
        self.scale = 1.0 / math.sqrt(C)
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm([L, C])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scores = torch.baddbmm(x.new_empty(()), x, y.transpose(1, 2), beta=0.0, alpha=self.scale)
        return self.norm(self.dropout(torch.bmm(scores.softmax(dim=-1), y)))  # (B, L, C)


@register_op("linear_glu")
class LinearGLU(nn.Module):
    """``LinearGLU(x, y) = (W₁ x + b₁) ⊙ σ(W₂ y + b₂)`` with ``W₁, W₂ ∈ R^{C×C}`` (eq. 7)."""

    def __init__(self, C: int, L: int, dropout: float = 0.0):
        super().__init__()
        self.value = nn.Linear(C, C)
        self.gate = nn.Linear(C, C)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.value(x) * torch.sigmoid(self.gate(y))


@register_op("concat_fc")
class ConcatFC(nn.Module):
    """``ConcatFC(x, y) = Dropout(ReLU(BN(W [x; y] + b)))`` with ``W ∈ R^{C×2C}`` (eq. 8).

    ``W [x; y]`` is computed as ``W_x x + W_y y`` (the two halves of W): no concatenation.
    """

    def __init__(self, C: int, L: int, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(2 * C, C)
        self.bn = nn.BatchNorm1d(C)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        C = x.shape[-1]
        z = torch.addmm(self.fc.bias, x.reshape(-1, C), self.fc.weight[:, :C].t())
        # in place (no second output); autocast leaves in-place ops alone, hence the (no-op in fp32) casts;
        # vmap has no batching rule for addmm_ (it would loop over the networks): out of place there
        y_part, w_part = y.reshape(-1, C).to(z.dtype), self.fc.weight[:, C:].t().to(z.dtype)
        z = torch.addmm(z, y_part, w_part) if vmapped(z) else z.addmm_(y_part, w_part)
        return self.dropout(F.relu(self.bn(z))).view_as(x)


# configs are checked against bmnas.core.opnames (torch-free): the two lists must name the same ops
if set(_OPS) != set(BUILTIN_OPS):
    raise ImportError(
        f"space.ops registers {sorted(_OPS)}, but core.opnames.BUILTIN_OPS is {sorted(BUILTIN_OPS)}"
    )
