"""The genotype: a frozen, versioned, JSON-serialisable description of a found fusion network.

Schema (version 1)::

    {
      "format": "bmnas.genotype", "version": 1,
      "C": 64, "L": 8,
      "features": [{"name": "image.conv2", "channels": 32, "length": 8}, ...],
      "cells": [
        {"inputs": ["image.conv2", "audio.conv3"],
         "steps": [{"op": "attention", "inputs": ["x", "y"]},
                   {"op": "sum", "inputs": ["step1", "x"]}],
         "concat": ["step2"]},
        {"inputs": ["cell1", "audio.fc"], "steps": [...], "concat": [...]}
      ],
      "output": ["cell1", "cell2"]
    }

Names: a feature by its ``<modality>.<layer>`` name, the n-th Cell (1-based) as ``cellN``; inside a
Cell ``x``, ``y`` are its two inputs and ``stepM`` the M-th step. A Cell may read any feature or an
earlier Cell; a step may read ``x``, ``y`` or an earlier step; ``concat`` lists the steps whose
outputs form the Cell output; ``output`` the states (Cells or features) the head concatenates.
A ``zero`` step has no inputs and outputs zeros. Unimodal and late-fusion baselines are genotypes
with no Cells whose ``output`` names features.

:func:`derive` turns architecture weights into a genotype (docs/DESIGN.md §3–§4); it is a pure function.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import BmnasError
from .fileio import write_text_atomic

FORMAT = "bmnas.genotype"  # the file format's name, not a module path
VERSION = 1
CELL_INPUTS = ("x", "y")
CELL_PREFIX = "cell"  # Cells are named cell1, cell2, ...: no feature name may start so
MAX_C = 1 << 13  # fused channels and positions beyond these are a typo, not a model (C² weights,
MAX_L = 1 << 12  # L² attention scores per sample)
MAX_CHANNELS = 1 << 24  # channels of one input feature
MAX_CELLS = 256  # Cells, and steps per Cell: far beyond any searched network (model.cells, model.steps)
MAX_JSON_BYTES = 16 << 20


class GenotypeError(BmnasError, ValueError):
    """A malformed or inconsistent genotype; the message names the offending field."""


@dataclass(frozen=True)
class DeriveRules:
    """How a genotype is read off α, β, γ: the one set of defaults (the ``search`` config's).

    ``distinct_steps``: a two-input step reads two different states (DARTS' ``argmax_{i≠j}``);
    ``zero_output``: a Cell's output step may derive ``zero``; ``cross_modal``: a Cell never reads
    two features of one modality (MFAS' rule). :data:`PAPER_RULES` are the paper code's.
    """

    distinct_steps: bool = True
    zero_output: bool = False
    cross_modal: bool = True

    @classmethod
    def of(cls, search: object) -> DeriveRules:
        """The rules a search config (anything with the three fields) asks for."""
        return cls(bool(search.distinct_steps), bool(search.zero_output), bool(search.cross_modal))


OUR_RULES = DeriveRules()
PAPER_RULES = DeriveRules(distinct_steps=False, zero_output=True, cross_modal=False)


@dataclass(frozen=True)
class FeatureSpec:
    """An input feature: name, channels ``C_in`` and pooled length (1 for vectors, else L)."""

    name: str
    channels: int
    length: int


@dataclass(frozen=True)
class StepGene:
    """One step inside a Cell: an op applied to named inner states."""

    op: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class CellGene:
    """One Cell: its two inputs (upper level) and its steps (lower level)."""

    inputs: tuple[str, str]
    steps: tuple[StepGene, ...]
    concat: tuple[str, ...]


@dataclass(frozen=True)
class Genotype:
    """A discrete fusion architecture; build it with :class:`bmnas.space.found.FoundNet`."""

    C: int
    L: int
    features: tuple[FeatureSpec, ...]
    cells: tuple[CellGene, ...]
    output: tuple[str, ...]
    version: int = VERSION
    linear: tuple[str, ...] = ()  # features with a linear path to the logits (wide & deep)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def used_features(self) -> tuple[str, ...]:
        """Features read by some Cell or by the head, in feature order."""
        used = {i for c in self.cells for i in c.inputs} | set(self.output) | set(self.linear)
        return tuple(n for n in self.feature_names if n in used)

    def ops(self) -> tuple[str, ...]:
        return tuple(s.op for c in self.cells for s in c.steps)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": self.version,
            "C": self.C,
            "L": self.L,
            "features": [{"name": f.name, "channels": f.channels, "length": f.length} for f in self.features],
            "cells": [
                {
                    "inputs": list(c.inputs),
                    "steps": [{"op": s.op, "inputs": list(s.inputs)} for s in c.steps],
                    "concat": list(c.concat),
                }
                for c in self.cells
            ],
            "output": list(self.output),
            **({"linear": list(self.linear)} if self.linear else {}),
        }

    def with_linear(self, features: tuple[str, ...]) -> Genotype:
        """The same architecture with a linear path from ``features`` to the logits."""
        return dataclasses.replace(self, linear=tuple(features))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (:func:`bmnas.core.fileio.atomic_write`)."""
        return write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "genotype") -> Genotype:
        return from_dict(d, where)

    @classmethod
    def from_json(cls, text: str, where: str = "genotype") -> Genotype:
        _require(len(text) <= MAX_JSON_BYTES, where, f"{len(text)} characters is too large for a genotype")
        try:
            d = json.loads(text)
        except RecursionError:
            raise GenotypeError(f"{where}: nested too deeply to be a genotype") from None
        except ValueError as err:  # JSONDecodeError, or an integer of thousands of digits
            raise GenotypeError(f"{where}: not valid JSON ({err})") from None
        return from_dict(d, where)

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        path = Path(path)
        if not path.exists():
            raise GenotypeError(f"{path}: no such genotype file")
        if not path.is_file():
            raise GenotypeError(f"{path}: not a file; name a genotype.json")
        size = path.stat().st_size
        _require(size <= MAX_JSON_BYTES, str(path), f"{size} bytes is too large for a genotype")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise GenotypeError(f"{path}: not a text file; a genotype is JSON") from None
        except OSError as err:
            raise GenotypeError(f"{path}: cannot be read ({err.strerror})") from None
        return cls.from_json(text, where=str(path))

    def describe(self) -> str:
        """One line per Cell and one for the head, e.g.
        ``cell1: x=image.fc y=audio.fc | step1=sum(x, y) | out=LayerNorm(step1 + x)``.

        The output shows the Cell's residual: x always reaches the Cell output, so a Cell whose
        steps read only y still fuses both inputs.
        """
        lines = []
        for n, c in enumerate(self.cells, 1):
            steps = ", ".join(f"step{m}={s.op}({', '.join(s.inputs)})" for m, s in enumerate(c.steps, 1))
            body = c.concat[0] if len(c.concat) == 1 else f"conv1x1[{'; '.join(c.concat)}]"
            lines.append(f"cell{n}: x={c.inputs[0]} y={c.inputs[1]} | {steps} | out=LayerNorm({body} + x)")
        linear = f"linear({', '.join(self.linear)})" if self.linear else ""
        lines.append(f"head: {' + '.join(p for p in (' ++ '.join(self.output), linear) if p)}")
        return "\n".join(lines)


def _require(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise GenotypeError(f"{where}: {message}")


def validate(
    g: Genotype,
    known_ops: Collection[str] | None = None,
    arity: Mapping[str, int] | None = None,
    where: str = "genotype",
) -> None:
    """Check that every reference resolves; optionally that ops exist and get the right arity."""
    _require(
        g.version == VERSION,
        f"{where}.version",
        f"unsupported version {g.version}; this bmnas reads {VERSION}",
    )
    _require(
        isinstance(g.C, int) and 0 < g.C <= MAX_C,
        f"{where}.C",
        f"must be an integer in [1, {MAX_C}], got {g.C!r}",
    )
    _require(
        isinstance(g.L, int) and 0 < g.L <= MAX_L,
        f"{where}.L",
        f"must be an integer in [1, {MAX_L}], got {g.L!r}",
    )
    names = [f.name for f in g.features]
    _require(len(names) == len(set(names)), f"{where}.features", f"duplicate feature names in {names}")
    for i, f in enumerate(g.features):
        fw = f"{where}.features[{i}]"
        _require("." in f.name and not f.name.startswith(CELL_PREFIX), fw, f"bad feature name {f.name!r}")
        _require(
            0 < f.channels <= MAX_CHANNELS, fw, f"channels must be in [1, {MAX_CHANNELS}], got {f.channels}"
        )
        _require(f.length in (1, g.L), fw, f"length must be 1 or L={g.L}, got {f.length}")
    states = list(names)
    pairs: set[frozenset[str]] = set()
    for n, cell in enumerate(g.cells, 1):
        cw = f"{where}.cells[{n - 1}]"
        _require(
            len(cell.inputs) == 2, f"{cw}.inputs", f"a Cell takes exactly 2 inputs, got {list(cell.inputs)}"
        )
        for slot, name in zip(CELL_INPUTS, cell.inputs, strict=True):
            _require(
                name in states,
                f"{cw}.inputs",
                f"{slot}={name!r} is neither a feature nor an earlier Cell; available: {states}",
            )
        _require(
            cell.inputs[0] != cell.inputs[1],
            f"{cw}.inputs",
            f"the two inputs must differ, got {list(cell.inputs)}",
        )
        pair = frozenset(cell.inputs)
        _require(pair not in pairs, f"{cw}.inputs", f"pair {sorted(pair)} is already used by an earlier Cell")
        pairs.add(pair)
        _require(len(cell.steps) >= 1, f"{cw}.steps", "a Cell needs at least one step")
        inner = list(CELL_INPUTS)
        for m, step in enumerate(cell.steps, 1):
            sw = f"{cw}.steps[{m - 1}]"
            if known_ops is not None:
                _require(
                    step.op in known_ops,
                    f"{sw}.op",
                    f"unknown op {step.op!r}; registered ops: {sorted(known_ops)}",
                )
            if step.op == "zero":
                _require(len(step.inputs) == 0, f"{sw}.inputs", "a zero step takes no inputs")
            else:
                _require(len(step.inputs) >= 1, f"{sw}.inputs", f"op {step.op!r} needs inputs")
            if arity is not None and step.op in arity and step.op != "zero":
                _require(
                    len(step.inputs) == arity[step.op],
                    f"{sw}.inputs",
                    f"op {step.op!r} takes {arity[step.op]} inputs, got {list(step.inputs)}",
                )
            for name in step.inputs:
                _require(
                    name in inner,
                    f"{sw}.inputs",
                    f"{name!r} is not x, y or an earlier step; available: {inner}",
                )
            inner.append(f"step{m}")
        _require(len(cell.concat) >= 1, f"{cw}.concat", "must name at least one step")
        for name in cell.concat:
            _require(
                name in inner[2:], f"{cw}.concat", f"{name!r} is not a step of this Cell; steps: {inner[2:]}"
            )
        states.append(f"cell{n}")
    _require(
        len(g.output) >= 1 or (not g.cells and len(g.linear) >= 1),
        f"{where}.output",
        "the head needs at least one state (only a genotype without Cells may have none and a linear "
        "path alone: the linear probe)",
    )
    for name in g.output:
        _require(
            name in states,
            f"{where}.output",
            f"{name!r} is neither a feature nor a Cell; available: {states}",
        )
    names = [f.name for f in g.features]
    _require(len(set(g.linear)) == len(g.linear), f"{where}.linear", f"repeated features in {list(g.linear)}")
    for name in g.linear:
        _require(name in names, f"{where}.linear", f"{name!r} is not a feature; available: {names}")


def check_data(
    g: Genotype,
    channels: Mapping[str, int],
    lengths: Mapping[str, int],
    where: str = "genotype",
    arity: Mapping[str, int] | None = None,
) -> None:
    """Check that data with these feature ``channels`` and pooled ``lengths`` fits genotype ``g``.

    Every feature the genotype reads must be in the data with the genotype's channels and length
    (1 for a vector, else ``g.L``); otherwise the network would fail mid-run or read the wrong thing.
    With ``arity`` (op name -> inputs, every registered op), each step's op must be one of them.
    """
    if arity is not None:
        validate(g, known_ops=arity, arity=arity, where=where)
    used = set(g.used_features())
    for i, f in enumerate(g.features):
        if f.name not in used:
            continue
        fw = f"{where}.features[{i}] {f.name!r}"
        _require(
            f.name in channels,
            fw,
            f"the genotype reads it but the data has no such feature; data features: {sorted(channels)}",
        )
        c, n = channels[f.name], lengths[f.name]
        if (c, n) == (f.channels, f.length):
            continue
        hint = (
            f"pass --set model.L={g.L} to pool the data as the genotype expects"
            if c == f.channels and n > 1 and f.length > 1
            else "train the genotype on the data it was searched on, or search again on this data"
        )
        raise GenotypeError(
            f"{fw}: the genotype expects {f.channels} channels x {f.length} positions (L={g.L}) but the data "
            f"has {c} channels x {n} positions; {hint}"
        )


def _get(d: Mapping, key: str, where: str, kind: type | tuple[type, ...]):
    _require(isinstance(d, Mapping), where, f"expected an object, got {type(d).__name__}")
    _require(key in d, where, f"missing key {key!r}")
    value = d[key]
    _require(
        isinstance(value, kind) and not (kind is int and isinstance(value, bool)),
        f"{where}.{key}",
        f"expected {getattr(kind, '__name__', kind)}, got {value!r}",
    )
    return value


def _str_list(d: Mapping, key: str, where: str) -> tuple[str, ...]:
    values = _get(d, key, where, list)
    for i, v in enumerate(values):
        _require(isinstance(v, str), f"{where}.{key}[{i}]", f"expected a name, got {v!r}")
    return tuple(values)


def from_dict(d: Mapping, where: str = "genotype") -> Genotype:
    """Parse and validate a genotype dictionary (see the module docstring for the schema)."""
    _require(isinstance(d, Mapping), where, f"expected a JSON object, got {type(d).__name__}")
    _require(
        d.get("format", FORMAT) == FORMAT, f"{where}.format", f"expected {FORMAT!r}, got {d.get('format')!r}"
    )
    version = _get(d, "version", where, int)
    _require(
        version == VERSION, f"{where}.version", f"unsupported version {version}; this bmnas reads {VERSION}"
    )
    features = []
    for i, f in enumerate(_get(d, "features", where, list)):
        fw = f"{where}.features[{i}]"
        features.append(
            FeatureSpec(_get(f, "name", fw, str), _get(f, "channels", fw, int), _get(f, "length", fw, int))
        )
    cells = []
    cell_list = _get(d, "cells", where, list)
    _require(len(cell_list) <= MAX_CELLS, f"{where}.cells", f"at most {MAX_CELLS}, got {len(cell_list)}")
    for n, c in enumerate(cell_list):
        cw = f"{where}.cells[{n}]"
        steps = []
        step_list = _get(c, "steps", cw, list)
        _require(len(step_list) <= MAX_CELLS, f"{cw}.steps", f"at most {MAX_CELLS}, got {len(step_list)}")
        for m, s in enumerate(step_list):
            sw = f"{cw}.steps[{m}]"
            steps.append(StepGene(_get(s, "op", sw, str), _str_list(s, "inputs", sw)))
        inputs = _str_list(c, "inputs", cw)
        _require(len(inputs) == 2, f"{cw}.inputs", f"a Cell takes exactly 2 inputs, got {list(inputs)}")
        cells.append(CellGene(inputs, tuple(steps), _str_list(c, "concat", cw)))
    try:
        return Genotype(
            _get(d, "C", where, int),
            _get(d, "L", where, int),
            tuple(features),
            tuple(cells),
            _str_list(d, "output", where),
            version,
            _str_list(d, "linear", where) if "linear" in d else (),
        )
    except GenotypeError as err:
        raise GenotypeError(f"{where}: {err}") from None


# ----------------------------------------------------------------------------------------------
# Derivation (docs/DESIGN.md §3–§4)
# ----------------------------------------------------------------------------------------------


def last_feature(features: Sequence[FeatureSpec], modality: str) -> str:
    """The last feature of ``modality`` in feature order (its deepest layer)."""
    names = [f.name for f in features if f.name.split(".", 1)[0] == modality]
    if not names:
        raise ValueError(f"no feature of modality {modality!r} among {[f.name for f in features]}")
    return names[-1]


def modalities(features: Sequence[FeatureSpec]) -> list[str]:
    return list(dict.fromkeys(f.name.split(".", 1)[0] for f in features))
