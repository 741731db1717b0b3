"""Static input buffers, and the evaluation forward as a function of a batch replayed as a CUDA graph.

The loops' batch functions share one recipe (PyTorch's whole-network capture,
https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs): a function owns *static input
buffers* of one batch size ``B`` (:func:`buffers_like`), each batch is ``copy_``-ed into them
(:func:`copy_into`), and on CUDA the work on them is captured once, after warm-up runs on a side
stream (:func:`side_stream`), and replayed. :class:`bmnas.engine.graphs.StepFunction` applies it to
a training step; :class:`ForwardFunction` here to the eval-mode, no-grad forward of
:func:`bmnas.engine.loop.forward_batches` (the val/test scoring after every epoch, selection,
re-ranking, predictions). This module sits under ``engine/loop.py`` (which calls it) and
``engine/graphs.py`` (which imports ``loop``), so that neither import goes in a circle.

The short last batch (``r < B`` rows) is *padded*: its rows are copied into the first ``r`` rows
of the buffers, the one graph is replayed, and the first ``r`` rows of the output are kept. In eval
mode the rows of a batch are independent (BatchNorm reads its running statistics, dropout is the
identity), so the kept rows are exactly those of a forward of the ``r`` rows alone; the rows past
``r`` hold the previous batch, real inputs, so nothing non-finite is computed. One graph and one
replay per batch cost less than a second graph or an eager launch of every kernel. A batch of
*more* than ``B`` rows (a last batch of one row joined to the one before,
:func:`bmnas.engine.loop.split_batches`) runs eagerly.

A captured graph reads the parameters and buffers where they were at capture. ``load_state_dict``
(a resumed checkpoint, :mod:`bmnas.engine.checkpoint`) copies into them in place, so the graph stays
valid; anything that replaces a tensor (``model.to(other)``, an assigned ``.data``) changes its
address, which :func:`forward_function` checks on each lookup (once per evaluation, not per batch)
and then captures again. A forward that reads tensors other than the model's parameters and
buffers, set from Python between calls (``HyperNet.alpha_override`` / ``op_override``, which
selection's ``loss_on`` uses), would replay the tensors of the capture: such callers call
:func:`bmnas.engine.loop.forward_batches` with ``graphs="off"`` (its default).

A capture that fails (a host sync inside the forward, an uncapturable operation) logs a warning
with the reason and the function stays eager for that model. Modes (``Context.graphs``):
``capture`` (CUDA), ``buffers`` (the same buffers and padding, run eagerly: what ``cuda_graphs: on``
gives on a CPU, so that the path is tested without a GPU); ``off`` never reaches this module.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)

Inputs = Mapping[str, torch.Tensor] | torch.Tensor
Amp = Callable[[], contextlib.AbstractContextManager]


def buffers_like(inputs: Inputs) -> Inputs:
    """Static buffers holding a copy of ``inputs`` (a tensor or a dict of tensors)."""
    if isinstance(inputs, torch.Tensor):
        return inputs.detach().clone()
    return {k: v.detach().clone() for k, v in inputs.items()}


def copy_into(buffers: Inputs, inputs: Inputs) -> None:
    """Copy ``inputs`` into the first ``len(inputs)`` rows of ``buffers``, in place and asynchronously."""
    if isinstance(buffers, torch.Tensor):
        buffers[: rows(inputs)].copy_(inputs, non_blocking=True)
        return
    if buffers.keys() != inputs.keys():
        raise ValueError(f"a batch's features changed from {sorted(buffers)} to {sorted(inputs)}")
    for k, buf in buffers.items():
        buf[: inputs[k].shape[0]].copy_(inputs[k], non_blocking=True)


def rows(inputs: Inputs) -> int:
    """The batch size of ``inputs`` (a tensor, a dict of tensors or a labels tensor)."""
    t = inputs if isinstance(inputs, torch.Tensor) else next(iter(inputs.values()))
    return int(t.shape[0])


def layout(inputs: Inputs) -> tuple:
    """What a buffer of ``inputs`` is, rows aside: each tensor's name, trailing shape, dtype, device."""
    items = [("", inputs)] if isinstance(inputs, torch.Tensor) else sorted(inputs.items())
    return tuple((k, tuple(v.shape[1:]), v.dtype, v.device) for k, v in items)


@contextlib.contextmanager
def side_stream(device: torch.device) -> Iterator[None]:
    """Run the block on a fresh CUDA stream that waits for, and is waited for by, the current one
    (the capture recipe's warm-up: the allocator of the capture sees the kernels' workspaces)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream(device).wait_stream(stream)


def first_line(err: BaseException) -> str:
    """The first line of an error's message (at most 200 characters), for a warning."""
    return (str(err).splitlines() or [type(err).__name__])[0][:200]


def addresses(model: nn.Module) -> tuple[int, ...]:
    """Where ``model``'s parameters and buffers live: a captured graph reads these addresses."""
    return tuple(t.data_ptr() for t in (*model.parameters(), *model.buffers()))


class ForwardFunction:
    """``forward(model, inputs) -> fp32 logits``: ``model(inputs)`` under ``amp`` and no grad, in eval
    mode (the caller sets it), through static buffers of ``size`` rows; see the module docstring.

    ``mode``: ``capture`` (replayed as a CUDA graph after ``warmup`` eager forwards) or ``buffers``
    (eager on the buffers). The output of a replay is cloned out of the graph's static output.
    """

    def __init__(self, size: int, mode: str, amp: Amp = contextlib.nullcontext, warmup: int = 2) -> None:
        if mode not in ("capture", "buffers"):
            raise ValueError(f"a forward function runs in mode capture or buffers, got {mode!r}")
        self.size, self.mode, self.amp, self.warmup = size, mode, amp, warmup
        self.inputs: Inputs | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None  # the captured graph's output
        self.failed: str | None = None  # why the capture failed, if it did
        self.at: tuple[int, ...] | None = None  # the model's addresses at capture
        self.calls = 0

    @property
    def captured(self) -> bool:
        """Whether the forwards are now graph replays."""
        return self.graph is not None

    def release(self) -> None:
        """Drop the graph (its memory pool with it); the next forward captures again."""
        self.graph, self.out, self.at, self.calls = None, None, None, 0

    @torch.no_grad()
    def __call__(self, model: nn.Module, inputs: Inputs) -> torch.Tensor:
        n = rows(inputs)
        if n > self.size:  # a last row joined to the batch before: larger than the buffers
            return self._eager(model, inputs)
        if self.inputs is None:
            self.inputs = buffers_like(inputs)
            if n < self.size:
                raise ValueError(f"the first batch of a forward function has {n} rows, not {self.size}")
        else:
            copy_into(self.inputs, inputs)
        self.calls += 1
        if self.mode != "capture" or self.failed is not None:
            return self._eager(model, self.inputs)[:n]
        if self.graph is None:
            if self.calls <= self.warmup:
                with side_stream(self._device()):
                    out = self._eager(model, self.inputs)
                return out[:n]
            if not self._capture(model):
                return self._eager(model, self.inputs)[:n]
        self.graph.replay()
        return self.out[:n].clone()

    def _eager(self, model: nn.Module, inputs: Inputs) -> torch.Tensor:
        with self.amp():
            out = model(inputs)
        return out.float()

    def _device(self) -> torch.device:
        t = self.inputs if isinstance(self.inputs, torch.Tensor) else next(iter(self.inputs.values()))
        return t.device

    def _capture(self, model: nn.Module) -> bool:
        """Capture one forward on the buffers (run by the replay that follows); False on failure."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                out = self._eager(model, self.inputs)
        except (RuntimeError, AssertionError, ValueError, TypeError) as err:
            self.failed = first_line(err)
            log.warning(
                "CUDA graph capture of an evaluation forward failed (%s); running it eagerly", self.failed
            )
            with contextlib.suppress(RuntimeError):
                torch.cuda.synchronize(self._device())
            return False
        self.graph, self.out, self.at = graph, out, addresses(model)
        return True


_FUNCTIONS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, ForwardFunction]] = weakref.WeakKeyDictionary()


def forward_function(
    model: nn.Module, inputs: Inputs, mode: str, amp: Amp = contextlib.nullcontext
) -> ForwardFunction:
    """The forward function of ``model`` for batches like ``inputs`` (their rows are its size), kept
    while ``model`` lives, so the graph of one epoch's evaluation is replayed by the next.

    One per ``(rows, layout, mode, amp)``; a graph captured on addresses the model's tensors have
    left (:func:`addresses`) is released and captured again.
    """
    key = (rows(inputs), layout(inputs), mode, amp)
    functions = _FUNCTIONS.setdefault(model, {})
    fn = functions.get(key)
    if fn is None:
        fn = functions[key] = ForwardFunction(key[0], mode, amp)
    elif fn.at is not None and fn.at != addresses(model):
        fn.release()
    return fn


def forward_functions(model: nn.Module) -> list[ForwardFunction]:
    """The forward functions :func:`forward_function` keeps for ``model`` (for tests and benchmarks)."""
    return list(_FUNCTIONS.get(model, {}).values())
