"""Use a trained run: load its found network and predict on new samples.

:func:`load` rebuilds the trained network of a run directory with everything inference needs (the
genotype, the weights, L and the pooling of its features, task, threshold, class names) from
``model.pt`` (:func:`save_model`) or else from the evaluation stage's checkpoint. The returned
:class:`LoadedModel` predicts from raw features in the generic format (``name -> (N, *raw_shape)``,
pooled exactly as the run pooled them) or from already pooled ``(N, L_k, C_in)`` features.

Probabilities are ``softmax(logits)`` (multiclass; prediction = argmax) or ``σ(logits)``
(multilabel; predicted label set = ``{k : σ(logit_k) > threshold}``), the rules of
:func:`bmnas.engine.metrics.compute_metrics`, so metrics of written predictions equal the run's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from .._version import __version__
from ..core.config import Config
from ..core.data import SPLITS, FeatureData, TaskInfo
from ..core.errors import DataError
from ..core.fileio import read_json, save_torch, write_json, write_jsonl
from ..core.genotype import Genotype, GenotypeError
from ..engine.loop import forward_batches
from ..engine.metrics import compute_metrics
from ..engine.rundir import RunError
from ..features.backbones.base import Backbone
from ..features.extract import extract_features
from ..features.generic import read_npz
from ..features.pipeline import load_data, prepare_backbones
from ..features.pooling import pool_feature
from ..features.validate import check_feature, check_labels, check_samples
from ..report import tables
from ..space.found import FoundNet

MODEL_FILE = "model.pt"
MODEL_FORMAT = "bmnas.model"
FOUND_STAGE = "train"
RECOMMENDED = "recommended"


class ModelError(RunError):
    """A run directory without a usable trained network; the message says how to get one."""


@dataclass(frozen=True)
class Predictions:
    """Logits and probabilities ``(N, K)`` of N samples, and the decisions they imply."""

    logits: np.ndarray
    probabilities: np.ndarray
    task: TaskInfo
    class_names: tuple[str, ...]
    threshold: float

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @property
    def predicted(self) -> np.ndarray:
        """Class indices ``(N,)`` (multiclass) or a multi-hot ``(N, K)`` int array (multilabel)."""
        if self.task.type == "multiclass":
            return self.logits.argmax(axis=1)
        return (self.probabilities > self.threshold).astype(np.int64)

    def label_names(self) -> list[str | list[str]]:
        """Per sample: the predicted class name, or the list of predicted label names."""
        names = self.class_names
        if self.task.type == "multiclass":
            return [names[i] for i in self.predicted]
        return [[names[k] for k in np.flatnonzero(row)] for row in self.predicted]

    def metrics(self, labels: np.ndarray) -> dict:
        """The run's task metrics (:func:`bmnas.engine.metrics.compute_metrics`) against ``labels``."""
        return compute_metrics(self.task, self.logits, np.asarray(labels), self.threshold)

    def write(self, path: str | Path, labels: np.ndarray | None = None) -> Path:
        """Write one row per sample as CSV (``.csv``) or JSON lines (``.jsonl``/``.json``).

        CSV columns: ``index, prediction[, label], prob_<class>…``; a multilabel prediction or label
        is its names joined by ``;``. JSON lines: ``{"index", "prediction", "probabilities":
        {class: p}[, "label"]}`` with a multilabel prediction as a list of names.
        """
        path = Path(path)
        kind = output_kind(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        preds = self.label_names()
        truth = None if labels is None else self._label_names(np.asarray(labels))
        if kind != "csv":
            rows = []
            for i, (pred, probs) in enumerate(zip(preds, self.probabilities, strict=True)):
                row = {
                    "index": i,
                    "prediction": pred,
                    "probabilities": dict(zip(self.class_names, map(float, probs), strict=True)),
                }
                if truth:
                    row["label"] = truth[i]
                rows.append(row)
            return write_jsonl(path, rows)

        header = [
            "index",
            "prediction",
            *(["label"] if truth else []),
            *(f"prob_{c}" for c in self.class_names),
        ]

        def csv_rows() -> Iterator[list]:
            for i, (pred, probs) in enumerate(zip(preds, self.probabilities, strict=True)):
                names = [pred, *(truth[i : i + 1] if truth else [])]
                cells = [";".join(v) if isinstance(v, list) else v for v in names]  # a multilabel set
                yield [i, *cells, *(repr(float(p)) for p in probs)]

        return tables.write_csv(path, header, csv_rows())

    def _label_names(self, labels: np.ndarray) -> list[str | list[str]]:
        if self.task.type == "multiclass":
            return [self.class_names[int(i)] for i in labels]
        return [[self.class_names[k] for k in np.flatnonzero(row)] for row in labels]


def output_kind(path: Path) -> str:
    """``"csv"`` or ``"jsonl"`` from the file suffix; anything else is a :class:`DataError`."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    raise DataError(f"--out {path}: unknown output type {suffix or '(no suffix)'!r}; use .csv or .jsonl")


@dataclass
class LoadedModel:
    """A trained found network ready for inference (eval mode, CPU)."""

    genotype: Genotype
    net: FoundNet
    task: TaskInfo
    threshold: float
    pooling: str
    class_names: tuple[str, ...]
    source: Path
    config: Mapping

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
            out[name] = pool_feature(torch.as_tensor(arr), self.L, self.pooling).numpy()
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


def load(run_dir: str | Path, stage: str = FOUND_STAGE) -> LoadedModel:
    """The trained network of ``run_dir`` (``stage``: ``train`` for the found network, a baseline's
    checkpoint name such as ``baseline_late_fusion``, or ``recommended`` for the one ``bmnas run``
    recommends).

    Reads ``model.pt`` when present (found network), else ``<stage>.ckpt.pt`` with ``config.yaml``
    and ``metrics.json``. Raises :class:`ModelError` naming what is missing.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise ModelError(f"{run}: no such run directory")
    if stage == RECOMMENDED:
        stage = recommended_stage(run)
    if stage == FOUND_STAGE and (run / MODEL_FILE).is_file():
        return _from_model_file(run / MODEL_FILE)
    path = run / f"{stage}.ckpt.pt"
    if not path.is_file():
        have = sorted(p.name for p in run.glob("*.ckpt.pt"))
        raise ModelError(
            f"{run}: no trained model ({MODEL_FILE} and {path.name} are missing; checkpoints here: "
            f"{have or 'none'}); train one with `bmnas train --out {run} ...` or `bmnas run`"
        )
    ckpt = _torch_load(path)
    if "model" not in ckpt or "state" not in ckpt:
        raise ModelError(
            f"{path}: not an evaluation-stage checkpoint (a search checkpoint holds no trained model)"
        )
    cfg = ckpt.get("config") or {}
    done = int(ckpt["state"].get("epoch", 0))
    total = int(ckpt.get("epochs") or cfg.get("train", {}).get("epochs", done))
    if done < total:
        raise ModelError(
            f"{path}: training stopped after epoch {done} of {total}; rerun the same command to finish it"
        )
    genotype = _genotype(ckpt.get("genotype"), run, path)
    metrics = read_json(run / "metrics.json", default=None)
    num_outputs = int(ckpt["model"]["head.classifier.weight"].shape[0])
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
        TaskInfo(task_type, num_outputs),
        threshold=float(cfg.get("data", {}).get("threshold", 0.5)),
        pooling=str(cfg.get("data", {}).get("pooling", "max")),
        class_names=names,
        dropout=float(cfg.get("model", {}).get("dropout", 0.0)),
        source=path,
        config=_read_yaml(run / "config.yaml") or cfg,
    )


def recommended_stage(run: Path) -> str:
    """The checkpoint name of the network ``bmnas run`` recommends (``metrics.json``)."""
    method = (((read_json(run / "metrics.json", default=None) or {}).get("recommended")) or {}).get("method")
    if not method:
        raise ModelError(f"{run}: metrics.json names no recommended network (`bmnas run` writes one)")
    return FOUND_STAGE if method == "searched" else "baseline_" + method.replace(":", "_")


def _from_model_file(path: Path) -> LoadedModel:
    d = _torch_load(path)
    if d.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path}: not a bmnas model file (format {d.get('format')!r})")
    genotype = _genotype(d["genotype"], path.parent, path)
    return _build(
        genotype,
        d["state_dict"],
        TaskInfo(d["task"]["type"], int(d["task"]["num_outputs"])),
        threshold=float(d["threshold"]),
        pooling=str(d["pooling"]),
        class_names=d.get("class_names") or [],
        dropout=float(d.get("dropout", 0.0)),
        source=path,
        config=_read_yaml(path.parent / "config.yaml") or {},
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
) -> LoadedModel:
    net = FoundNet(genotype, task.num_outputs, dropout=dropout)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ModelError(f"{source}: weights do not fit the genotype ({str(err).splitlines()[0]})") from err
    net.eval()
    names = [str(c) for c in class_names]
    if len(names) != task.num_outputs:
        names = [str(k) for k in range(task.num_outputs)]
    return LoadedModel(genotype, net, task, threshold, pooling, tuple(names), source, config)


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
        return Genotype.from_dict(d, where=str(where)) if d else Genotype.load(run / "genotype.json")
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


def _read_yaml(path: Path) -> dict | None:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


# ----------------------------------------------------------------------------------------------
# Inputs: a generic directory's split, one .npz, or the run's own data
# ----------------------------------------------------------------------------------------------


def read_input(data: str | Path, split: str = "test") -> tuple[dict[str, np.ndarray], np.ndarray | None, str]:
    """``--data DIR`` (its ``<split>.npz``) or ``--data FILE.npz`` -> (raw features, labels, name)."""
    path = Path(data)
    if path.is_dir():
        if split not in SPLITS:
            raise DataError(f"--split {split!r}: choose one of {list(SPLITS)}")
        path = path / f"{split}.npz"
    feats, labels = read_npz(path)
    return feats, labels, str(path)


def run_features(model: LoadedModel, cache: str | Path, split: str, progress: bool = False):
    """Pooled features and labels of ``split`` of the run's own data (from its ``config.yaml``)."""
    if split not in SPLITS:
        raise DataError(f"--split {split!r}: choose one of {list(SPLITS)}")
    data = run_data(model.config, model.L, cache, progress)
    sp = data[split]
    return sp.features, sp.labels, f"{data.name}/{split}"


def run_data(
    config: Mapping, L: int, cache: str | Path, progress: bool = False, data_dir: str | Path | None = None
) -> FeatureData:
    """The run's data as its ``config.yaml`` describes it, loaded as :func:`load_data` loads it.

    ``data_dir``: a generic directory to use instead (e.g. the run's data, moved).
    """
    d = (config or {}).get("data") or {}
    if not (data_dir or d.get("dir") or d.get("dataset")):
        raise DataError("the run's config.yaml names no data (data.dir or data.dataset); pass --data")
    cfg = Config.from_dict(dict(config), "config.yaml")
    if data_dir:
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, dir=str(data_dir), dataset=None))
    return load_data(cfg.replace(model=dataclasses.replace(cfg.model, L=L)), cache, progress)


def run_backbones(model: LoadedModel, cache: str | Path, progress: bool = False) -> list[Backbone]:
    """The frozen backbones of a run on a registered dataset (loaded from the cache root)."""
    d = (model.config or {}).get("data") or {}
    if not d.get("dataset"):
        raise DataError(
            "--raw needs a run on a registered dataset (bmnas run --dataset NAME); this run read "
            "pre-extracted features: predict from features with --data"
        )

    _, backbones = prepare_backbones(
        d["dataset"], root=Path(cache), seed=int(model.config.get("seed", 0)), progress=progress
    )
    return backbones


def predict_input(
    model: LoadedModel,
    cache: str | Path,
    data: str | Path | None = None,
    raw: str | Path | None = None,
    split: str = "test",
    batch_size: int = 1024,
    progress: bool = False,
) -> tuple[Predictions, np.ndarray | None, str]:
    """Predictions of one input, its labels (None when it has none) and its name.

    The input: ``raw`` (one ``.npz`` of raw inputs per modality, through the run's backbones from
    the cache root ``cache``), ``data`` (features: a generic directory's ``split`` or one ``.npz``)
    or, with neither, ``split`` of the run's own data. Labels are checked against the run's task.
    """
    if data and raw:
        raise DataError("give --data (features) or --raw (raw inputs), not both")
    if raw:
        inputs, labels = read_npz(raw)
        check_samples(str(raw), inputs)
        pooled = model.extract(run_backbones(model, cache, progress), inputs, progress)
        preds, name = model.predict_pooled(pooled, batch_size), str(raw)
    elif data:
        features, labels, name = read_input(data, split)
        if not features:
            raise DataError(f"{name}: no feature arrays")
        check_samples(name, features)
        preds = model.predict(features, batch_size)
    else:
        pooled, labels, name = run_features(model, cache, split, progress=progress)
        return model.predict_pooled(pooled, batch_size), labels, name
    if labels is not None:
        check_labels(labels, model.task, len(preds), name)
    return preds, labels, name


def write_predictions(preds: Predictions, out: str | Path, labels: np.ndarray | None = None) -> dict | None:
    """Write ``out`` (:meth:`Predictions.write`) and, given labels, their metrics to
    ``<out stem>.metrics.json`` beside it; returns those metrics (None without labels)."""
    out = Path(out)
    preds.write(out, labels)
    if labels is None:
        return None
    metrics = preds.metrics(labels)
    write_json(out.with_name(out.stem + ".metrics.json"), metrics)
    return metrics
