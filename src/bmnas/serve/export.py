"""Export a trained network of a run as one file: TorchScript (``.pt``) or ONNX (``.onnx``).

By default the network ``bmnas run`` recommends (:func:`bmnas.serve.model.load`), which may be the
found network, a baseline or the linear probe: each is a :class:`~bmnas.space.found.FoundNet`.

One graph, :class:`ExportModule`, returning ``(logits, probabilities)``, each ``(B, K)``: softmax
(multiclass) or sigmoid (multilabel), with a free batch size. Each input (:class:`GraphInput`) is
one of three kinds:

* :data:`POOLED`: a *pooled* feature the network reads, ``(B, L_k, C_in)`` float32 (``L_k`` = 1 for
  vectors, else L); pool raw features with :meth:`LoadedModel.pool` (or
  :func:`bmnas.features.pooling.pool_feature` with the ``L`` and ``pooling`` of the metadata);
* :data:`MAP`: a raw feature ``(B, C_in, *spatial)`` of the shape the run's data had, pooled in
  the graph (``--pooling-in-graph`` for ``--data`` runs; a table's numeric columns);
* :data:`RAW`: a backbone's input, what its ``preprocess`` returns (the raw arrays for AV-MNIST,
  the preprocessed image tensor of a table run); backbone, forward hooks and pooling run in the
  graph. A backbone whose preprocessing is not a tensor, or a text backbone of a table run (its
  tokens are resampled per text), stays outside: its features are :data:`POOLED` inputs.

The network and the backbones are traced as float32 CPU copies (:func:`cpu_copy`); pooling of
sizes that do not divide is written out bin by bin while exporting to ONNX
(:mod:`bmnas.features.pooling`), whose converter has no such adaptive pooling.

Metadata (``bmnas`` key, JSON): format, bmnas version, the network's method and stage, genotype,
inputs (name, kind, shape, dtype, features, note), outputs, task, class names, threshold, L,
pooling. TorchScript stores it as the extra file ``bmnas.json``
(``torch.jit.load(f, _extra_files={"bmnas.json": ""})``), ONNX as model metadata properties
(``onnxruntime.InferenceSession(f).get_modelmeta().custom_metadata_map["bmnas"]``).
:func:`read_metadata` reads both. ONNX export needs the ``onnx`` extra (onnx, onnxscript).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.export import Dim

from .._version import __version__
from ..core.errors import DataError, MissingDependencyError
from ..core.fileio import atomic_write
from ..engine.device import uses_threads
from ..features.backbones.base import Backbone
from ..features.backbones.efficientnet_lite import INPUT_MEAN, INPUT_STD
from ..features.generic import RAW_SHAPES, is_npy_dir, raw_shapes, read_npy_split, read_npz
from ..features.pipeline import prepare_backbones
from ..features.pooling import pool_feature
from ..features.table import VECTOR_LAYER, backbone_options, run_backbone
from .model import RECOMMENDED, LoadedModel, load, model_threads
from .predict import run_info

log = logging.getLogger(__name__)
FORMATS = ("torchscript", "onnx")
SUFFIXES = {".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript", ".onnx": "onnx"}
"""The format an ``--out`` suffix implies; any other suffix needs ``--format``."""
EXPORT_FORMAT = "bmnas.exported"
META_FILE = "bmnas.json"


RAW, MAP, POOLED = "raw", "map", "pooled"
"""Kinds of graph inputs: a backbone's input (its ``preprocess`` output), a raw feature map pooled
inside the graph (:func:`~bmnas.features.pooling.pool_feature`), a pooled ``(B, L_k, C_in)`` feature."""


@dataclass(frozen=True)
class GraphInput:
    """One input of an exported graph: its name, kind (:data:`RAW`, :data:`MAP`, :data:`POOLED`), the
    per-sample shape, the features it gives and a note on how to make it (e.g. an image's preprocessing)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    features: tuple[str, ...]
    dtype: str = "float32"
    note: str = ""

    def to_dict(self) -> dict:
        out = {"name": self.name, "shape": ["B", *self.shape], "kind": self.kind, "dtype": self.dtype}
        out["features"] = list(self.features)
        return {**out, "note": self.note} if self.note else out


def cpu_copy(module: nn.Module) -> nn.Module:
    """A float32 copy of ``module`` on the CPU in eval mode; ``module`` itself is left where it is.

    Exports always trace this copy: the ONNX exporter fails on a CUDA network ("Failed to convert the
    exported program to an ONNX model"), and a file traced on a GPU would only load on one.
    """
    return copy.deepcopy(module).to("cpu", torch.float32).eval()


class ExportModule(nn.Module):
    """``(x_1, …, x_k) -> (logits, probabilities)``: each input a :class:`GraphInput`.

    :data:`POOLED` inputs go to the network as they are, :data:`MAP` inputs are pooled first with the
    run's L and pooling, :data:`RAW` inputs run through their backbone (a CPU copy), whose hooked
    layers' outputs are pooled as in extraction. Softmax (multiclass) or sigmoid (multilabel).
    """

    def __init__(
        self,
        model: LoadedModel,
        inputs: Sequence[GraphInput],
        backbones: Mapping[str, Backbone] | None = None,
    ):
        super().__init__()
        self.net = cpu_copy(model.net)
        self.L, self.pooling = model.L, model.pooling
        self.multiclass = model.task.type == "multiclass"
        self.kinds = [i.kind for i in inputs]
        self.names = [i.name for i in inputs]
        given = [f for i in inputs for f in i.features]
        if sorted(given) != sorted(model.inputs):
            raise DataError(f"graph inputs give the features {given}; the network reads {list(model.inputs)}")
        self._out: dict[str, torch.Tensor] = {}
        modules = []
        for i in (i for i in inputs if i.kind == RAW):
            b = (backbones or {})[i.name]
            module = cpu_copy(b.module)
            named = dict(module.named_modules())
            paths = dict(zip(b.feature_names(), b.layers.values(), strict=True))
            for feature in i.features:
                if paths.get(feature) not in named:
                    raise DataError(
                        f"feature {feature!r}: module path {paths.get(feature)!r} cannot be exported "
                        f"(no submodule)"
                    )
                named[paths[feature]].register_forward_hook(self._catch(feature))
            modules.append(module)
        self.backbones = nn.ModuleList(modules)

    def _catch(self, name: str):
        def hook(_mod: nn.Module, _inp: object, output: object) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            self._out[name] = pool_feature(out, self.L, self.pooling)

        return hook

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._out.clear()
        feats: dict[str, torch.Tensor] = {}
        b = 0
        for kind, name, x in zip(self.kinds, self.names, inputs, strict=True):
            if kind == POOLED:
                feats[name] = x
            elif kind == MAP:
                feats[name] = pool_feature(x, self.L, self.pooling)
            else:
                self.backbones[b](x)
                b += 1
        feats.update(self._out)
        logits = self.net(feats)
        probs = logits.softmax(dim=-1) if self.multiclass else torch.sigmoid(logits)
        return logits, probs


class InferenceModule(ExportModule):
    """``(f_1, …, f_k) -> (logits, probabilities)`` over the pooled inputs of a found network."""

    def __init__(self, model: LoadedModel):
        super().__init__(model, pooled_inputs(model))


class RawInferenceModule(ExportModule):
    """Backbones, hooks, pooling and the network in one graph: one input per backbone that yields a
    feature the network reads (the tensor its ``preprocess`` returns), shapes from ``samples``."""

    def __init__(self, model: LoadedModel, backbones: Sequence[Backbone], samples: Mapping[str, object]):
        inputs = plan_inputs(model, backbones, samples)
        super().__init__(model, inputs, {b.modality: b for b in backbones})


def pooled_inputs(model: LoadedModel, names: Sequence[str] | None = None) -> list[GraphInput]:
    """:data:`POOLED` inputs ``(B, L_k, C_in)`` of the features ``names`` (default: all the net reads)."""
    specs = {f.name: f for f in model.genotype.features}
    return [
        GraphInput(n, POOLED, (specs[n].length, specs[n].channels), (n,))
        for n in (model.inputs if names is None else names)
    ]


def map_input(model: LoadedModel, name: str, shape: Sequence[int], note: str = "") -> GraphInput:
    """A :data:`MAP` input: feature ``name``'s raw per-sample ``shape``, checked against the run's."""
    spec = {f.name: f for f in model.genotype.features}[name]
    shape = tuple(int(d) for d in shape)
    vector = len(shape) == 1
    fits = 1 <= len(shape) <= 4 and shape[0] == spec.channels and vector == (spec.length == 1)
    if not fits or min(shape) < 1:
        want = f"({spec.channels},)" if spec.length == 1 else f"({spec.channels}, T|H,W|T,H,W)"
        raise DataError(
            f"feature {name!r}: recorded raw shape {list(shape)} is not this run's {want} (channels first)"
        )
    return GraphInput(name, MAP, shape, (name,), note=note)


def plan_inputs(
    model: LoadedModel,
    backbones: Sequence[Backbone] = (),
    samples: Mapping[str, object] | None = None,
    raw_shapes: Mapping[str, Sequence[int]] | None = None,
    notes: Mapping[str, str] | None = None,
) -> list[GraphInput]:
    """The graph's inputs, in the network's feature order.

    A backbone whose ``preprocess`` of two ``samples`` of its modality gives one tensor becomes a
    :data:`RAW` input (all the features it yields, at its first one's place); a feature in
    ``raw_shapes`` a :data:`MAP` input; any other feature a :data:`POOLED` input. ``notes``: input
    name -> how to make that input (written to the metadata).
    """
    notes = notes or {}
    owner: dict[str, tuple[Backbone, torch.Tensor]] = {}
    for b in backbones:
        wanted = [n for n in b.feature_names() if n in model.inputs]
        if not wanted or samples is None or b.modality not in samples:
            continue
        x = b.preprocess(samples[b.modality][:2])
        if isinstance(x, torch.Tensor):
            owner.update({n: (b, x) for n in wanted})
    inputs: list[GraphInput] = []
    done: set[str] = set()
    for name in model.inputs:
        if name in owner:
            b, x = owner[name]
            if b.modality not in done:
                done.add(b.modality)
                feats = tuple(n for n in model.inputs if n in owner and owner[n][0] is b)
                dtype = str(x.dtype if not x.is_floating_point() else torch.float32).removeprefix("torch.")
                note = notes.get(b.modality, "")
                inputs.append(GraphInput(b.modality, RAW, tuple(x.shape[1:]), feats, dtype, note))
        elif raw_shapes is not None and name in raw_shapes:
            inputs.append(map_input(model, name, raw_shapes[name], notes.get(name, "")))
        else:
            inputs.append(dataclasses.replace(pooled_inputs(model, [name])[0], note=notes.get(name, "")))
    return inputs


def graph_examples(
    inputs: Sequence[GraphInput],
    backbones: Sequence[Backbone] = (),
    samples: Mapping[str, object] | None = None,
    batch: int = 2,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """A batch of ``batch`` example inputs: backbone inputs from ``samples`` (their ``preprocess``),
    seeded normal values for :data:`MAP` and :data:`POOLED` inputs; float32 (or the backbone's ints)."""
    g = torch.Generator().manual_seed(seed)
    by_modality = {b.modality: b for b in backbones}
    out = []
    for i in inputs:
        if i.kind == RAW:
            x = by_modality[i.name].preprocess((samples or {})[i.name][:batch]).detach().cpu()
            out.append(x.float() if x.is_floating_point() else x)
        else:
            out.append(torch.randn(batch, *i.shape, generator=g))
    return tuple(out)


def metadata(
    model: LoadedModel,
    raw_inputs: Mapping[str, torch.Tensor] | None = None,
    inputs: Sequence[GraphInput] = (),
) -> dict:
    """What a user of the exported file needs besides the graph.

    ``inputs``: the graph's inputs (default: the pooled features; ``raw_inputs``, example backbone
    inputs modality -> batch, the backbones' inputs as before).
    """
    if not inputs:
        if raw_inputs is None:
            inputs = pooled_inputs(model)
        else:
            inputs = [GraphInput(m, RAW, tuple(x.shape[1:]), ()) for m, x in raw_inputs.items()]
    return {
        "format": EXPORT_FORMAT,
        "bmnas_version": __version__,
        "method": model.method,
        "stage": model.stage,
        "genotype": model.genotype.to_dict(),
        "inputs": [i.to_dict() for i in inputs],
        "outputs": ["logits", "probabilities"],
        "task": {"type": model.task.type, "num_outputs": model.task.num_outputs},
        "class_names": list(model.class_names),
        "threshold": model.threshold,
        "L": model.L,
        "pooling": model.pooling,
    }


def example_inputs(model: LoadedModel, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random pooled inputs of the right shapes (for tracing and checks)."""
    return graph_examples(pooled_inputs(model), batch=batch, seed=seed)


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


@uses_threads(lambda a: model_threads(a["model"], 3))  # tracing runs a batch of two, the check three
def export_model(
    model: LoadedModel,
    path: str | Path,
    fmt: str | None = None,
    backbones: Sequence[Backbone] | None = None,
    samples: Mapping[str, np.ndarray | Sequence] | None = None,
    raw_shapes: Mapping[str, Sequence[int]] | None = None,
    notes: Mapping[str, str] | None = None,
) -> dict:
    """Write ``model``'s inference graph with its metadata to ``path``; returns the metadata.

    The graph's inputs (:func:`plan_inputs`): with ``backbones`` and raw ``samples`` (modality -> a
    few raw inputs, for tracing), a backbone's input for each backbone whose preprocessing gives a
    tensor; with ``raw_shapes`` (feature -> per-sample raw shape), those features' raw maps, pooled in
    the graph; the pooled features otherwise. The network and the backbones are traced as float32
    CPU copies (:func:`cpu_copy`), wherever ``model.net`` and the backbones are. A TorchScript graph
    is checked on a batch of three against the untraced module (a batch size baked in by tracing
    is refused).
    """
    path = Path(path)
    fmt = format_for(path, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    backbones = list(backbones or ())
    inputs = plan_inputs(model, backbones, samples, raw_shapes, notes)
    module = ExportModule(model, inputs, {b.modality: b for b in backbones}).eval()
    meta = metadata(model, inputs=inputs)
    example = graph_examples(inputs, backbones, samples)
    names = [i.name for i in inputs]
    if fmt == "torchscript":
        # torch 2.13 marks TorchScript deprecated; it is still the one-file format C++ and Java load
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(module, example, check_trace=False)
            _check_traced(traced, module, graph_examples(inputs, backbones, samples, batch=3, seed=1))
            extra = {META_FILE: json.dumps(meta)}

            def write(tmp: Path) -> None:
                with tmp.open("wb") as f:  # a full disk is then an OSError, not torch's RuntimeError
                    torch.jit.save(traced, f, _extra_files=extra)

            atomic_write(path, write)
    else:
        _export_onnx(module, example, names, path, meta)
    return meta


CHECK_ATOL = 1e-4


def _check_traced(traced: torch.jit.ScriptModule, module: nn.Module, batch: tuple[torch.Tensor, ...]) -> None:
    """Refuse a traced graph that computes something else than ``module`` on another batch size."""
    want, got = module(*batch)[0], traced(*batch)[0]
    if want.shape != got.shape or not torch.allclose(want, got, rtol=0, atol=CHECK_ATOL):
        raise DataError(
            "the traced graph does not compute what the network does on a batch of 3 (a backbone whose "
            "control flow depends on its input?); export from pooled features with --features-in"
        )


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


@contextlib.contextmanager
def _conversion_errors() -> Iterator[None]:
    """The ONNX exporter's failure to express an op, as one line that says what to do instead."""
    try:
        yield
    except Exception as err:  # torch.onnx raises its own ConversionError / TorchExportError types
        if type(err).__name__ not in ("ConversionError", "TorchExportError"):
            raise
        cause = str(err.__cause__ or err).splitlines()[0][:200]
        raise DataError(
            f"the ONNX exporter cannot convert this graph ({cause}); export TorchScript (--format "
            f"torchscript), or from pooled features (--features-in)"
        ) from err


def _export_onnx(module: nn.Module, example: tuple, names: list[str], path: Path, meta: dict) -> None:
    try:
        import onnx
    except ImportError as err:
        raise DataError("ONNX export needs the onnx extra: pip install 'bmnas[onnx]'") from err

    batch = Dim("batch")
    with _quiet_exporter(), torch.no_grad(), _conversion_errors():
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
    pooling_in_graph: bool = False,
    backbones: Sequence[Backbone] | None = None,
    samples: Mapping[str, np.ndarray | Sequence] | None = None,
) -> dict:
    """Export the trained network ``stage`` of a run (default: the recommended one) to ``path``;
    returns the metadata (:func:`export_model`).

    What the graph takes (README, "Predict, export, robustness"), unless ``features_in`` (pooled
    features):

    * a run on a registered dataset: its backbones' inputs (backbones loaded from the cache root
      ``cache``; a backbone whose preprocessing gives no tensor stays outside, with a warning);
    * a table run: each image modality's preprocessed image tensor through its backbone, each vector
      modality's values; text modalities as pooled features (the tokenizer stays outside), said in
      the metadata's ``notes``;
    * a ``--data`` run: its pooled features, or with ``pooling_in_graph`` the raw per-layer maps of
      the shapes its data had (``metrics.json``'s ``data.info.raw_shapes``), pooled in the graph;
    * ``backbones`` (Python API, with ``samples``: modality -> a few raw inputs): your own frozen
      backbones in the graph, e.g. the modules of an ``extract_features`` run.
    """
    model = load(run_dir, stage)
    info = run_info(run_dir)
    dataset = (model.config.get("data") or {}).get("dataset")
    raw_shapes = notes = None
    if features_in:
        return export_model(model, path, fmt)
    if backbones is not None:
        if samples is None:
            raise DataError("export_run(backbones=...) needs samples: modality -> a few raw inputs to trace")
    elif dataset:
        raw, backbones = prepare_backbones(
            dataset, root=cache, seed=int(model.config.get("seed", 0)), progress=progress
        )
        samples = raw.splits["train"].inputs
    elif info.get("modalities"):
        backbones, samples, raw_shapes, notes = _table_graph(model, info)
    elif pooling_in_graph:
        raw_shapes = recorded_raw_shapes(model, info)
    meta = export_model(model, path, fmt, backbones, samples, raw_shapes, notes)
    kept = {i["name"] for i in meta["inputs"] if i["kind"] == RAW}
    outside = [b.modality for b in backbones or () if b.modality not in kept and _reads(model, b)]
    if outside and not info.get("modalities"):
        log.warning(
            "the backbones of %s give no tensor from their preprocessing, so they are not exported: "
            "those inputs are pooled features",
            outside,
        )
    return meta


def _reads(model: LoadedModel, b: Backbone) -> bool:
    return any(n in model.inputs for n in b.feature_names())


def recorded_raw_shapes(model: LoadedModel, info: Mapping) -> dict[str, list[int]]:
    """The per-sample raw shapes of the features the network reads, as the run recorded them
    (``info["raw_shapes"]``), else as its data directory (``data.dir``) still holds them."""
    shapes = info.get(RAW_SHAPES)
    if not isinstance(shapes, Mapping) or any(n not in shapes for n in model.inputs):
        data_dir = (model.config.get("data") or {}).get("dir")
        if not data_dir or not Path(data_dir).is_dir():
            raise DataError(
                f"--pooling-in-graph: the run records no raw shapes of {list(model.inputs)} (made by an "
                f"older bmnas, or not a --data run) and its data directory {data_dir!r} is not there; "
                f"export from pooled features (leave out --pooling-in-graph)"
            )
        shapes = _dir_shapes(Path(data_dir))
    out = {}
    for name in model.inputs:
        shape = shapes.get(name)
        if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and d > 0 for d in shape):
            raise DataError(f"--pooling-in-graph: raw shape of {name!r} is missing or not positive integers")
        out[name] = list(shape)
    return out


def _dir_shapes(root: Path) -> dict[str, list[int]]:
    if is_npy_dir(root):
        return raw_shapes(read_npy_split(root / "train")[0])
    return raw_shapes(read_npz(root / "train.npz")[0])


def _table_graph(model: LoadedModel, info: Mapping):
    """Backbones, samples, raw shapes and notes of a table run's graph (see :func:`export_run`)."""
    size, max_length = backbone_options(info)
    backbones, samples, shapes, notes = [], {}, {}, {}
    for m, mi in info["modalities"].items():
        names = [n for n in model.inputs if n.split(".", 1)[0] == m]
        kind = mi.get("kind")
        if not names:
            continue
        if kind == "vector":
            name = f"{m}.{VECTOR_LAYER}"
            shapes[name] = [len(mi.get("columns") or [])]
            notes[name] = f"the table's columns {list(mi.get('columns') or [])} as float32, in this order"
        elif kind == "image":
            try:
                b = run_backbone(mi, m, size, max_length)
            except (DataError, MissingDependencyError) as err:
                notes.update({n: f"pooled features: {err}" for n in names})
                continue
            backbones.append(b)
            rng = np.random.default_rng(0)
            samples[m] = rng.integers(0, 256, (3, 3, size, size), dtype=np.uint8)
            notes[m] = image_preprocessing(b, size, mi.get("columns") or [])
        else:
            why = (
                f"text modality {m!r}: the tokenizer and the text backbone stay outside the graph (its "
                f"token resampling loops over each text's length); give its pooled features, e.g. from "
                f"bmnas predict --table or LoadedModel.extract"
            )
            notes.update({n: why for n in names})
    return backbones, samples, shapes, notes


def image_preprocessing(b: Backbone, size: int, columns: Sequence[str]) -> str:
    """How a table run's image becomes the graph's ``(3, size, size)`` input, in words."""
    read = (
        f"the image file of column {list(columns)} read as RGB with Pillow, resized to {size}×{size} "
        f"(bilinear) as uint8 (3, {size}, {size}), channels first"
    )
    if b.name.startswith("efficientnet-lite0"):
        return f"{read}, then as float32 (x - {INPUT_MEAN:g}) / {INPUT_STD:g}"
    return f"{read}, then the backbone {b.name!r}'s own preprocessing"
