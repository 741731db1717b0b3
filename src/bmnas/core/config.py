"""Typed, frozen configuration: defaults here, YAML files and ``key=value`` overrides on top.

``Config.from_sources(yaml_path, ["search.epochs=3", "model.C=32"])`` merges a YAML file and dotted
overrides; unknown keys and values of the wrong type are rejected with the list of valid keys.
The resolved config is saved in every run directory so a run can be rebuilt and resumed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import BmnasError
from .genotype import MAX_C, MAX_CELLS, MAX_L, DeriveRules
from .opnames import DEFAULT_OPS, known_ops

FLOAT32_MAX = 3.4028234663852886e38
MAX_SEED = 2**32 - 1
MAX_THREADS = 1024


class ConfigError(BmnasError, ValueError):
    """An invalid configuration key or value."""


def _doc(default: object, text: str):
    """A field with ``default`` and its one-line documentation (:func:`doc_of`; ``bmnas config``)."""
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class DataConfig:
    """Where features come from and what the labels mean."""

    dataset: str | None = _doc(None, 'a registered dataset name (e.g. "avmnist"), or dir, or table')
    dir: str | None = _doc(None, "a directory in the generic format (docs/DESIGN.md §12)")
    table: str | None = _doc(None, "a CSV/Parquet table, one row per sample (features/table.py)")
    label: str | None = _doc(None, "the table's label column")
    label_sep: str | None = _doc(None, 'splits a delimited multilabel column, e.g. "|"')
    modalities: tuple[str, ...] = _doc(
        (), '"name=col1,col2" / "name=prefix*" (default: every column, kind inferred)'
    )
    split_column: str = _doc("split", "a table column of train/val/test, used as given when present")
    split_shares: tuple[float, float] = _doc(
        (0.15, 0.15), "val, test shares carved from the table when a split is missing"
    )
    pooling: str = _doc("max", "parameter-free pooling of each raw feature to L positions: max | avg")
    task: str | None = _doc(None, "multiclass | multilabel | None (inferred from the labels)")
    num_outputs: int | None = _doc(None, "classes / labels (None: inferred)")
    threshold: float = _doc(0.5, "multilabel decision threshold")
    features: tuple[str, ...] = _doc((), "restrict to these features (default: all)")
    backbones: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "doc": "a table's backbones: modality name or kind (image, text) -> default | efficientnet-lite0 "
            "| minilm-l6 | hf:<hub name or directory> (pip install 'bmnas[hf]'), e.g. "
            "{image: hf:google/vit-base-patch16-224}"
        },
    )


@dataclass(frozen=True)
class ModelConfig:
    """Search space and sizes (docs/DESIGN.md §1–§6)."""

    C: int = _doc(64, "channels of every fused tensor (B, L, C)")
    L: int = _doc(8, "positions every feature is pooled to")
    cells: int = _doc(2, "Cells of the fusion network (N)")
    steps: int = _doc(2, "steps per Cell (M)")
    inner_multiplier: int = _doc(1, "last steps a Cell's output concatenates")
    multiplier: int = _doc(0, "last Cells read by the head; 0 = all")
    dropout: float = _doc(0.1, "dropout of the feature projections and the head")
    ops: tuple[str, ...] = _doc(
        DEFAULT_OPS, "the fusion ops a step chooses among (bmnas.ops.register_op adds more)"
    )
    input_mode: str = _doc("separate", "separate | shared (the authors' behaviour)")
    relaxation: str = _doc(
        "gate", "gate (paper: independent identity/zero gates) | softmax (predecessors compete)"
    )
    linear_skip: bool = _doc(True, "trained networks get a linear path from each modality's last feature")
    linear_init: str = _doc(
        "auto",
        "probe (the linear path starts as the fitted probe) | random | auto: probe when every feature "
        "is a vector (precomputed views), random otherwise",
    )


@dataclass(frozen=True)
class _WeightTraining:
    """Weight training, the same knobs in the search and in the evaluation stage."""

    epochs: int = _doc(30, "training epochs")
    batch_size: int = _doc(96, "rows per training batch")
    lr: float = _doc(1e-3, "Adam's learning rate of the weights (start of each cosine period)")
    lr_min: float = _doc(1e-6, "learning rate at the end of each cosine period")
    weight_decay: float = _doc(1e-4, "Adam's weight decay of the weights")
    restart_epochs: int = _doc(1, "first period of the cosine schedule with warm restarts")
    restart_mult: int = _doc(2, "each cosine period is this many times longer than the one before")
    eval_batch_size: int = _doc(1024, "rows per evaluation batch")
    modality_dropout: float = _doc(
        0.0, "per sample, drop each whole modality with this probability (keep >= 1)"
    )


@dataclass(frozen=True)
class SearchConfig(_WeightTraining):
    """Bilevel search (docs/DESIGN.md §7 Search)."""

    epochs: int = _doc(12, "search epochs (a weight step and an α/β/γ step per batch)")
    arch_lr: float | str = _doc(
        3e-4, "Adam's learning rate of α, β, γ, or 'auto': set from the number of architecture steps"
    )
    select: str = _doc(
        "alpha", "the Cells' inputs: alpha (argmax of α) | perturb (by the loss when each edge is removed)"
    )
    select_tune_steps: int = _doc(
        0, "search.select=perturb, progressive: weight steps after each Cell's inputs are fixed"
    )
    select_ops: bool = _doc(
        False, "search.select=perturb: also each step's op by the loss when it is removed"
    )
    arch_betas: tuple[float, float] = _doc((0.5, 0.999), "Adam's betas of α, β, γ")
    arch_weight_decay: float = _doc(1e-3, "Adam's weight decay of α, β, γ")
    warmup_epochs: int = _doc(0, "epochs of weight steps only before α, β, γ start to move")
    arch_split: float = _doc(
        0.0, "share of train held out for the α/β/γ steps (0: they use val, as the paper)"
    )
    distinct_steps: bool = _doc(
        DeriveRules.distinct_steps, "derivation: a two-input step reads two different states (paper: False)"
    )
    zero_output: bool = _doc(
        DeriveRules.zero_output, "derivation: may a Cell's output step derive `zero` (paper: True)"
    )
    cross_modal: bool = _doc(
        DeriveRules.cross_modal,
        "derivation: a Cell never reads two features of one modality, as MFAS (paper: False)",
    )
    rerank: int = _doc(8, "candidates trained and compared on val (0: the best hypernet epoch, as the paper)")
    rerank_epochs: int = _doc(0, "training epochs of each candidate (0: train.epochs)")


AUTO = "auto"
SELECT_MODES = ("alpha", "perturb")
# search.arch_lr=auto: the architecture "travel" lr × steps of the AV-MNIST preset (3e-3 × ~800
# architecture steps), where α, β, γ were measured to leave their initialisation
ARCH_TRAVEL = 2.4
ARCH_LR_RANGE = (3e-4, 3e-2)  # clip: the paper's rate, and 10x the preset's


def auto_arch_lr(
    arch_steps: int, travel: float = ARCH_TRAVEL, bounds: tuple[float, float] = ARCH_LR_RANGE
) -> float:
    """The architecture learning rate of ``search.arch_lr=auto`` for ``arch_steps`` architecture steps.

    ``arch_lr = clip(travel / arch_steps, lo, hi)``, ``arch_steps = (epochs − warmup_epochs) ×
    batches_per_epoch``: the total travel ``arch_lr × arch_steps`` is the same whatever the data's
    size (Adam's step is about ``lr`` per step whatever the gradient's scale), so a search with few
    steps per epoch still moves α, β, γ as far as the AV-MNIST preset's (3e-3 over ~800 steps).
    """
    lo, hi = bounds
    return float(min(hi, max(lo, travel / max(1, arch_steps))))


def arch_lr_of(search: SearchConfig, batches_per_epoch: int) -> float:
    """``search.arch_lr`` as a number: the configured one, or :func:`auto_arch_lr` of the steps it makes."""
    if isinstance(search.arch_lr, str):
        return auto_arch_lr((search.epochs - search.warmup_epochs) * batches_per_epoch)
    return float(search.arch_lr)


@dataclass(frozen=True)
class TrainConfig(_WeightTraining):
    """Evaluation stage (docs/DESIGN.md §8): the found network on train + val."""

    select_epochs: bool = _doc(
        True, "choose the epoch count on val (trained on train), then refit on train + val"
    )
    select_folds: int = _doc(
        3, "k >= 2: score networks and choose epochs by k-fold CV over train + val; 0: on val"
    )
    batched_folds: bool = _doc(
        False, "the k folds train as one stacked model (engine/batched.py); measured: no gain on CPU"
    )


@dataclass(frozen=True)
class Config:
    seed: int = _doc(0, "seed of every random draw (weights, batches, folds, dropout)")
    threads: int = _doc(0, "torch threads; 0 = bmnas' policy (bmnas.engine.device.choose_threads)")
    workers: int = _doc(
        0,
        "processes training independent networks side by side (folds, re-ranking candidates, "
        "baselines), one thread each; 0 = auto (the idle cores, when the jobs are big enough); "
        "1 = one at a time",
    )
    device: str = _doc(
        "auto", "auto (with a GPU: the faster of cuda and cpu per phase, timed) | cpu | cuda | cuda:N"
    )
    precision: str = _doc("fp32", "fp32 | bf16 (autocast of forward passes)")
    cuda_graphs: str = _doc(
        "auto",
        "auto (on for CUDA) | on | off: training steps and eval forwards as CUDA graphs (engine/graphs.py)",
    )
    deterministic: bool = _doc(
        False, "deterministic CUDA kernels (exact resume on a GPU; CUBLAS_WORKSPACE_CONFIG=:4096:8)"
    )
    data: DataConfig = field(
        default_factory=DataConfig, metadata={"doc": "where features come from and what the labels mean"}
    )
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "search space and sizes"})
    search: SearchConfig = field(default_factory=SearchConfig, metadata={"doc": "bilevel search"})
    train: TrainConfig = field(
        default_factory=TrainConfig, metadata={"doc": "evaluation stage: the found network on train + val"}
    )

    def to_dict(self) -> dict:
        def plain(v):
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_commented_yaml(self) -> str:
        """:meth:`to_yaml` with each key's documentation (:func:`doc_of`) as a comment line above it
        (``bmnas config``); it reads back to the same configuration."""
        return "\n".join(_commented(self, "")) + "\n"

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> Config:
        return _build(cls, d or {}, where)

    @classmethod
    def from_sources(
        cls, path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None
    ) -> Config:
        """Defaults, then ``base`` (e.g. a dataset preset), then the YAML file, then ``key=value``s."""
        d: dict = _deep_copy(base or {})
        if path is not None:
            path = Path(path)
            loaded = _read_yaml(path)
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: the top level must be a mapping of sections")
            _deep_merge(d, loaded)
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"override {item!r} must look like key=value, e.g. search.epochs=3")
            value = _parse_value(value, f"override {_short(item)}")
            set_dotted(d, key.strip(), value, where=f"override {item!r}")
        return cls.from_dict(d, where=str(path) if path else "config")

    def replace(self, **sections) -> Config:
        return dataclasses.replace(self, **sections)


def doc_of(cls: type, name: str) -> str:
    """The one-line documentation of field ``name`` of the config dataclass ``cls`` ("" if none)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return fields[name].metadata.get("doc", "") if name in fields else ""


def _commented(section: object, indent: str) -> list[str]:
    """YAML lines of ``section`` (a config dataclass), a ``# doc`` line above each key."""
    lines = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        lines.append(f"{indent}# {f.metadata.get('doc', '')}".rstrip())
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:")
            lines += _commented(value, indent + "  ")
        else:
            plain = list(value) if isinstance(value, tuple) else value
            text = yaml.safe_dump({f.name: plain}, default_flow_style=True, width=10_000, allow_unicode=True)
            lines.append(indent + text.strip().removeprefix("{").removesuffix("}"))
    return lines


def did_you_mean(name: str, valid: typing.Iterable[str]) -> str:
    """``" (did you mean 'epochs'?)"`` for the valid name closest to a misspelt ``name``, else ""."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def set_dotted(d: dict, key: str, value: object, where: str, create: bool = True) -> None:
    """``d[a][b][c] = value`` for ``key = "a.b.c"``, in place.

    ``create``: a missing section is added (overrides onto a partial dict, checked later by
    :meth:`Config.from_dict`); else every section and the leaf must already be there (values set
    onto a whole ``Config.to_dict()``). ``where`` starts the error message.

    Raises:
        ConfigError: a part of ``key`` before the last is not a section (or, without ``create``,
            missing), or without ``create`` the last part is not a key of its section.
    """
    node = d
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {}) if create else node.get(p)
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {p!r} is not a config section")
    if not create and leaf not in node:
        raise ConfigError(f"{where}: unknown config key")
    node[leaf] = value


def _read_yaml(path: Path) -> object:
    """The YAML document in ``path`` ({} when empty); a missing, unreadable or bad file is a ConfigError."""
    if not path.exists():
        raise ConfigError(f"--config {path}: no such file")
    if not path.is_file():
        raise ConfigError(f"--config {path}: not a file; name a YAML configuration file")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"--config {path}: {size} bytes is too large for a configuration (at most "
                f"{MAX_CONFIG_BYTES >> 10} KiB); name a YAML configuration file"
            )
        loaded = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot be read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a text file; name a YAML configuration file") from None
    except RecursionError:
        raise ConfigError(f"--config {path}: nested too deeply to be a configuration") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: invalid YAML ({' '.join(str(err).split())[:200]})") from None
    check_size(loaded, f"--config {path}")
    return loaded


MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000  # values after YAML aliases are expanded (a config has about 60)
MAX_CONFIG_DEPTH = 32


def check_size(value: object, where: str) -> None:
    """Refuse a document whose aliases expand to a bomb, or that nests deeper than any config.

    Counts the values a full walk would visit (an alias counts again each time it is used) and
    stops at :data:`MAX_CONFIG_VALUES`: the walk costs at most that many steps, whatever the file.
    """
    seen, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES or depth > MAX_CONFIG_DEPTH:
            what = "nested too deeply" if depth > MAX_CONFIG_DEPTH else "too large (aliases expand it)"
            raise ConfigError(f"{where}: {what} to be a configuration; write the values out plainly")
        if isinstance(node, dict):
            stack += [(v, depth + 1) for v in node.values()]
            stack += [(k, depth + 1) for k in node if isinstance(k, (tuple, list, dict))]
        elif isinstance(node, (list, tuple)):
            stack += [(v, depth + 1) for v in node]


def _short(text: str, limit: int = 80) -> str:
    """``repr(text)``, cut to ``limit`` characters for an error message."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


_BRIEF = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_BRIEF.maxlevel, _BRIEF.maxdict, _BRIEF.maxlist, _BRIEF.maxtuple = 3, 6, 6, 6
_BRIEF.maxstring = _BRIEF.maxother = 60


def _brief(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters *before* it is built whole.

    (A few hundred bytes of YAML aliases expand to a value whose full repr has 10^9 characters.)
    """
    text = _BRIEF.repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _parse_value(value: str, where: str) -> object:
    """A ``key=value`` override's value as YAML (an empty value is null)."""
    if not value.strip():
        return None
    try:
        parsed = yaml.safe_load(value)
    except RecursionError:
        raise ConfigError(f"{where}: the value is nested too deeply") from None
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"{where}: the value is not valid YAML ({first[:200]})") from None
    check_size(parsed, where)
    return parsed


def _deep_copy(d: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


def _deep_merge(into: dict, other: dict) -> dict:
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = v
    return into


def preset(name: str) -> dict:
    """The packaged default configuration of dataset ``name`` (``bmnas/presets/<name>.yaml``), or {}."""
    from importlib import resources

    file = resources.files("bmnas").joinpath("presets", f"{name}.yaml")
    return (yaml.safe_load(file.read_text()) or {}) if file.is_file() else {}


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {_brief(value)}")
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping (key: value), got {_brief(value)}")
        return {_coerce(args[0], k, where): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value] if isinstance(value, str) else value
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_brief(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {_brief(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is float and not isinstance(value, bool):
        return _finite_float(value, where)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is str and isinstance(value, bool) and where == "cuda_graphs":  # YAML reads on/off as booleans
        return "on" if value else "off"
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {_brief(value)}")


def _finite_float(value: object, where: str) -> float:
    """``value`` as a float that float32 holds: NaN, inf and 1e300 are refused, not rounded to inf."""
    if isinstance(value, (int, float)):
        number = float(value) if abs(value) <= FLOAT32_MAX else math.inf
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected float, got {_brief(value)}") from None
    else:
        raise ConfigError(f"{where}: expected float, got {_brief(value)}")
    if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
        raise ConfigError(
            f"{where}: must be a finite number of at most {FLOAT32_MAX:.1e} in size, got {_brief(value)}"
        )
    return number


def _build(cls, d: dict, where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields), key=str)
    if unknown:
        hint = did_you_mean(str(unknown[0]), fields)
        raise ConfigError(f"{where}: unknown key(s) {unknown}{hint}; valid keys: {sorted(fields)}")
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        key = f"{where}.{name}" if where != "config" else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, key)
        else:
            kwargs[name] = _coerce(tp, value, key)
    cfg = cls(**kwargs)
    _check(cfg)
    return cfg


def _check(cfg) -> None:
    """Value checks beyond types."""

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key}: {msg}")

    if isinstance(cfg, ModelConfig):
        for k in ("C", "L", "cells", "steps", "inner_multiplier"):
            need(getattr(cfg, k) >= 1, f"model.{k}", f"must be >= 1, got {getattr(cfg, k)}")
        need(cfg.C <= MAX_C, "model.C", f"must be <= {MAX_C}, got {cfg.C}")
        need(cfg.L <= MAX_L, "model.L", f"must be <= {MAX_L}, got {cfg.L}")
        for k in ("cells", "steps"):
            need(getattr(cfg, k) <= MAX_CELLS, f"model.{k}", f"must be <= {MAX_CELLS}, got {getattr(cfg, k)}")
        need(cfg.inner_multiplier <= cfg.steps, "model.inner_multiplier", f"must be <= steps ({cfg.steps})")
        need(0 <= cfg.multiplier <= cfg.cells, "model.multiplier", f"must be in [0, cells={cfg.cells}]")
        need(0.0 <= cfg.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {cfg.dropout}")
        need(cfg.input_mode in ("separate", "shared"), "model.input_mode", "must be 'separate' or 'shared'")
        need(cfg.relaxation in ("gate", "softmax"), "model.relaxation", "must be 'gate' or 'softmax'")
        need(
            cfg.linear_init in ("auto", "random", "probe"),
            "model.linear_init",
            "must be 'auto', 'random' or 'probe'",
        )
        need(
            len(cfg.ops) >= 1 and len(set(cfg.ops)) == len(cfg.ops),
            "model.ops",
            f"need distinct ops, got {cfg.ops}",
        )
        need(any(o != "zero" for o in cfg.ops), "model.ops", "needs at least one op besides 'zero'")
        known = known_ops()
        unknown = [o for o in cfg.ops if o not in known]
        need(not unknown, "model.ops", f"unknown op {', '.join(map(repr, unknown))}; registered ops: {known}")
    if isinstance(cfg, _WeightTraining):
        section = "search" if isinstance(cfg, SearchConfig) else "train"
        for k in ("epochs", "restart_epochs", "restart_mult", "eval_batch_size"):
            need(getattr(cfg, k) >= 1, f"{section}.{k}", f"must be >= 1, got {getattr(cfg, k)}")
        need(
            cfg.batch_size >= 2,
            f"{section}.batch_size",
            f"must be >= 2 (BatchNorm needs two rows per training batch), got {cfg.batch_size}",
        )
        need(cfg.lr > 0 and 0 <= cfg.lr_min <= cfg.lr, f"{section}.lr", "need lr > 0 and 0 <= lr_min <= lr")
        need(
            0.0 <= cfg.modality_dropout < 1.0,
            f"{section}.modality_dropout",
            f"must be in [0, 1), got {cfg.modality_dropout}",
        )
        need(cfg.weight_decay >= 0, f"{section}.weight_decay", f"must be >= 0, got {cfg.weight_decay}")
    if isinstance(cfg, TrainConfig):
        need(
            cfg.select_folds == 0 or 2 <= cfg.select_folds <= 10,
            "train.select_folds",
            f"must be 0 (score on val) or 2..10 folds, got {cfg.select_folds}",
        )
    if isinstance(cfg, SearchConfig):
        if isinstance(cfg.arch_lr, str):
            need(
                cfg.arch_lr == AUTO,
                "search.arch_lr",
                f"must be a number > 0 or {AUTO!r} (set from the number of architecture steps), "
                f"got {_brief(cfg.arch_lr)}",
            )
        else:
            need(cfg.arch_lr > 0, "search.arch_lr", f"must be > 0, got {cfg.arch_lr}")
        need(
            cfg.select in SELECT_MODES,
            "search.select",
            f"must be one of {', '.join(SELECT_MODES)}, got {_brief(cfg.select)}",
        )
        need(
            cfg.select_tune_steps >= 0,
            "search.select_tune_steps",
            f"must be >= 0 (weight steps after each Cell's inputs are fixed), got {cfg.select_tune_steps}",
        )
        need(
            cfg.select_tune_steps == 0 or cfg.select == "perturb",
            "search.select_tune_steps",
            "only applies with search.select=perturb; set both or leave it 0",
        )
        need(
            not cfg.select_ops or cfg.select == "perturb",
            "search.select_ops",
            "only applies with search.select=perturb; set both or leave it false",
        )
        need(
            cfg.arch_weight_decay >= 0,
            "search.arch_weight_decay",
            f"must be >= 0, got {cfg.arch_weight_decay}",
        )
        need(
            all(0.0 <= b < 1.0 for b in cfg.arch_betas),
            "search.arch_betas",
            f"Adam's betas must be in [0, 1), got {list(cfg.arch_betas)}",
        )
    if isinstance(cfg, SearchConfig):
        for k in ("warmup_epochs", "rerank", "rerank_epochs"):
            need(getattr(cfg, k) >= 0, f"search.{k}", f"must be >= 0, got {getattr(cfg, k)}")
        need(
            cfg.warmup_epochs < cfg.epochs, "search.warmup_epochs", f"must be < search.epochs ({cfg.epochs})"
        )
        need(0.0 <= cfg.arch_split < 1.0, "search.arch_split", f"must be in [0, 1), got {cfg.arch_split}")
    if isinstance(cfg, DataConfig):
        need(cfg.pooling in ("max", "avg"), "data.pooling", f"must be 'max' or 'avg', got {cfg.pooling!r}")
        need(
            cfg.task in (None, "multiclass", "multilabel"),
            "data.task",
            "must be multiclass, multilabel or null",
        )
        need(0.0 < cfg.threshold < 1.0, "data.threshold", f"must be in (0, 1), got {cfg.threshold}")
        need(
            all(0.0 < v < 1.0 for v in cfg.split_shares) and sum(cfg.split_shares) < 1.0,
            "data.split_shares",
            f"val and test shares must each be in (0, 1) and sum below 1, got {list(cfg.split_shares)}",
        )
        need(cfg.label_sep is None or cfg.label_sep != "", "data.label_sep", "must be a non-empty string")
        for key, spec in cfg.backbones.items():
            need(
                re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key) is not None,
                f"data.backbones.{key}",
                "keys are modality names or kinds (image, text): letters, digits, '_' and '-'",
            )
            need(
                bool(spec.strip()),
                f"data.backbones.{key}",
                "must name a backbone: default | efficientnet-lite0 | minilm-l6 | hf:<hub name or directory>",
            )
        need(
            cfg.num_outputs is None or cfg.num_outputs >= 1,
            "data.num_outputs",
            f"must be >= 1, or null to infer it from the labels; got {cfg.num_outputs}",
        )
    if isinstance(cfg, Config):
        need(0 <= cfg.seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}], got {cfg.seed}")
        need(
            0 <= cfg.threads <= MAX_THREADS,
            "threads",
            f"must be in [0, {MAX_THREADS}] (0: bmnas' thread policy), got {cfg.threads}",
        )
        need(
            0 <= cfg.workers <= MAX_THREADS,
            "workers",
            f"must be in [0, {MAX_THREADS}] (0: auto, 1: one network at a time), got {cfg.workers}",
        )
        need(
            cfg.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", cfg.device) is not None,
            "device",
            f"must be auto, cpu, cuda or cuda:N, got {cfg.device!r}",
        )
        need(
            cfg.precision in ("fp32", "bf16"),
            "precision",
            f"must be fp32 or bf16, got {cfg.precision!r}",
        )
        need(
            cfg.cuda_graphs in ("auto", "on", "off"),
            "cuda_graphs",
            f"must be auto, on or off, got {cfg.cuda_graphs!r}",
        )
