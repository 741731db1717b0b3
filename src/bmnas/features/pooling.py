"""Parameter-free pooling of raw backbone features to a fixed number of positions (docs/DESIGN.md §2).

Every raw feature becomes ``(N, L_k, C_in)`` with ``L_k ∈ {1, L}``:

* vector ``(N, C_in)``            → ``(N, 1, C_in)``; broadcast to L positions later, never copied.
* sequence ``(N, C_in, T)``       → adaptive max (or avg) pool over T to L; linear interpolation
  up to L when ``T < L``.
* map ``(N, C_in, H, W)``         → adaptive pool to an ``h × w`` grid with ``h·w = L`` (the most
  square factorisation, the longer grid side along the longer map side), flattened row-major.
* video ``(N, C_in, T, H, W)``    → pool over H, W, then over T as a sequence.

The result is stored *position-major* (channels last): this is the layout the trainable
projection's matmul wants, so search and training never transpose it.
"""

from __future__ import annotations

import logging
import math
import mmap
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

POOLING_MODES = ("max", "avg")
_told: set[tuple[str, tuple[int, ...], int]] = set()  # (feature, raw positions, L) already logged


def grid_for(length: int, height: int = 1, width: int = 1) -> tuple[int, int]:
    """Most square ``(h, w)`` with ``h·w = length``; the longer side follows the longer map side."""
    short = max(d for d in range(1, math.isqrt(length) + 1) if length % d == 0)
    long = length // short
    return (long, short) if height > width else (short, long)


def _pool_sequence(x: torch.Tensor, length: int, mode: str) -> torch.Tensor:
    """(N, C, T) -> (N, C, length)."""
    if x.shape[-1] < length:
        return F.interpolate(x, size=length, mode="linear", align_corners=True)
    if torch.compiler.is_exporting() and x.shape[-1] % length:
        return _bins(x, (length,), mode)
    pool = F.adaptive_max_pool1d if mode == "max" else F.adaptive_avg_pool1d
    return pool(x, length)


def _bins(x: torch.Tensor, size: tuple[int, ...], mode: str) -> torch.Tensor:
    """Adaptive pooling of the last ``len(size)`` axes written out bin by bin, as torch defines it:
    output bin ``i`` of ``n`` over ``T`` positions reduces ``[⌊iT/n⌋, ⌈(i+1)T/n⌉)``.

    The same values as ``F.adaptive_*_pool``; used while exporting (``torch.export``, hence ONNX),
    whose converter has no adaptive pooling of sizes that do not divide.
    """
    axis = x.dim() - len(size)
    for k, n in enumerate(size):
        t = x.shape[axis + k]
        parts = []
        for i in range(n):
            part = x.narrow(axis + k, (i * t) // n, -(-(i + 1) * t // n) - (i * t) // n)
            reduce = part.amax if mode == "max" else part.mean
            parts.append(reduce(dim=axis + k, keepdim=True))
        x = torch.cat(parts, dim=axis + k)
    return x


def stretched(shape: tuple[int, ...], length: int) -> bool:
    """Whether a raw feature of ``shape`` ``(N, C_in, *spatial)`` has fewer positions than ``length``
    along an axis, so that pooling interpolates it up instead of pooling it down."""
    if len(shape) in (3, 5):
        return shape[2] < length
    if len(shape) == 4:
        h, w = grid_for(length, shape[2], shape[3])
        return shape[2] < h or shape[3] < w
    return False


def pool_feature(x: torch.Tensor, length: int, mode: str = "max", name: str | None = None) -> torch.Tensor:
    """Pool a batch of raw features ``(N, C_in, *spatial)`` to ``(N, L_k, C_in)``.

    Args:
        x: raw features with 2 (vector), 3 (sequence), 4 (map) or 5 (video) dimensions.
        length: L, the number of positions of a fused tensor.
        mode: ``"max"`` (default) or ``"avg"`` pooling.
        name: the feature's name; given, a feature with fewer positions than ``length`` (e.g.
            features exported with L = 4, read with model.L = 8) is logged once per process.
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; choose one of {POOLING_MODES}")
    if length < 1:
        raise ValueError(f"L must be >= 1, got {length}")
    if x.dim() >= 2 and 0 in x.shape[1:]:
        raise ValueError(f"a raw feature needs every dimension after N to be >= 1, got {tuple(x.shape)}")
    x = x.float()
    spatial = tuple(x.shape[2:])
    if name is not None and (name, spatial, length) not in _told and stretched(tuple(x.shape), length):
        _told.add((name, spatial, length))
        log.info(
            "feature %r has %s positions, fewer than model.L = %d: interpolated up to %d (copies, "
            "no new information); set model.L to at most its length, or extract it with length >= %d",
            name,
            "×".join(map(str, spatial[-2:] if x.dim() == 4 else spatial[:1])),
            length,
            length,
            length,
        )
    if x.dim() == 2:
        out = x.unsqueeze(-1)
    elif x.dim() == 3:
        out = _pool_sequence(x, length, mode)
    elif x.dim() == 4:
        h, w = grid_for(length, x.shape[-2], x.shape[-1])
        pool = F.adaptive_max_pool2d if mode == "max" else F.adaptive_avg_pool2d
        if x.shape[-2] < h or x.shape[-1] < w:
            x = F.interpolate(x, size=(max(h, x.shape[-2]), max(w, x.shape[-1])), mode="nearest")
        if torch.compiler.is_exporting() and (x.shape[-2] % h or x.shape[-1] % w):
            pool = partial(_bins, mode=mode)
        out = pool(x, (h, w)).flatten(2)
    elif x.dim() == 5:
        reduce = torch.amax if mode == "max" else torch.mean
        out = _pool_sequence(reduce(x, dim=(-2, -1)), length, mode)
    else:
        raise ValueError(
            f"a raw feature must have shape (N, C), (N, C, T), (N, C, H, W) or (N, C, T, H, W); "
            f"got {tuple(x.shape)}"
        )
    return out.transpose(1, 2).contiguous()


CHUNK_BYTES = 64 << 20  # rows pooled at once, as float32: peak memory is one chunk, not the data


def pooled_shape(shape: tuple[int, ...], length: int) -> tuple[int, int, int]:
    """``(N, L_k, C_in)`` of a raw feature of ``shape`` ``(N, C_in, *spatial)`` pooled to L positions."""
    return (shape[0], 1 if len(shape) == 2 else length, shape[1])


def chunk_rows(shape: tuple[int, ...], budget: int | None = None) -> int:
    """Rows of a raw feature of ``shape`` whose float32 copy fits ``budget`` bytes (default
    :data:`CHUNK_BYTES`; at least one row)."""
    budget = CHUNK_BYTES if budget is None else budget
    per_row = 4 * math.prod(shape[1:])
    return max(1, budget // max(per_row, 1))


def pool_chunks(
    x: np.ndarray,
    length: int,
    mode: str = "max",
    out: np.ndarray | None = None,
    rows: int | None = None,
    on_chunk: Callable[[np.ndarray, int], None] | None = None,
) -> np.ndarray:
    """Pool a raw feature ``(N, C_in, *spatial)`` (e.g. a read-only memory map) chunk by chunk.

    Pooling is per row, so the result equals :func:`pool_feature` of the whole array; only one chunk
    of ``rows`` rows (default :func:`chunk_rows`) is in memory at a time.

    Args:
        x: an array-like with ``shape`` and row slicing (``numpy.ndarray``, ``numpy.memmap``).
        out: where to write ``(N, L_k, C_in)`` float32 (e.g. a memory-mapped file); default a new array.
        on_chunk: called as ``on_chunk(chunk, first_row)`` before each chunk is pooled (checks).

    Returns:
        ``out``.
    """
    n = x.shape[0]
    rows = rows or chunk_rows(tuple(x.shape))
    if out is None:
        out = np.empty(pooled_shape(tuple(x.shape), length), dtype=np.float32)
    for start in range(0, n, rows):
        chunk = np.array(x[start : start + rows])  # read from disk once, writable for torch
        if chunk.dtype.byteorder not in ("=", "|") and chunk.dtype != chunk.dtype.newbyteorder("="):
            chunk = chunk.astype(chunk.dtype.newbyteorder("="))
        if on_chunk is not None:
            on_chunk(chunk, start)
        out[start : start + chunk.shape[0]] = pool_feature(torch.as_tensor(chunk), length, mode).numpy()
        _release(x, start + chunk.shape[0])
    return out


def _release(x: np.ndarray, stop: int) -> None:
    """Unmap the pages of rows ``< stop`` of a memory-mapped ``x`` from this process.

    Pages a memory map has read stay in the process's resident set until it is closed; dropping
    them (``MADV_DONTNEED``: the kernel's page cache keeps the file) holds the resident set to one
    chunk. Anything but a whole ``np.load(mmap_mode="r")`` array is left alone.
    """
    mm = getattr(x, "_mmap", None)
    if mm is None or not hasattr(mmap, "MADV_DONTNEED") or not x.flags.c_contiguous:
        return
    begin = int(getattr(x, "offset", 0)) % mmap.ALLOCATIONGRANULARITY  # where the array starts in the map
    end = begin + stop * (x.nbytes // max(x.shape[0], 1))
    end -= end % mmap.PAGESIZE
    if end > 0:
        try:
            mm.madvise(mmap.MADV_DONTNEED, 0, min(end, len(mm)))
        except (OSError, ValueError):  # not every platform or mapping supports it: memory only
            return
