"""The run directory: what a run writes, and how a killed run picks up where it stopped.

::

    RUN_DIR/
      config.yaml            resolved configuration
      genotype.json          best genotype of the search
      history.jsonl          one line per search epoch (losses, metrics, genotype, softmaxed α/β/γ)
      search.ckpt.pt         search state after the last finished epoch (resume)
      train.ckpt.pt          evaluation-stage state after the last finished epoch (resume)
      train_history.jsonl    one line per evaluation-stage epoch
      metrics.json           test metrics, parameter counts, search/train seconds
      plots/                 architecture-weight and loss curves

Every file is written atomically (temporary file, then rename): a kill never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .config import Config

# Sections whose change makes a checkpoint unusable for that stage.
_STAGE_KEYS = {"search": ("seed", "data", "model", "search"), "train": ("seed", "data", "model", "train")}


class RunError(RuntimeError):
    """A run directory that cannot be used as asked."""


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


class RunDir:
    """Paths and atomic I/O of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    genotype_path = property(lambda self: self.path / "genotype.json")
    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.json")
    history_path = property(lambda self: self.path / "history.jsonl")
    plots_path = property(lambda self: self.path / "plots")

    def checkpoint_path(self, stage: str) -> Path:
        return self.path / f"{stage}.ckpt.pt"

    def write_config(self, cfg: Config) -> None:
        _atomic_write(self.config_path, lambda p: p.write_text(cfg.to_yaml()))

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.path / name
        _atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))
        return path

    def write_jsonl(self, name: str, rows: list[dict]) -> Path:
        path = self.path / name
        _atomic_write(path, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in rows)))
        return path

    def write_history(self, rows: list[dict]) -> None:
        self.write_jsonl(self.history_path.name, rows)

    def read_history(self, name: str = "history.jsonl") -> list[dict]:
        path = self.path / name
        return (
            [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if path.exists()
            else []
        )

    def save_checkpoint(self, stage: str, cfg: Config, state: dict) -> None:
        payload = {"config": cfg.to_dict(), "stage": stage, **state}
        _atomic_write(self.checkpoint_path(stage), lambda p: torch.save(payload, p))

    def load_checkpoint(self, stage: str, cfg: Config) -> dict | None:
        """The stage's checkpoint, or None; a checkpoint from a different config is an error."""
        path = self.checkpoint_path(stage)
        if not path.exists():
            return None
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # a truncated or foreign file
            raise RunError(
                f"{path}: unreadable checkpoint ({err}); delete it to start that stage afresh"
            ) from err
        now, then = cfg.to_dict(), ckpt.get("config", {})
        keys = _STAGE_KEYS["search" if stage == "search" else "train"]
        changes = [c for k in keys for c in _diff({k: then.get(k)}, {k: now.get(k)})]
        if changes:
            raise RunError(
                f"{path} was made with another configuration ({'; '.join(changes[:5])}); resume with the "
                f"same config, or use a new --out directory (or --fresh to discard it)"
            )
        return ckpt

    def clear(self) -> None:
        """Remove checkpoints and results (``--fresh``)."""
        for name in (
            "search.ckpt.pt",
            "train.ckpt.pt",
            "genotype.json",
            "history.jsonl",
            "metrics.json",
            "train_history.jsonl",
        ):
            (self.path / name).unlink(missing_ok=True)
