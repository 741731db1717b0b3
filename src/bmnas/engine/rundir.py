"""The run directory: what a run writes, and how a killed run picks up where it stopped.

::

    RUN_DIR/
      config.yaml            resolved configuration
      fingerprint.json       what the run was computed from: checksums of its data
      devices.json           device: auto's measured device per phase (kept when the run resumes)
      genotype.json          best genotype of the search
      history.jsonl          one line per search epoch (losses, metrics, genotype, softmaxed α/β/γ)
      search.ckpt.pt         search state after the last finished epoch (resume)
      train.ckpt.pt          evaluation-stage state after the last finished epoch (resume)
      train_history.jsonl    one line per evaluation-stage epoch
      metrics.json           test metrics, parameter counts, search/train seconds
      plots/                 architecture-weight and loss curves
      .lock                  held (``flock``) by the process running in the directory
      .bmnas-run             the marker: bmnas made this directory (:mod:`bmnas.engine.owned`)

Every file is written atomically (:mod:`bmnas.core.fileio`: a uniquely named temporary file, then
rename): a kill never leaves half a file, and the next run removes the temporary files a killed one
left. bmnas writes only into a new, empty or bmnas run directory, never through a symbolic link,
and ``--fresh`` removes only what bmnas wrote (:mod:`bmnas.engine.owned`). A rerun with another
configuration or other data is refused before anything is written.
Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain values only, so a
shared run directory cannot run code.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..core import locks
from ..core.config import Config
from ..core.errors import BmnasError
from ..core.fileio import (
    append_jsonl,
    read_jsonl_lines,
    save_torch,
    write_json,
    write_jsonl,
    write_text_atomic,
)
from ..core.genotype import Genotype
from ..core.schema import Obj, check, load_json
from ..core.schemas import FINGERPRINT as FINGERPRINT_SCHEMA
from ..core.schemas import SEARCH_EPOCH, SEARCH_STATE, TRAIN_EPOCH, TRAIN_STATE
from . import owned

# Sections whose change makes a checkpoint unusable for that stage.
_STAGE_KEYS = {"search": ("seed", "data", "model", "search"), "train": ("seed", "data", "model", "train")}
_ALL_KEYS = ("seed", "data", "model", "search", "train")
# Files holding each stage's results (globs in the run directory).
_STAGE_FILES = {
    "search": ("search.ckpt.pt", "genotype.json", "history.jsonl", "rerank.jsonl", "perturb.json"),
    "train": (
        "train.ckpt.pt",
        "baseline_*.ckpt.pt",
        "train_history.jsonl",
        "baseline_*_history.jsonl",
        "metrics.json",
        "*_selection.json",
        "model.pt",
    ),
    "ablate": ("ablate/results.jsonl",),
}
# Keys a checkpoint of each kind must hold to be resumed.
_CKPT_KEYS = {
    "search": ("config", "model", "w_opt", "a_opt", "sched", "shuffle", "torch_rng", "state"),
    "train": ("config", "model", "opt", "sched", "shuffle", "torch_rng", "state", "genotype"),
}
FINGERPRINT = "fingerprint.json"
LOCK = owned.LOCK


Observer = Callable[[Path, list, bool], None]
"""What :meth:`RunDir.observe` takes: ``(path, rows, replaces)``."""


class RunError(BmnasError, RuntimeError):
    """A run directory that cannot be used as asked."""


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def _plain(obj: Any) -> Any:
    """``obj`` with numpy values turned into Python ones, so ``weights_only`` loading accepts it."""
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    if type(obj) is dict:  # exact types only: a state_dict's OrderedDict keeps its _metadata
        return {k: _plain(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _with_defaults(recorded: dict) -> dict:
    """A recorded config with today's defaults for keys added since, so that they are no change."""
    try:
        return Config.from_dict(recorded).to_dict()
    except BmnasError:  # a key removed since, or a value no longer valid: compare as recorded
        return recorded


def _ckpt_kind(stage: str) -> str | None:
    """Which resume contract a stage's checkpoint follows (None: only ``config`` is required)."""
    if stage == "search":
        return "search"
    return "train" if stage == "train" or stage.startswith("baseline_") else None


class RunDir:
    """Paths and atomic I/O of one run directory.

    Args:
        path: the directory; created (with its parents) unless ``create`` is False.
    """

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        self._observers: list[Observer] = []
        if self.path.exists() and not self.path.is_dir():
            raise RunError(
                f"{self.path} is a file, not a directory; give --out a new or existing run directory"
            )
        if create:  # a new, empty or bmnas run directory, else refused before anything is written
            owned.claim(self.path)
        elif not self.path.is_dir():
            raise RunError(f"{self.path}: no such run directory")

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    genotype_path = property(lambda self: self.path / "genotype.json")
    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.json")
    history_path = property(lambda self: self.path / "history.jsonl")
    plots_path = property(lambda self: self.path / "plots")
    fingerprint_path = property(lambda self: self.path / FINGERPRINT)
    lock_path = property(lambda self: self.path / LOCK)

    def checkpoint_path(self, stage: str) -> Path:
        return self.path / f"{stage}.ckpt.pt"

    # ------------------------------------------------------------------------------ opening a run
    def lock(self) -> None:
        """Take this directory's lock for the rest of the command (:func:`bmnas.core.locks.release_all`)."""
        if not locks.try_lock(self.lock_path):
            raise RunError(
                f"{self.path} is in use by another bmnas process (pid {locks.holder(self.lock_path)}); "
                f"wait for it to finish, or use another --out"
            )

    def open(
        self, cfg: Config, data_fingerprint: Mapping[str, Any] | None = None, fresh: bool = False
    ) -> None:
        """Lock the directory, check that it holds this run (or none), then record config and data.

        Raises :class:`RunError`, before writing anything, when the directory holds results of another
        configuration or other data (``fresh`` discards them first).
        """
        owned.refuse_links(self.path)
        self.lock()
        self.remove_temporary_files()
        if fresh:
            self.clear()
        self.check_same_run(cfg, data_fingerprint)
        for path in sorted(self.path.glob("*.ckpt.pt")):  # refuse damaged or unsafe ones up front
            _read_checkpoint(path, _ckpt_kind(path.name.removesuffix(".ckpt.pt")))
        text = cfg.to_yaml()
        if not self.config_path.is_file() or self.config_path.read_text() != text:
            write_text_atomic(self.config_path, text)
        if data_fingerprint is not None:
            self.write_json(FINGERPRINT, {"data": dict(data_fingerprint)})

    def stages_with_results(self) -> list[str]:
        return [s for s, globs in _STAGE_FILES.items() if any(any(self.path.glob(g)) for g in globs)]

    def check_same_run(self, cfg: Config, data_fingerprint: Mapping[str, Any] | None = None) -> None:
        """Refuse a directory whose results came from another configuration or other data."""
        stages = self.stages_with_results()
        if not stages:
            return
        keys = sorted({k for s in stages for k in _STAGE_KEYS.get(s, _ALL_KEYS)})
        now = cfg.to_dict()
        then = self._recorded_config()
        changes = [] if then is None else [c for k in keys for c in _diff({k: then.get(k)}, {k: now.get(k)})]
        old_data = self._recorded_data()
        data_changes = []
        if old_data is not None and data_fingerprint is not None:
            data_changes = _diff({"data": old_data}, {"data": dict(data_fingerprint)})
        if not changes and not data_changes:
            return
        what = []
        if changes:
            what.append(f"another configuration ({'; '.join(changes[:5])})")
        if data_changes:
            what.append(f"other data ({'; '.join(data_changes[:3])})")
        raise RunError(
            f"{self.path} holds {', '.join(stages)} results of {' and '.join(what)}; rerun with the same "
            f"config and data to resume, use --fresh to discard them, or choose another --out"
        )

    def _recorded_config(self) -> dict | None:
        if not self.config_path.exists():
            return None
        try:
            then = yaml.safe_load(self.config_path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
            raise RunError(f"{self.config_path} is damaged ({err}); use --fresh or another --out") from None
        if not isinstance(then, dict):
            raise RunError(f"{self.config_path} is damaged (not a mapping); use --fresh or another --out")
        return _with_defaults(then)

    def _recorded_data(self) -> dict | None:
        fix = "restore it, or use --fresh (discards this run's results) or another --out"
        recorded = load_json(self.fingerprint_path, FINGERPRINT_SCHEMA, fix, RunError, default=None)
        return None if recorded is None else recorded["data"]

    def remove_temporary_files(self) -> None:
        """Delete the temporary files killed writes left, in sub-folders too (call with the lock held)."""
        owned.remove_own_temps(self.path)

    # --------------------------------------------------------------------------------------- I/O
    def observe(self, observer: Observer) -> None:
        """Call ``observer(path, rows, replaces)`` before each JSON or JSON-lines write of this run:
        the rows written (a JSON file: its one object) and whether they replace the file's content
        (else they are appended). The command line's ``--logger`` feeds on these."""
        self._observers.append(observer)

    def _notify(self, name: str, rows: list, replaces: bool) -> None:
        for observer in self._observers:
            observer(self.path / name, rows, replaces)

    def write_config(self, cfg: Config) -> None:
        write_text_atomic(self.config_path, cfg.to_yaml())

    def write_json(self, name: str, obj: Any) -> Path:
        self._notify(name, [obj], replaces=False)
        return write_json(self.path / name, obj)

    def write_jsonl(self, name: str, rows: list[dict]) -> Path:
        self._notify(name, rows, replaces=True)
        return write_jsonl(self.path / name, rows)

    def append_jsonl(self, name: str, row: dict) -> None:
        self._notify(name, [row], replaces=False)
        append_jsonl(self.path / name, row)

    def write_history(self, rows: list[dict]) -> None:
        self.write_jsonl(self.history_path.name, rows)

    def read_history(self, name: str = "history.jsonl") -> list[dict]:
        """The rows of a history file (``history.jsonl``: search epochs, else training epochs), each
        checked (:data:`~bmnas.core.schemas.SEARCH_EPOCH`, :data:`~bmnas.core.schemas.TRAIN_EPOCH`)."""
        path = self.path / name
        schema = SEARCH_EPOCH if name == self.history_path.name else TRAIN_EPOCH
        return [check(row, schema, f"{path}, line {n}") for n, row in read_jsonl_lines(path)]

    def save_checkpoint(self, stage: str, cfg: Config, state: dict) -> None:
        payload = {"config": cfg.to_dict(), "stage": stage, **_plain(state)}
        save_torch(self.checkpoint_path(stage), payload)

    def load_checkpoint(self, stage: str, cfg: Config) -> dict | None:
        """The stage's checkpoint, or None; a checkpoint from a different config is an error.

        Only tensors and plain values are unpickled (``weights_only=True``): a checkpoint holding
        anything else is refused, never executed.
        """
        path = self.checkpoint_path(stage)
        if not path.exists():
            return None
        ckpt = _read_checkpoint(path, _ckpt_kind(stage))
        now, then = cfg.to_dict(), _with_defaults(ckpt["config"])
        keys = _STAGE_KEYS["search" if stage == "search" else "train"]
        changes = [c for k in keys for c in _diff({k: then.get(k)}, {k: now.get(k)})]
        if changes:
            raise RunError(
                f"{path} was made with another configuration ({'; '.join(changes[:5])}); resume with the "
                f"same config, or use a new --out directory (or --fresh to discard it)"
            )
        return ckpt

    def clear(self) -> None:
        """``--fresh``: remove what bmnas wrote here (not the marker, not the lock); other files stay."""
        owned.clear(self.path)


def _read_checkpoint(path: Path, kind: str | None) -> dict:
    """Load a checkpoint with ``weights_only=True`` and check that it holds what resuming needs."""
    fix = "delete it (or pass --fresh) to start that stage afresh"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunError(
            f"{path}: refused to load: it holds objects other than tensors and plain values, which could "
            f"run code ({first[:200]}); {fix}"
        ) from None
    except Exception as err:  # truncated, foreign or damaged: any reader error
        raise RunError(
            f"{path}: unreadable checkpoint ({type(err).__name__}: {str(err)[:200]}); {fix}"
        ) from None
    if not isinstance(ckpt, dict):
        raise RunError(f"{path}: damaged checkpoint (a {type(ckpt).__name__}, not a dict); {fix}")
    missing = [k for k in _CKPT_KEYS.get(kind, ("config",)) if k not in ckpt]
    if missing:
        raise RunError(f"{path}: damaged checkpoint (missing {missing}); {fix}")
    bad = [k for k in ("config", "model", "state") if k in ckpt and not isinstance(ckpt[k], dict)]
    bad += [k for k in ("shuffle", "torch_rng") if k in ckpt and not _is_rng_state(ckpt[k])]
    state = ckpt.get("state", {})
    if isinstance(state, dict) and "epoch" in state and not isinstance(state["epoch"], int):
        bad.append("state")
    if bad:
        raise RunError(f"{path}: damaged checkpoint (bad {sorted(set(bad))}); {fix}")
    if kind is not None:
        _check_state(ckpt, kind, f"{path}: damaged checkpoint", fix)
    return ckpt


def _check_state(ckpt: dict, kind: str, where: str, fix: str) -> None:
    """The loop state a resumed stage continues from: :data:`~bmnas.core.schemas.SEARCH_STATE` or
    :data:`~bmnas.core.schemas.TRAIN_STATE`, one history row per finished epoch, and (search)
    genotypes that are genotypes, as re-ranking and the search's result read them."""
    schema = Obj({"state": SEARCH_STATE if kind == "search" else TRAIN_STATE})
    state = check(ckpt, schema, where, fix, RunError)["state"]
    epochs = [row["epoch"] for row in state["history"]]
    if epochs != list(range(1, state["epoch"] + 1)):
        raise RunError(f"{where}: state.history holds epochs {epochs[:10]}, not 1..{state['epoch']}; {fix}")
    if kind == "search":
        found = [(f"state.history[{i}].genotype", r["genotype"]) for i, r in enumerate(state["history"])]
        for at, d in [*found, ("state.best_genotype", state["best_genotype"])]:
            try:
                if d is not None:
                    Genotype.from_dict(d, where=at)
            except BmnasError as err:
                raise RunError(f"{where}: {err}; {fix}") from None


def _is_rng_state(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 1
