"""The per-epoch checkpoint of a training loop: what a killed search or training resumes from.

One object serves every loop (the search, the evaluation stage, each baseline), so that they save,
check and restore the same things: the ``state_dict`` of each stateful object (network,
optimisers, schedule), the shuffling generator and torch's global RNG (so the resumed epochs draw
the same batches and dropout masks as an uninterrupted run), the loop's own ``state`` (epoch,
history, best so far, …) and ``identity``: plain values the checkpoint must match to be resumed
(e.g. the genotype a network was built from). The loop's history is written beside it as JSON lines.

Files go through :class:`~bmnas.engine.rundir.RunDir`: written atomically, read with
``torch.load(weights_only=True)`` and refused when made with another configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..core.config import Config
from .rundir import RunDir, RunError


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


class Checkpoint:
    """``<run>/<stage>.ckpt.pt`` and ``<run>/<history>``; does nothing without a run directory.

    Args:
        run: the run directory (None: nothing is saved or resumed).
        stage: the checkpoint's name (``search``, ``train``, ``baseline_<method>``).
        objects: the stateful objects by the key they are saved under.
        generator: the loop's shuffling generator.
        history: file name of the JSON-lines history, rewritten with every save.
        identity: plain values a checkpoint must hold to be resumed; one that holds others is
            ignored (the loop starts over and overwrites it).
        writes: whether this process saves (rank 0 of a process group); every process resumes.
    """

    def __init__(
        self,
        run: RunDir | None,
        stage: str,
        cfg: Config,
        objects: Mapping[str, Stateful],
        generator: torch.Generator,
        history: str,
        identity: Mapping[str, Any] | None = None,
        writes: bool = True,
    ):
        self.run, self.stage, self.cfg = run, stage, cfg
        self.objects, self.generator, self.history = dict(objects), generator, history
        self.identity = dict(identity or {})
        self.writes = writes and run is not None

    @property
    def path(self) -> Path | None:
        return self.run.checkpoint_path(self.stage) if self.run is not None else None

    def load(self) -> dict | None:
        """Restore the objects and RNGs from the checkpoint and return the loop's state; None if
        there is nothing to resume (no run directory, no checkpoint, or one of another identity)."""
        if self.run is None:
            return None
        ckpt = self.run.load_checkpoint(self.stage, self.cfg)
        if ckpt is None or any(ckpt.get(k) != v for k, v in self.identity.items()):
            return None
        for name, obj in self.objects.items():
            try:
                obj.load_state_dict(ckpt[name])
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
                why = (str(err).splitlines() or [type(err).__name__])[0][:200]
                raise RunError(
                    f"{self.path}: damaged checkpoint ({name} does not fit: {why}); "
                    f"delete it (or pass --fresh) to start that stage afresh"
                ) from None
        self.generator.set_state(ckpt["shuffle"])
        torch.set_rng_state(ckpt["torch_rng"])
        cuda_rng = ckpt.get("cuda_rng")  # the GPUs' generators (dropout on CUDA draws from them)
        if cuda_rng and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_rng)
        return ckpt["state"]

    def save(self, state: dict) -> None:
        """Save the objects, the RNGs and ``state`` (with ``state["history"]`` as the history file)."""
        if not self.writes:
            return
        payload = {name: _saved(obj) for name, obj in self.objects.items()}
        payload.update(
            shuffle=self.generator.get_state(), torch_rng=torch.get_rng_state(), state=state, **self.identity
        )
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            payload["cuda_rng"] = torch.cuda.get_rng_state_all()
        self.run.save_checkpoint(self.stage, self.cfg, payload)
        self.run.write_jsonl(self.history, state["history"])


def _saved(obj: Stateful) -> Any:
    """A network's parameters and buffers on the CPU (loadable anywhere); other states as they are."""
    if isinstance(obj, nn.Module):
        return {k: v.cpu() for k, v in obj.state_dict().items()}
    return obj.state_dict()
