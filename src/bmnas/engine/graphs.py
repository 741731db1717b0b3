"""One training step as a function of a batch, captured once as a CUDA graph and replayed on CUDA.

An eager search iteration launches hundreds of small kernels (580 on MM-IMDB's sizes, issue 22), so
on a GPU the loop is bound by launches, not by the chip. :class:`StepFunction` owns *static input
buffers* (the features dict and the labels of one batch size ``B``); each batch is ``copy_``-ed into
them and ``forward + loss + backward + optimizer.step()`` runs on them — eagerly, or, on CUDA
(``Context.graphs == "capture"``), as the replay of a graph captured once, following PyTorch's
whole-network capture recipe (https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs):

1. the optimiser is made *capturable* (:func:`make_capturable`): Adam's ``capturable=True``, its
   step counters on the device and its learning rate a 0-d device tensor. The per-batch cosine
   schedule (``torch.optim.lr_scheduler``) ``fill_``-s that tensor in place, so the schedule still
   applies to the replayed step;
2. ``warmup`` real steps run eagerly on a side stream (they are steps of the run, not discarded);
3. the next step is captured (``torch.cuda.graph``) and replayed; every later step of size ``B`` is
   a copy into the buffers and one replay.

Randomness: ``nn.Dropout`` inside the network draws from the default CUDA generator, whose philox
seed and offset torch registers with the graph, so each replay draws new masks. Modality dropout
(:class:`bmnas.engine.loop.ModalityDropout`) is drawn from the loop's CPU generator and applied to
the batch *before* it is copied into the buffers, outside the graph: the masks are those of the
eager loop, in the same generator order.

The last short batch of an epoch (another size than ``B``) runs eagerly on the same parameters and
optimiser; one eager step per epoch costs less than capturing and holding a second graph.

A capture that fails (an operation that syncs with the host, a non-capturable optimiser) logs a
warning with the reason; the step function then stays eager for the rest of the run. On the CPU
(``graphs == "buffers"``) the same static-buffer step runs eagerly, so the path is tested without
a GPU; ``graphs == "off"`` calls :func:`bmnas.engine.loop.optimizer_step` directly (today's step).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import torch
from torch import nn

from ..core.data import TaskInfo
from .loop import CPU, Context, frozen, loss_fn, optimizer_step
from .replay import Inputs, buffers_like, copy_into, first_line, rows, side_stream

log = logging.getLogger(__name__)


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Prepare ``optimizer`` (Adam) for a captured step on ``device``, in place.

    Each group's ``lr`` becomes a 0-d tensor on ``device`` (float32 on CUDA, float64 on the CPU;
    a scheduler then ``fill_``-s it) and, on CUDA, ``capturable=True`` with every existing
    ``state["step"]`` moved to the device (a resumed optimiser has them where its checkpoint put
    them). On the CPU a tensor ``lr`` needs the fused Adam; unfused groups keep their float ``lr``.
    """
    cuda = device.type == "cuda"
    for group in optimizer.param_groups:
        if cuda or group.get("fused"):
            lr = group["lr"]
            if not isinstance(lr, torch.Tensor) or lr.device != device:
                dtype = (
                    torch.float32 if cuda else torch.float64
                )  # float64: the CPU's fused Adam as with a float
                group["lr"] = torch.tensor(float(lr), dtype=dtype, device=device)
        if cuda:
            group["capturable"] = True
            for p in group["params"]:
                st = optimizer.state.get(p, {})
                if "step" in st and isinstance(st["step"], torch.Tensor):
                    st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


class StepFunction:
    """``step(features, labels) -> loss``: one optimiser step of ``model`` on a batch, ``freeze`` excluded.

    Equal to :func:`bmnas.engine.loop.optimizer_step` (the loss returned detached, the parameters and
    the optimiser's state moved the same way); see the module docstring for how ``ctx.graphs``
    (``off | buffers | capture``) runs it. ``warmup``: eager steps before the capture.
    """

    def __init__(
        self,
        model: nn.Module,
        task: TaskInfo,
        optimizer: torch.optim.Optimizer,
        ctx: Context = CPU,
        freeze: Sequence[nn.Parameter] = (),
        warmup: int = 3,
    ) -> None:
        self.model, self.task, self.optimizer, self.ctx = model, task, optimizer, ctx
        self.freeze = tuple(freeze)
        self.mode = ctx.graphs
        self.warmup = warmup
        self.size: int | None = None  # the batch size of the buffers (the first batch's)
        self.inputs: Inputs | None = None
        self.labels: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None  # the captured graph's output
        self.failed: str | None = None  # why the capture failed, if it did
        self.steps = 0
        self._prepared = False

    @property
    def captured(self) -> bool:
        """Whether the steps of the buffers' size are now graph replays."""
        return self.graph is not None

    def __call__(self, inputs: Inputs, labels: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return self._eager(inputs, labels)
        if not self._prepared:
            make_capturable(self.optimizer, self.ctx.device)
            self._prepared = True
        if self.size is None:
            self.size = rows(labels)
            self.inputs, self.labels = buffers_like(inputs), labels.detach().clone()
        if rows(labels) != self.size:  # the last short batch
            return self._eager(inputs, labels)
        copy_into(self.inputs, inputs)
        self.labels.copy_(labels, non_blocking=True)
        self.steps += 1
        if self.mode != "capture" or self.failed is not None:
            return self._eager(self.inputs, self.labels)
        if self.graph is None:
            if self.steps <= self.warmup:
                return self._side_stream()
            if not self._capture():
                return self._eager(self.inputs, self.labels)
        self.graph.replay()
        return self.loss.clone()

    def _eager(self, inputs: Inputs, labels: torch.Tensor) -> torch.Tensor:
        return optimizer_step(
            self.model, self.task, inputs, labels, self.optimizer, self.freeze, self.ctx.ranks, self.ctx.amp
        )

    def _side_stream(self) -> torch.Tensor:
        """A warm-up step on a side stream (the recipe: capture's allocator sees the kernels' workspaces)."""
        with side_stream(self.ctx.device):
            loss = self._eager(self.inputs, self.labels)
        return loss

    def _capture(self) -> bool:
        """Capture one step on the buffers (not run: the replay that follows runs it); False on failure."""
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # the backward allocates the grads in the graph's pool
        try:
            with torch.cuda.graph(graph), frozen(self.freeze):
                with self.ctx.amp():
                    loss = loss_fn(self.task, self.model(self.inputs), self.labels)
                loss.backward()
                self.optimizer.step()
        except (RuntimeError, AssertionError, ValueError, TypeError) as err:
            why = first_line(err)
            self.failed = why
            log.warning("CUDA graph capture of a training step failed (%s); running it eagerly", why)
            self.optimizer.zero_grad(set_to_none=True)
            with contextlib.suppress(RuntimeError):
                torch.cuda.synchronize(self.ctx.device)
            return False
        self.graph, self.loss = graph, loss.detach()
        return True


def describe(step: StepFunction) -> dict:
    """What a step function did, for logs and benchmarks: mode, buffer size, captured, failure."""
    return {"mode": step.mode, "size": step.size, "captured": step.captured, "failed": step.failed}
