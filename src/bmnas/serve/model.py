"""A run's trained network: ``model.pt`` written and read back, checked before anything is built.

:func:`load` rebuilds the trained network of a run directory with everything inference needs (the
genotype, the weights, L and the pooling of its features, task, threshold, class names) from
``model.pt`` (:func:`save_model`) or else from the evaluation stage's checkpoint. The returned
:class:`LoadedModel` predicts from raw features in the generic format (``name -> (N, *raw_shape)``,
pooled exactly as the run pooled them) or from already pooled ``(N, L_k, C_in)`` features.

Nothing read is trusted: the file's fields pass :data:`bmnas.core.schemas.MODEL_FILE` (a
checkpoint's :data:`~bmnas.core.schemas.TRAINED_CHECKPOINT`), the network the genotype describes is
first built on the ``meta`` device (no memory) and every tensor of the file must have its shape and,
being weights, finite values (:func:`check_weights`) before the real network is allocated. A
damaged file is refused in one line (:class:`ModelError`) naming it and the field.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from .._version import __version__
from ..core.config import MAX_CONFIG_BYTES, check_size
from ..core.data import MAX_OUTPUTS, FeatureData, TaskInfo
from ..core.errors import BmnasError, DataError
from ..core.fileio import save_torch
from ..core.genotype import Genotype, GenotypeError
from ..core.schema import check
from ..core.schemas import MODEL_FILE as MODEL_SCHEMA
from ..core.schemas import MODEL_FORMAT, RUN_CONFIG, TRAINED_CHECKPOINT
from ..engine.device import step_elements, uses_threads
from ..engine.loop import forward_batches
from ..engine.rundir import RunError
from ..features.backbones.base import Backbone
from ..features.extract import extract_features
from ..features.pooling import pool_feature
from ..features.validate import check_feature
from ..report.summary import FOUND_STAGE, PROBE, SEARCHED, read_metrics, stage_of
from ..space.found import FoundNet
from .predictions import Predictions

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
PROBE_FILE = "linear_probe.pt"
MODEL_FILES = {FOUND_STAGE: MODEL_FILE, PROBE: PROBE_FILE}
"""Stages saved as model files (:func:`save_model`); every other stage is a ``<stage>.ckpt.pt``."""
RECOMMENDED = "recommended"
MODEL_FIX = "retrain (bmnas train) or restore the file"
CHECKPOINT_FIX = "rerun the bmnas run or train command that trained it, or restore the file"
CONFIG_FIX = "restore the file, or rerun the command that wrote it"


class ModelError(RunError):
    """A run directory without a usable trained network; the message says how to get one."""


def model_threads(model: LoadedModel, batch_size: int) -> tuple[int, int]:
    """``(threads, step elements)`` of forward passes of ``batch_size`` rows: the run's ``threads``
    setting (0: bmnas' policy) and the fused elements of one batch."""
    threads = (model.config or {}).get("threads", 0)
    return int(threads or 0), step_elements(batch_size, len(model.inputs), model.genotype.C, model.L)


@dataclass
class LoadedModel:
    """A trained network of a run ready for inference (eval mode, CPU).

    ``stage``: which of the run's networks it is (``train`` for the found one, ``linear_probe``,
    ``baseline_<name>``); ``method``: its name in the run's table (``searched``, ``linear_probe``,
    ``late_fusion`` …).
    """

    genotype: Genotype
    net: FoundNet
    task: TaskInfo
    threshold: float
    pooling: str
    class_names: tuple[str, ...]
    source: Path
    config: Mapping
    stage: str = FOUND_STAGE
    method: str = SEARCHED

    @property
    def L(self) -> int:
        return self.genotype.L

    @property
    def inputs(self) -> tuple[str, ...]:
        """The features the network reads, in its input order."""
        return tuple(self.net.used)

    def pool(self, raw: Mapping[str, np.ndarray], where: str = "input") -> dict[str, np.ndarray]:
        """Check raw features against the run's and pool the ones the network reads.

        ``raw``: ``name -> (N, C_in)`` vectors or ``(N, C_in, T)`` / ``(N, C_in, H, W)`` /
        ``(N, C_in, T, H, W)`` maps, as in the generic format. Returns ``(N, L_k, C_in)`` float32.
        """
        specs = {f.name: f for f in self.genotype.features}
        unknown = [n for n in raw if n not in specs]
        if unknown:
            raise DataError(
                f"{where}: features {unknown} are not features of this run; it was trained on "
                f"{list(specs)} and reads {list(self.inputs)}"
            )
        missing = [n for n in self.inputs if n not in raw]
        if missing:
            raise DataError(f"{where}: missing features {missing}; this network reads {list(self.inputs)}")
        n_rows = {n: int(np.shape(raw[n])[0]) for n in self.inputs}
        if len(set(n_rows.values())) > 1:
            raise DataError(f"{where}: features have different sample counts {n_rows}")
        out = {}
        for name in self.inputs:
            arr, spec = np.asarray(raw[name]), specs[name]
            vector = spec.length == 1
            shape_ok = arr.ndim >= 2 and arr.shape[1] == spec.channels and (arr.ndim == 2) == vector
            if not shape_ok or arr.ndim > 5:
                want = f"(N, {spec.channels})" if vector else f"(N, {spec.channels}, T|H,W|T,H,W)"
                raise DataError(
                    f"{where}: feature {name!r} has shape {arr.shape}; this run's {name!r} is {want} "
                    f"(C_in = {spec.channels} channels first)"
                )
            check_feature(where, name, arr)  # the checks of the run's own data: dtype, values
            out[name] = pool_feature(torch.as_tensor(arr), self.L, self.pooling, name=name).numpy()
        return out

    def check_pooled(self, pooled: Mapping[str, np.ndarray], where: str = "input") -> None:
        """Raise :class:`DataError` unless each input feature is ``(N, L_k, C_in)`` of this run."""
        specs = {f.name: f for f in self.genotype.features}
        for name in self.inputs:
            if name not in pooled:
                raise DataError(f"{where}: missing feature {name!r}; this network reads {list(self.inputs)}")
            want = (specs[name].length, specs[name].channels)
            if tuple(np.shape(pooled[name])[1:]) != want:
                raise DataError(
                    f"{where}: pooled feature {name!r} has shape {np.shape(pooled[name])}; "
                    f"expected (N, {want[0]}, {want[1]})"
                )

    @uses_threads(lambda a: model_threads(a["self"], a["batch_size"]))
    def logits(self, pooled: Mapping[str, np.ndarray | torch.Tensor], batch_size: int = 1024) -> np.ndarray:
        """Logits ``(N, K)`` of pooled features (eval mode, consecutive batches of ``batch_size``)."""
        self.check_pooled(pooled)
        n = int(np.shape(pooled[self.inputs[0]])[0])

        def gather(b: np.ndarray) -> tuple[dict[str, torch.Tensor], None]:
            rows = slice(int(b[0]), int(b[-1]) + 1)
            feats = {k: torch.from_numpy(np.array(pooled[k][rows], dtype=np.float32)) for k in self.inputs}
            return feats, None

        out = [logits.numpy() for _, logits in forward_batches(self.net, n, gather, batch_size, min_rows=1)]
        return np.concatenate(out) if out else np.zeros((0, self.task.num_outputs), np.float32)

    def predictions(self, logits: np.ndarray) -> Predictions:
        t = torch.from_numpy(logits)
        probs = t.softmax(dim=1) if self.task.type == "multiclass" else torch.sigmoid(t)
        return Predictions(logits, probs.numpy(), self.task, self.class_names, self.threshold)

    def predict(self, raw: Mapping[str, np.ndarray], batch_size: int = 1024) -> Predictions:
        """Predictions for raw features in the generic format (pooled here as the run pooled them)."""
        return self.predict_pooled(self.pool(raw), batch_size)

    def extract(
        self,
        backbones: Sequence[Backbone],
        inputs: Mapping[str, np.ndarray | Sequence],
        progress: bool = False,
    ) -> dict[str, np.ndarray]:
        """Pooled input features from raw inputs ``modality -> N samples``, through the run's backbones.

        Each backbone that yields a feature the network reads runs once over its modality's inputs
        (its own preprocessing, forward hooks, pooling with this run's L and pooling).
        """
        by_modality = {b.modality: b for b in backbones}
        needed = {b.modality: [n for n in b.feature_names() if n in self.inputs] for b in backbones}
        needed = {m: names for m, names in needed.items() if names}
        unknown = [m for m in inputs if m not in by_modality]
        missing = [m for m in needed if m not in inputs]
        if unknown or missing:
            raise DataError(
                f"raw inputs {sorted(inputs)}: this run's backbones read the modalities "
                f"{sorted(by_modality)} and the network needs {sorted(needed)}"
                + (f"; unknown {unknown}" if unknown else "")
                + (f"; missing {missing}" if missing else "")
            )
        pooled: dict[str, np.ndarray] = {}
        for m, names in needed.items():
            feats = extract_features(
                by_modality[m], inputs[m], length=self.L, pooling=self.pooling, progress=progress, threads=1
            )
            pooled.update({n: feats[n] for n in names})
        return pooled

    def predict_pooled(self, pooled: Mapping[str, np.ndarray], batch_size: int = 1024) -> Predictions:
        """Predictions for pooled ``(N, L_k, C_in)`` features (a :class:`~bmnas.core.data.FeatureSplit`'s)."""
        return self.predictions(self.logits(pooled, batch_size))


# ----------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------


def save_model(
    run_dir: str | Path, model: FoundNet, data: FeatureData, config: Mapping, name: str = MODEL_FILE
) -> Path:
    """Write ``RUN_DIR/model.pt``: the trained network and what inference needs, in plain values.

    ``config``: the run's configuration as a dict (``cfg.to_dict()``).
    """
    class_names = [str(c) for c in data.info.get("class_names", [])] if data.info else []
    payload = {
        "format": MODEL_FORMAT,
        "version": 1,
        "bmnas_version": __version__,
        "genotype": model.genotype.to_dict(),
        "state_dict": model.state_dict(),
        "task": {"type": data.task.type, "num_outputs": data.task.num_outputs},
        "class_names": class_names if len(class_names) == data.task.num_outputs else [],
        "threshold": float(config["data"]["threshold"]),
        "pooling": str(config["data"]["pooling"]),
        "dropout": float(config["model"]["dropout"]),
    }
    return save_torch(Path(run_dir) / name, payload)


def load(run_dir: str | Path, stage: str = RECOMMENDED) -> LoadedModel:
    """A trained network of ``run_dir``; by default the one ``bmnas run`` recommends.

    ``stage``: ``recommended`` (default: ``metrics.json``'s ``recommended.method``), ``train`` (the
    found network), ``linear_probe``, a baseline's checkpoint name such as ``baseline_late_fusion``,
    or a method's name as the run's table shows it (``searched``, ``late_fusion``, ``unimodal:image``).

    A run without a recommendation (``bmnas train``, or ``bmnas run`` of an older bmnas) or whose
    recommended network's file is missing gives the found network, with a warning that says so.
    Reads ``model.pt`` / ``linear_probe.pt`` when present, else ``<stage>.ckpt.pt`` with
    ``config.yaml`` and ``metrics.json``. Raises :class:`ModelError` naming what is missing or damaged.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise ModelError(f"{run}: no such run directory")
    asked = stage
    if stage == RECOMMENDED:
        stage = _recommended_or_found(run)
    elif not stage.startswith("baseline_") and stage not in MODEL_FILES:
        stage = stage_of(stage)
    method = _method_of(stage, run)
    name = MODEL_FILES.get(stage)
    if name is not None and (run / name).is_file():
        return _from_model_file(run / name, stage, method)
    path = run / f"{stage}.ckpt.pt"
    if not path.is_file():
        raise ModelError(_missing(run, stage, path, asked))
    return _from_checkpoint(run, path, stage, method)


def _missing(run: Path, stage: str, path: Path, asked: str) -> str:
    have = ", ".join(available_stages(run)) or "none"
    if stage == PROBE:
        return (
            f"{run}: no saved linear probe ({PROBE_FILE} is missing: the run was made by a bmnas that "
            f"did not save it, or with --no-baselines); rerun the same `bmnas run` command to add it "
            f"(finished stages are not redone); trained networks here: {have}"
        )
    files = f"{MODEL_FILE} and {path.name} are" if stage == FOUND_STAGE else f"{path.name} is"
    return (
        f"{run}: no trained model for --stage {asked} ({files} missing); trained networks here: {have}; "
        f"train one with `bmnas train --out {run} ...` or `bmnas run`"
    )


def available_stages(run: str | Path) -> list[str]:
    """The stages of ``run`` that have a trained network's file (model file or checkpoint)."""
    run = Path(run)
    out = [stage for stage, name in MODEL_FILES.items() if (run / name).is_file()]
    for path in sorted(run.glob("*.ckpt.pt")):
        stage = path.name.removesuffix(".ckpt.pt")
        if stage not in out and (stage == FOUND_STAGE or stage.startswith("baseline_")):
            out.append(stage)
    return out


def recommended_stage(run: Path) -> str:
    """The stage of the network ``bmnas run`` recommends (``metrics.json``'s ``recommended.method``)."""
    method = recommended_method(run)
    if not method:
        raise ModelError(f"{run}: metrics.json names no recommended network (`bmnas run` writes one)")
    return stage_of(method)


def recommended_method(run: str | Path) -> str | None:
    """``recommended.method`` of the run's ``metrics.json`` (None without one)."""
    return ((read_metrics(Path(run) / "metrics.json") or {}).get("recommended") or {}).get("method")


def _recommended_or_found(run: Path) -> str:
    method = recommended_method(run)
    if not method:
        log.warning(
            "%s: metrics.json names no recommended network (not a `bmnas run`): using the found network",
            run,
        )
        return FOUND_STAGE
    stage = stage_of(method)
    name = MODEL_FILES.get(stage, f"{stage}.ckpt.pt")
    if stage != FOUND_STAGE and not (run / name).is_file():
        log.warning(
            "%s: the recommended network (%s) has no saved model (%s is missing): using the found network",
            run,
            method,
            name,
        )
        return FOUND_STAGE
    return stage


def _method_of(stage: str, run: Path) -> str:
    """The table name of ``stage`` (``baseline_unimodal_image`` -> ``unimodal:image``, via metrics.json)."""
    if stage == FOUND_STAGE:
        return SEARCHED
    if stage == PROBE:
        return PROBE
    names = {stage_of(n): n for n in ((read_metrics(run / "metrics.json") or {}).get("baselines") or {})}
    return names.get(stage, stage.removeprefix("baseline_"))


def _from_model_file(path: Path, stage: str = FOUND_STAGE, method: str = SEARCHED) -> LoadedModel:
    d = _torch_load(path)
    if d.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path}: not a bmnas model file (format {d.get('format')!r})")
    check(d, MODEL_SCHEMA, str(path), MODEL_FIX, ModelError)
    return _build(
        _genotype(d["genotype"], path.parent, path),
        d["state_dict"],
        TaskInfo(d["task"]["type"], d["task"]["num_outputs"]),
        threshold=float(d["threshold"]),
        pooling=d["pooling"],
        class_names=d.get("class_names") or [],
        dropout=float(d.get("dropout", 0.0)),
        source=path,
        config=_read_config(path.parent / "config.yaml") or {},
        fix=MODEL_FIX,
        stage=stage,
        method=method,
    )


def _from_checkpoint(run: Path, path: Path, stage: str = FOUND_STAGE, method: str = SEARCHED) -> LoadedModel:
    """A baseline (or a found network without ``model.pt``) from its evaluation-stage checkpoint."""
    ckpt = _torch_load(path)
    if "model" not in ckpt or "state" not in ckpt:
        raise ModelError(
            f"{path}: not an evaluation-stage checkpoint (a search checkpoint holds no trained model)"
        )
    check(ckpt, TRAINED_CHECKPOINT, str(path), CHECKPOINT_FIX, ModelError)
    cfg = ckpt.get("config") or {}
    done = ckpt["state"].get("epoch", 0)
    total = ckpt.get("epochs") or cfg.get("train", {}).get("epochs", done)
    if done < total:
        raise ModelError(
            f"{path}: training stopped after epoch {done} of {total}; rerun the same command to finish it"
        )
    genotype = _genotype(ckpt.get("genotype"), run, path)
    metrics = read_metrics(run / "metrics.json")
    head = ckpt["model"].get("head.classifier.weight")
    if not isinstance(head, torch.Tensor) or head.dim() != 2 or not 1 <= head.shape[0] <= MAX_OUTPUTS:
        raise ModelError(
            f"{path}: weights of head.classifier.weight are missing or not a matrix of 1 to {MAX_OUTPUTS} "
            f"rows; {CHECKPOINT_FIX}"
        )
    task_type = cfg.get("data", {}).get("task") or _task_from_metrics(metrics)
    if task_type is None:
        raise ModelError(
            f"{run}: cannot tell the task (no metrics.json and no data.task in the config); finish the "
            f"evaluation stage or set data.task"
        )
    names = ((metrics or {}).get("data") or {}).get("info", {}).get("class_names") or []
    return _build(
        genotype,
        ckpt["model"],
        TaskInfo(task_type, int(head.shape[0])),
        threshold=float(cfg.get("data", {}).get("threshold", 0.5)),
        pooling=str(cfg.get("data", {}).get("pooling", "max")),
        class_names=names,
        dropout=float(cfg.get("model", {}).get("dropout", 0.0)),
        source=path,
        config=_read_config(run / "config.yaml") or cfg,
        fix=CHECKPOINT_FIX,
        stage=stage,
        method=method,
    )


def _build(
    genotype: Genotype,
    state: Mapping,
    task: TaskInfo,
    *,
    threshold: float,
    pooling: str,
    class_names,
    dropout: float,
    source: Path,
    config: Mapping,
    fix: str,
    stage: str = FOUND_STAGE,
    method: str = SEARCHED,
) -> LoadedModel:
    check_weights(genotype, task.num_outputs, state, source, fix)  # before allocating anything
    net = FoundNet(genotype, task.num_outputs, dropout=dropout)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ModelError(f"{source}: weights do not fit the genotype ({str(err).splitlines()[0]})") from err
    net.eval()
    names = [str(c) for c in class_names]
    if len(names) != task.num_outputs:
        names = [str(k) for k in range(task.num_outputs)]
    return LoadedModel(genotype, net, task, threshold, pooling, tuple(names), source, config, stage, method)


def check_weights(genotype: Genotype, num_outputs: int, state: Mapping, source: Path, fix: str) -> None:
    """Refuse (:class:`ModelError`) a state dict that is not the network ``genotype`` builds.

    The network is built on the ``meta`` device (shapes, no memory): every tensor it has must be
    in ``state`` with its shape and kind (floating or integer), nothing else may be, and the
    floating ones (weights, BatchNorm statistics) must be finite.
    """
    try:
        with torch.device("meta"):
            wanted = FoundNet(genotype, num_outputs).state_dict()
    except GenotypeError as err:
        raise ModelError(f"{source}: {err}; {fix}") from None
    except (NotImplementedError, RuntimeError):  # an op that cannot be built on meta: load_state_dict checks
        return
    missing = [k for k in wanted if k not in state]
    extra = [k for k in state if k not in wanted]
    if missing or extra:
        what = f"lack {missing[:3]}" if missing else f"hold {extra[:3]}, which it does not build"
        raise ModelError(f"{source}: the weights {what} (the genotype's network); {fix}")
    for name, want in wanted.items():
        t = state[name]
        if not isinstance(t, torch.Tensor):
            raise ModelError(f"{source}: weights of {name} are a {type(t).__name__}, not a tensor; {fix}")
        if tuple(t.shape) != tuple(want.shape) or t.is_floating_point() != want.is_floating_point():
            raise ModelError(
                f"{source}: weights of {name} are {t.dtype} {tuple(t.shape)}; the genotype builds "
                f"{want.dtype} {tuple(want.shape)}; {fix}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelError(f"{source}: weights of {name} are not finite; {fix}")


def _torch_load(path: Path) -> dict:
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, foreign or not a torch file
        raise ModelError(f"{path}: unreadable ({str(err).splitlines()[0][:200]})") from err
    if not isinstance(d, dict):
        raise ModelError(f"{path}: not a bmnas checkpoint (holds a {type(d).__name__})")
    return d


def _genotype(d: Mapping | None, run: Path, where: Path) -> Genotype:
    try:
        if d:
            return Genotype.from_dict(d, where=f"{where}: genotype")
        return Genotype.load(run / "genotype.json")
    except GenotypeError as err:
        raise ModelError(str(err)) from err


def _task_from_metrics(metrics: Mapping | None) -> str | None:
    if not metrics:
        return None
    task = ((metrics.get("data") or {}).get("task") or {}).get("type")
    if task:
        return task
    test = metrics.get("test") or {}
    return "multiclass" if "accuracy" in test else "multilabel" if "f1_weighted" in test else None


def _read_config(path: Path) -> dict | None:
    """``config.yaml`` as loading reads it (:data:`~bmnas.core.schemas.RUN_CONFIG`); None if absent."""
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelError(f"{path}: too large to be the configuration bmnas wrote; {CONFIG_FIX}")
    try:
        loaded = yaml.safe_load(path.read_text())
        check_size(loaded, str(path))  # an alias bomb
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        raise ModelError(f"{path}: not a readable YAML file ({type(err).__name__}); {CONFIG_FIX}") from None
    except BmnasError as err:
        raise ModelError(f"{err}; {CONFIG_FIX}") from None
    return None if loaded is None else check(loaded, RUN_CONFIG, str(path), CONFIG_FIX, ModelError)
