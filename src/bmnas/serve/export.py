"""Export a trained network of a run as one file: TorchScript (``.pt``) or ONNX (``.onnx``).

By default the network ``bmnas run`` recommends (:func:`bmnas.serve.model.load`), which may be the
found network, a baseline or the linear probe: each is a :class:`~bmnas.space.found.FoundNet`.

Two graphs, both returning ``(logits, probabilities)``, each ``(B, K)``: softmax (multiclass) or
sigmoid (multilabel), with a free batch size:

* **features in** (:class:`InferenceModule`): the *pooled* features the network reads, in
  :attr:`LoadedModel.inputs` order, each ``(B, L_k, C_in)`` float32 (``L_k`` = 1 for vectors, else
  L). Pool raw features with :meth:`LoadedModel.pool` (or :func:`bmnas.features.pooling.pool_feature` with
  the ``L`` and ``pooling`` of the metadata).
* **raw in** (:class:`RawInferenceModule`, runs on a registered dataset): one tensor per modality,
  what its backbone's ``preprocess`` returns (the raw arrays for AV-MNIST); backbones, forward
  hooks, pooling and the network run in one graph. Per-sample shapes are those of the dataset:
  pooling branches on them when traced. A backbone whose preprocessing is not a tensor (a
  tokenizer) cannot be an input, and the export falls back to features in.

Metadata (``bmnas`` key, JSON): format, bmnas version, the network's method and stage, genotype,
inputs with shapes, outputs, task, class names, threshold, L, pooling. TorchScript stores it as the
extra file ``bmnas.json`` (``torch.jit.load(f, _extra_files={"bmnas.json": ""})``), ONNX as model
metadata properties
(``onnxruntime.InferenceSession(f).get_modelmeta().custom_metadata_map["bmnas"]``).
:func:`read_metadata` reads both. ONNX export needs the ``onnx`` extra (onnx, onnxscript).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.export import Dim

from .._version import __version__
from ..core.errors import DataError
from ..core.fileio import atomic_write
from ..engine.device import uses_threads
from ..features.backbones.base import Backbone
from ..features.pipeline import prepare_backbones
from ..features.pooling import pool_feature
from .model import RECOMMENDED, LoadedModel, load, model_threads

log = logging.getLogger(__name__)
FORMATS = ("torchscript", "onnx")
SUFFIXES = {".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript", ".onnx": "onnx"}
"""The format an ``--out`` suffix implies; any other suffix needs ``--format``."""
EXPORT_FORMAT = "bmnas.exported"
META_FILE = "bmnas.json"


class InferenceModule(nn.Module):
    """``(f_1, …, f_k) -> (logits, probabilities)`` over the pooled inputs of a found network."""

    def __init__(self, model: LoadedModel):
        super().__init__()
        self.net = model.net
        self.names = list(model.inputs)
        self.multiclass = model.task.type == "multiclass"

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(dict(zip(self.names, features, strict=True)))
        probs = logits.softmax(dim=-1) if self.multiclass else torch.sigmoid(logits)
        return logits, probs


class RawInferenceModule(nn.Module):
    """``(x_1, …, x_m) -> (logits, probabilities)``: backbones, hooks, pooling and the network in one.

    ``x_i`` is the tensor the i-th backbone's module takes (its ``preprocess`` output); the hooked
    layers' outputs are pooled as in extraction (:func:`bmnas.features.pooling.pool_feature`).
    """

    def __init__(self, model: LoadedModel, backbones: Sequence[Backbone]):
        super().__init__()
        self.net = model.net
        self.L, self.pooling = model.L, model.pooling
        self.multiclass = model.task.type == "multiclass"
        self.modalities: list[str] = []
        self.features: list[list[tuple[str, str]]] = []  # per backbone: (feature name, module path)
        modules = []
        for b in backbones:
            wanted = [(n, b.layers[layer]) for layer, n in zip(b.layers, b.feature_names(), strict=True)]
            wanted = [(n, path) for n, path in wanted if n in model.inputs]
            if wanted:
                modules.append(b.module.eval())
                self.modalities.append(b.modality)
                self.features.append(wanted)
        self.backbones = nn.ModuleList(modules)
        self._out: dict[str, torch.Tensor] = {}
        named = [dict(m.named_modules()) for m in modules]
        for i, wanted in enumerate(self.features):
            for name, path in wanted:
                if path not in named[i]:
                    raise DataError(
                        f"feature {name!r}: module path {path!r} cannot be exported (no submodule)"
                    )
                named[i][path].register_forward_hook(self._catch(name))

    def _catch(self, name: str):
        def hook(_mod: nn.Module, _inp: object, output: object) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            self._out[name] = pool_feature(out, self.L, self.pooling)

        return hook

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._out.clear()
        for module, x in zip(self.backbones, inputs, strict=True):
            module(x)
        logits = self.net(dict(self._out))
        probs = logits.softmax(dim=-1) if self.multiclass else torch.sigmoid(logits)
        return logits, probs


def metadata(model: LoadedModel, raw_inputs: Mapping[str, torch.Tensor] | None = None) -> dict:
    """What a user of the exported file needs besides the graph.

    ``raw_inputs``: example backbone inputs (modality -> batch) when backbones are part of the graph.
    """
    specs = {f.name: f for f in model.genotype.features}
    if raw_inputs is None:
        inputs = [{"name": n, "shape": ["B", specs[n].length, specs[n].channels]} for n in model.inputs]
    else:
        inputs = [{"name": m, "shape": ["B", *x.shape[1:]], "kind": "raw"} for m, x in raw_inputs.items()]
    return {
        "format": EXPORT_FORMAT,
        "bmnas_version": __version__,
        "method": model.method,
        "stage": model.stage,
        "genotype": model.genotype.to_dict(),
        "inputs": inputs,
        "outputs": ["logits", "probabilities"],
        "task": {"type": model.task.type, "num_outputs": model.task.num_outputs},
        "class_names": list(model.class_names),
        "threshold": model.threshold,
        "L": model.L,
        "pooling": model.pooling,
    }


def example_inputs(model: LoadedModel, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random pooled inputs of the right shapes (for tracing and checks)."""
    g = torch.Generator().manual_seed(seed)
    specs = {f.name: f for f in model.genotype.features}
    return tuple(torch.randn(batch, specs[n].length, specs[n].channels, generator=g) for n in model.inputs)


def raw_examples(
    module: RawInferenceModule, backbones: Sequence[Backbone], samples: Mapping[str, np.ndarray | Sequence]
) -> dict[str, torch.Tensor] | None:
    """Backbone inputs (``preprocess`` of two raw samples) per modality, in the module's order.

    None when a backbone's preprocessing does not give one tensor (e.g. a tokenizer's dict): such
    a backbone cannot be an input of an exported graph.
    """
    by_modality = {b.modality: b for b in backbones}
    out = {}
    for m in module.modalities:
        x = by_modality[m].preprocess(samples[m][:2])
        if not isinstance(x, torch.Tensor):
            return None
        out[m] = x
    return out


def format_for(path: str | Path, fmt: str | None) -> str:
    """The format of a model file: the one its suffix names (:data:`SUFFIXES`), which ``fmt`` must
    match when given; a suffix bmnas does not know (``model.bin``) needs ``fmt``.

    Raises :class:`DataError` for an unknown suffix without ``fmt``, for a suffix of the other format
    (``--format onnx --out model.pt``) and for an unknown ``fmt``.
    """
    if fmt is not None and fmt not in FORMATS:
        raise DataError(f"--format {fmt!r}: choose one of {list(FORMATS)}")
    suffix = Path(path).suffix.lower()
    implied = SUFFIXES.get(suffix)
    if implied is None and fmt is None:
        known = ", ".join(f"{s} ({f})" for s, f in SUFFIXES.items())
        raise DataError(
            f"--out {path}: unknown model file extension {suffix or '(none)'!r}; use {known}, "
            f"or say the format with --format {'|'.join(FORMATS)}"
        )
    if implied is None:
        return fmt
    if fmt is not None and fmt != implied:
        ours = [s for s, f in SUFFIXES.items() if f == fmt]
        raise DataError(
            f"--out {path} names a {implied} file but --format is {fmt}; name it with "
            f"{' or '.join(ours)}, or leave out --format"
        )
    return implied


@uses_threads(lambda a: model_threads(a["model"], 2))  # tracing runs a batch of two
def export_model(
    model: LoadedModel,
    path: str | Path,
    fmt: str | None = None,
    backbones: Sequence[Backbone] | None = None,
    samples: Mapping[str, np.ndarray | Sequence] | None = None,
) -> dict:
    """Write ``model``'s inference graph with its metadata to ``path``; returns the metadata.

    With ``backbones`` and raw ``samples`` (modality -> a few raw inputs, for tracing) the graph
    starts at the backbones' inputs (:class:`RawInferenceModule`) when every backbone's
    preprocessing gives a tensor; otherwise it starts at the pooled features.
    """
    path = Path(path)
    fmt = format_for(path, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    module: nn.Module = InferenceModule(model).eval()
    raw = None
    if backbones is not None and samples is not None:
        candidate = RawInferenceModule(model, backbones).eval()
        raw = raw_examples(candidate, backbones, samples)
        if raw is not None:
            module = candidate
    meta = metadata(model, raw)
    example = tuple(raw.values()) if raw is not None else example_inputs(model)
    names = [i["name"] for i in meta["inputs"]]
    if fmt == "torchscript":
        # torch 2.13 marks TorchScript deprecated; it is still the one-file format C++ and Java load
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(module, example, check_trace=False)
            extra = {META_FILE: json.dumps(meta)}

            def write(tmp: Path) -> None:
                with tmp.open("wb") as f:  # a full disk is then an OSError, not torch's RuntimeError
                    torch.jit.save(traced, f, _extra_files=extra)

            atomic_write(path, write)
    else:
        _export_onnx(module, example, names, path, meta)
    return meta


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the ONNX exporter's progress prints, warnings and notes on optional torchvision ops."""
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        onnx_log.setLevel(level)


def _export_onnx(module: nn.Module, example: tuple, names: list[str], path: Path, meta: dict) -> None:
    try:
        import onnx
    except ImportError as err:
        raise DataError("ONNX export needs the onnx extra: pip install 'bmnas[onnx]'") from err

    batch = Dim("batch")
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module,
            example,
            input_names=names,
            output_names=["logits", "probabilities"],
            dynamic_shapes=(tuple({0: batch} for _ in names),),
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    for key, value in (
        ("bmnas", json.dumps(meta)),
        ("bmnas_version", __version__),
        ("genotype", json.dumps(meta["genotype"])),
    ):
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    atomic_write(path, lambda p: onnx.save(proto, str(p), format="protobuf"))


def read_metadata(path: str | Path) -> dict:
    """The ``bmnas`` metadata of an exported TorchScript or ONNX file."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props["bmnas"])
    extra = {META_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[META_FILE])


def export_run(
    run_dir: str | Path,
    path: str | Path,
    fmt: str | None = None,
    stage: str = RECOMMENDED,
    cache: str | Path | None = None,
    features_in: bool = False,
    progress: bool = False,
) -> dict:
    """Export the trained network ``stage`` of a run (default: the recommended one) to ``path``;
    returns the metadata (:func:`export_model`).

    A run on a registered dataset is exported from its backbones' inputs (loaded from the cache
    root ``cache``) unless ``features_in`` or a backbone's preprocessing gives no tensor (then a
    warning says so); any other run from its pooled features.
    """
    model = load(run_dir, stage)
    backbones = samples = None
    dataset = (model.config.get("data") or {}).get("dataset")
    if dataset and not features_in:
        raw, backbones = prepare_backbones(
            dataset, root=cache, seed=int(model.config.get("seed", 0)), progress=progress
        )
        samples = raw.splits["train"].inputs
    meta = export_model(model, path, fmt, backbones, samples)
    if backbones is not None and meta["inputs"][0].get("kind") != "raw":
        log.warning("a backbone's preprocessing does not give a tensor, so the backbones are not exported")
    return meta
