"""Export a trained found network as one file: TorchScript (``.pt``) or ONNX (``.onnx``).

The exported graph takes the *pooled* features the network reads, in :attr:`LoadedModel.inputs`
order, each ``(B, L_k, C_in)`` float32 (``L_k`` = 1 for vectors, else L), and returns
``(logits, probabilities)``, both ``(B, K)``: softmax (multiclass) or sigmoid (multilabel). The
batch size is free. Pool raw features with :func:`bmnas.pooling.pool_feature` (or
:meth:`LoadedModel.pool`) using the ``L`` and ``pooling`` recorded in the metadata.

Metadata (``bmnas`` key, JSON): format, bmnas version, genotype, inputs with shapes, outputs, task,
class names, threshold, L, pooling. TorchScript stores it as the extra file ``bmnas.json``
(``torch.jit.load(f, _extra_files={"bmnas.json": ""})``), ONNX as model metadata properties
(``onnxruntime.InferenceSession(f).get_modelmeta().custom_metadata_map["bmnas"]``).
:func:`read_metadata` reads both. ONNX export needs the ``onnx`` extra (onnx, onnxscript).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .data import DataError
from .predict import LoadedModel

FORMATS = ("torchscript", "onnx")
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


def metadata(model: LoadedModel) -> dict:
    """What a user of the exported file needs besides the graph."""
    specs = {f.name: f for f in model.genotype.features}
    return {
        "format": EXPORT_FORMAT,
        "bmnas_version": __version__,
        "genotype": model.genotype.to_dict(),
        "inputs": [{"name": n, "shape": ["B", specs[n].length, specs[n].channels]} for n in model.inputs],
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


def format_for(path: str | Path, fmt: str | None) -> str:
    """``fmt``, or the format the suffix implies (``.onnx`` -> onnx, else torchscript)."""
    if fmt is None:
        fmt = "onnx" if Path(path).suffix.lower() == ".onnx" else "torchscript"
    if fmt not in FORMATS:
        raise DataError(f"--format {fmt!r}: choose one of {list(FORMATS)}")
    return fmt


def export_model(model: LoadedModel, path: str | Path, fmt: str | None = None) -> Path:
    """Write ``model``'s inference graph with its metadata to ``path``; returns the path."""
    path = Path(path)
    fmt = format_for(path, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = InferenceModule(model).eval()
    meta = json.dumps(metadata(model))
    example = example_inputs(model)
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={META_FILE: meta})
        return path
    _export_onnx(module, example, model, path, meta)
    return path


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the ONNX exporter's progress prints, warnings and notes on optional torchvision ops."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _export_onnx(module: nn.Module, example, model: LoadedModel, path: Path, meta: str) -> None:
    try:
        import onnx
    except ImportError as err:
        raise DataError("ONNX export needs the onnx extra: pip install 'bmnas[onnx]'") from err
    from torch.export import Dim

    batch = Dim("batch")
    names = list(model.inputs)
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
        ("bmnas", meta),
        ("bmnas_version", __version__),
        ("genotype", model.genotype.to_json(indent=None)),
    ):
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(proto, str(path))


def read_metadata(path: str | Path) -> dict:
    """The ``bmnas`` metadata of an exported TorchScript or ONNX file."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props["bmnas"])
    extra = {META_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[META_FILE])


def cli(args) -> int:
    """``bmnas export-model RUN --format torchscript|onnx --out FILE``."""
    from .predict import load

    model = load(args.run_dir, args.stage)
    path = export_model(model, args.out, args.format)
    ins = ", ".join(
        f"{n} (B, {s[1]}, {s[2]})" for n, s in ((i["name"], i["shape"]) for i in metadata(model)["inputs"])
    )
    print(f"wrote {format_for(path, args.format)} model {path}: inputs {ins} -> logits, probabilities")
    return 0
