"""``bmnas sweep``: an Optuna study over the search configuration, shared by any number of workers.

The paper tuned N (Cells), M (steps), C, L and the learning rates per dataset and kept the setting
whose search scored best on val (Table 8, Fig. 8). A trial here is one :func:`bmnas.method.search.search`
with a sampled configuration, in its own run directory ``OUT/trials/<number>``; its objective is the
search's own val score of the genotype it returns: the chosen candidate's val score when the search
re-ranks (``search.rerank > 0``), else the hypernet's best val score. The test split never takes part.

The study lives in ``OUT/study.db`` (SQLite) or any database URL Optuna accepts (``--storage``);
every worker pointed at the same storage and study name joins the same study, and ``--trials N``
asks for N complete trials in the study as a whole, so rerunning the command after a kill finishes
the sweep. A trial whose process died is marked failed (at once when its run directory's lock is
free, else when its heartbeat is older than :data:`GRACE_SECONDS`) and is not counted.
Trials still running when the N-th completes also finish, so a study with several workers may end
a few trials over N.

Layout::

    OUT/study.db           the study (default storage)
    OUT/trials/<number>/   one search run directory per trial (config.yaml, genotype.json, ...)
    OUT/best_config.yaml   configuration of the best trial (``bmnas run --config`` takes it)
    OUT/genotype.json      genotype of the best trial
    OUT/trials.csv         one row per trial: state, objective, parameters, where the genotype came from
    OUT/sweep.png          objective per trial and the best so far
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..core import locks
from ..core.config import Config, ConfigError, set_dotted
from ..core.data import FeatureData
from ..core.errors import BmnasError
from ..core.fileio import write_text_atomic
from ..core.genotype import Genotype
from ..engine import owned
from ..engine.rundir import RunDir, _diff
from ..features.validate import fingerprint
from ..method.run import fit_config_to_data
from ..method.search import search
from ..report import tables
from ..report.study_plots import trials_chart
from ..report.summary import score_name

log = logging.getLogger(__name__)

SPACE: dict[str, dict] = {
    "model.cells": {"choices": [1, 2, 3]},  # N
    "model.steps": {"choices": [1, 2, 3]},  # M
    "model.C": {"choices": [16, 32, 64, 128]},
    "model.L": {"choices": [4, 8, 16]},  # left out when every feature is a vector (L = 1)
    "search.lr": {"low": 3e-4, "high": 3e-3, "log": True},
    "search.arch_lr": {"low": 3e-4, "high": 1e-2, "log": True},
    "model.dropout": {"low": 0.0, "high": 0.3},
}
"""The default search space (paper Table 8's knobs): a list of ``choices``, or a ``low``/``high``
float range (``log: true`` samples it log-uniformly). ``--space FILE.yaml`` replaces it."""

HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 180
MAX_CHECKED = 20_000  # configurations checked before the sweep starts (every combination below this)
# Config keys whose difference between workers does not change what a trial computes.
_LOCAL_KEYS = ("threads", "device", "precision")


class SweepError(BmnasError, RuntimeError):
    """A sweep that cannot run as asked (optuna missing, a study of another configuration)."""


@dataclass
class SweepResult:
    """The study's best trial and every trial's row (``trials.csv``)."""

    best_number: int
    best_value: float
    best_config: Config
    genotype: Genotype
    rows: list[dict]
    paths: dict[str, Path]
    space: dict[str, dict]
    scored_by: str = "val"  # how the best trial's value was scored (report.summary.score_name)


def import_optuna():
    """``optuna``, or a :class:`SweepError` saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise SweepError(
            "bmnas sweep needs optuna: pip install 'bmnas[sweep]' (or pip install optuna)"
        ) from None
    return optuna


# ------------------------------------------------------------------------------------ the space
def load_space(path: str | Path) -> dict[str, dict]:
    """A search space from YAML: ``key: [choices]`` or ``key: {low: .., high: .., log: bool}``."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"--space {path}: cannot be read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--space {path}: invalid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"--space {path}: expected a mapping of config keys, e.g. 'model.C: [16, 32]'")
    return {str(k): ({"choices": v} if isinstance(v, list) else v) for k, v in raw.items()}


def check_space(space: Mapping[str, dict], base: Config, where: str = "space") -> None:
    """Refuse a space with a malformed entry or a combination the configuration would reject.

    Every combination of the ``choices`` (up to :data:`MAX_CHECKED`) is built with every float
    range at its low end and at its high end, so that e.g. ``model.inner_multiplier <= steps``
    fails here, naming the combination, rather than in the middle of a sweep.
    """
    if not space:
        raise ConfigError(f"{where}: empty; give at least one key to vary")
    grids = []
    for key, spec in space.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: {key}: expected [choices] or {{low, high, log}}, got {spec!r}")
        if "choices" in spec:
            if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ConfigError(f"{where}: {key}: 'choices' must be a non-empty list and stand alone")
            grids.append([(key, c) for c in spec["choices"]])
        else:
            low, high = spec.get("low"), spec.get("high")
            if set(spec) - {"low", "high", "log"} or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)
            ):
                raise ConfigError(f"{where}: {key}: a range needs numbers low and high (and optional log)")
            if not low < high or (spec.get("log") and low <= 0):
                raise ConfigError(f"{where}: {key}: need low < high (and low > 0 with log), got {spec}")
    ranges = [k for k, s in space.items() if "choices" not in s]
    for i, combo in enumerate(itertools.product(*grids)):
        if i >= MAX_CHECKED:
            break
        for end in ("low", "high"):
            params = {**dict(combo), **{k: float(space[k][end]) for k in ranges}}
            try:
                apply_params(base, params)
            except ConfigError as err:
                raise ConfigError(f"{where}: the combination {params} is invalid: {err}") from None


def space_for(data: FeatureData, space: Mapping[str, dict]) -> dict[str, dict]:
    """``space`` without ``model.L`` when every feature is a vector (L is then 1, nothing to tune)."""
    if data.feature_lengths and all(n == 1 for n in data.feature_lengths.values()):
        return {k: v for k, v in space.items() if k != "model.L"}
    return dict(space)


def apply_params(base: Config, params: Mapping[str, object]) -> Config:
    """``base`` with dotted ``params`` set, checked like any configuration."""
    d = base.to_dict()
    for key, value in params.items():
        set_dotted(d, key, value, where=key, create=False)
    return Config.from_dict(d)


def suggest(trial, space: Mapping[str, dict]) -> dict:
    """The trial's sampled value of every key of ``space``."""
    out = {}
    for key, spec in space.items():
        if "choices" in spec:
            out[key] = trial.suggest_categorical(key, spec["choices"])
        else:
            out[key] = trial.suggest_float(key, spec["low"], spec["high"], log=bool(spec.get("log")))
    return out


# ------------------------------------------------------------------------------------ the study
def _comparable(cfg: Config) -> dict:
    d = cfg.to_dict()
    for key in _LOCAL_KEYS:
        d.pop(key, None)
    d["data"] = {k: v for k, v in d["data"].items() if k not in ("dir", "dataset")}  # paths differ by machine
    return d


def open_study(optuna, storage: str, name: str, cfg: Config, space: dict, data_fp: dict, lock: Path):
    """Create or join the study; refuse one made with another configuration, space or data.

    Workers that start together would race to create the storage's tables: those sharing ``lock``
    take turns, the others retry.
    """
    import sqlalchemy

    with locks.locked(lock):
        for attempt in range(3):
            try:
                study = _create_study(optuna, storage, name)
                break
            except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:
                if attempt == 2 or isinstance(err, (ImportError, sqlalchemy.exc.ArgumentError)):
                    first = " ".join(str(err).split())[:300]
                    raise SweepError(f"--storage {storage}: cannot open the study ({first})") from None
                time.sleep(1.0 + attempt)
        return _check_study(optuna, study, storage, name, cfg, space, data_fp)


def _create_study(optuna, storage: str, name: str):
    with warnings.catch_warnings():  # the heartbeat is "experimental" in optuna's words
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(
            storage,
            # several workers on one SQLite file wait for each other's writes instead of failing
            engine_kwargs={"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
        )
    return optuna.create_study(storage=rdb, study_name=name, direction="maximize", load_if_exists=True)


def _check_study(optuna, study, storage: str, name: str, cfg: Config, space: dict, data_fp: dict):
    spec = json.loads(json.dumps({"config": _comparable(cfg), "space": space, "data": data_fp}))
    then = {k: study.user_attrs[k] for k in spec if k in study.user_attrs}
    if not then:
        for k, v in spec.items():
            study.set_user_attr(k, v)
    elif then != spec:
        changes = _diff(then, spec)
        raise SweepError(
            f"study {name!r} in {storage} was made with another configuration, space or data "
            f"({'; '.join(changes[:4])}); use the same settings to join it, or another --study"
        )
    # one seed per worker start (counted in the study): a lone sweep is reproducible, and workers
    # started together do not draw the same first trials
    starts = int(study.user_attrs.get("worker_starts", 0))
    study.set_user_attr("worker_starts", starts + 1)
    study.sampler = optuna.samplers.TPESampler(seed=(cfg.seed + starts) % 2**32)
    return study


def fail_orphans(optuna, study, out: Path) -> list[int]:
    """Mark failed the running trials whose run directory here is no longer locked (process dead)."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        lock = out / "trials" / str(t.number) / ".lock"
        if not lock.exists() or not locks.try_lock(lock):
            continue  # another machine's trial, or one still running
        locks.release(lock)
        try:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker got there first
    return failed


def objective_value(result) -> tuple[float, str, str]:
    """The search's score of the genotype it returned, where that genotype came from, and how the
    score was measured: a re-ranked candidate's ``val`` or ``k-fold CV (train + val)``
    (:func:`~bmnas.report.summary.score_name`), else the hypernet's ``val`` at its best epoch."""
    chosen = result.genotype.to_dict()
    for c in result.candidates:
        if c["genotype"] == chosen:
            return float(c["val"]), c["source"], score_name(int(c.get("folds", 0)))
    return float(result.best_score), f"hypernet best epoch {result.best_epoch}", "hypernet val"


# ------------------------------------------------------------------------------------ the sweep
def sweep(
    load: FeatureData | Callable[[int], FeatureData],
    cfg: Config,
    out: str | Path,
    trials: int,
    storage: str | None = None,
    study_name: str = "bmnas",
    space: Mapping[str, dict] | None = None,
    progress: bool = True,
) -> SweepResult:
    """Run trials until the study holds ``trials`` complete ones; write the best config and genotype.

    Args:
        load: the features, or a function ``L -> FeatureData`` pooled to L positions (needed when
            the space varies ``model.L`` and some feature is not a vector).
        cfg: the base configuration every trial starts from (already fitted to the data).
        storage: an Optuna database URL (default ``sqlite:///OUT/study.db``).
    """
    optuna = import_optuna()

    out = Path(out)
    owned.claim(out)  # a new, empty or bmnas directory: a user's files are never written over
    (out / "trials").mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    cache: dict[int, FeatureData] = {}

    def data_for(L: int) -> FeatureData:
        if not callable(load):
            return load
        if L not in cache:
            cache[L] = load(L)
        return cache[L]

    base_data = data_for(cfg.model.L)
    space = space_for(base_data, SPACE if space is None else space)
    if not callable(load) and "model.L" in space:
        raise ConfigError("the space varies model.L: pass a function L -> features pooled to L positions")
    check_space(space, cfg)
    study = open_study(optuna, storage, study_name, cfg, space, fingerprint(base_data), out / ".sweep.lock")
    if orphans := fail_orphans(optuna, study, out):
        log.warning("sweep: trials %s were killed; marked failed", orphans)
    complete = optuna.trial.TrialState.COMPLETE

    def objective(trial) -> float:

        params = suggest(trial, space)
        trial_cfg = apply_params(cfg, params)
        data = data_for(trial_cfg.model.L)
        trial_cfg = fit_config_to_data(trial_cfg, data)
        run = RunDir(out / "trials" / str(trial.number))
        run.open(trial_cfg, fingerprint(data))
        try:
            t0 = time.perf_counter()
            result = search(data, trial_cfg, run, progress=progress)
            value, source, scored_by = objective_value(result)
        finally:
            locks.release(run.lock_path)
        trial.set_user_attr("config", trial_cfg.to_dict())
        trial.set_user_attr("genotype", result.genotype.to_dict())
        trial.set_user_attr("source", source)
        trial.set_user_attr("scored_by", scored_by)
        trial.set_user_attr("metric", result.metric)
        trial.set_user_attr("hypernet_val", float(result.best_score))
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        log.info(
            "sweep trial %d: %s %s %.4f (%s) %s",
            trial.number,
            scored_by,
            result.metric,
            value,
            source,
            params,
        )
        return value

    done = len(study.get_trials(deepcopy=False, states=(complete,)))
    if done < trials:
        log.info("sweep: %d of %d trials complete in study %r (%s)", done, trials, study_name, storage)
        study.optimize(
            objective,
            n_trials=trials - done,
            callbacks=[optuna.study.MaxTrialsCallback(trials, states=(complete,))],
        )
    return write_outputs(optuna, study, out, space)


def trial_rows(optuna, study, space: Mapping[str, dict]) -> list[dict]:
    """One row per trial: number, state, objective, parameters, genotype source, seconds."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
                **{k: t.params.get(k) for k in space},
                "metric": t.user_attrs.get("metric"),
                "source": t.user_attrs.get("source"),
                "hypernet_val": t.user_attrs.get("hypernet_val"),
                "seconds": t.user_attrs.get("seconds"),
            }
        )
    return rows


def write_outputs(optuna, study, out: Path, space: Mapping[str, dict]) -> SweepResult:
    """``best_config.yaml``, ``genotype.json``, ``trials.csv`` and ``sweep.png`` of the study."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise SweepError(f"study {study.study_name!r} has no complete trial yet")
    best = study.best_trial
    best_cfg = Config.from_dict(best.user_attrs["config"])
    genotype = Genotype.from_dict(best.user_attrs["genotype"])
    text = best_cfg.to_yaml()
    write_text_atomic(out / "best_config.yaml", text)
    genotype.save(out / "genotype.json")
    rows = trial_rows(optuna, study, space)
    header = list(rows[0])
    tables.write_csv(out / "trials.csv", header, [[r[k] for k in header] for r in rows])
    paths = {
        "best_config": out / "best_config.yaml",
        "genotype": out / "genotype.json",
        "trials": out / "trials.csv",
        "plot": plot_trials(rows, out / "sweep.png"),
    }
    scored_by = best.user_attrs.get("scored_by", "val")  # trials of an older bmnas did not record it
    return SweepResult(
        best.number, float(best.value), best_cfg, genotype, rows, paths, dict(space), scored_by
    )


def format_rows(rows: list[dict], space: Mapping[str, dict], best: int) -> str:
    """Plain-text table of the trials; ``*`` marks the best."""
    keys = list(space)
    head = f"  {'trial':>5} {'state':<8} {'val':>7}  " + "  ".join(f"{k.split('.')[-1]:>8}" for k in keys)
    lines = [head, "-" * len(head)]
    for r in rows:
        val = f"{r['value']:.4f}" if r["value"] is not None else "–"
        cells = "  ".join(
            f"{v:>8.2g}" if isinstance(v, float) else f"{'' if v is None else v!s:>8}"
            for v in (r[k] for k in keys)
        )
        mark = "*" if r["number"] == best else " "
        lines.append(f"{mark} {r['number']:>5} {r['state']:<8} {val:>7}  {cells}")
    return "\n".join(lines)


def plot_trials(rows: list[dict], path: Path) -> Path:
    """Objective per complete trial (dots) and the best so far (step line)."""
    done = [r for r in rows if r["value"] is not None]
    metric = next((r["metric"] for r in done if r.get("metric")), "score")
    return trials_chart([r["number"] for r in done], [r["value"] for r in done], metric, path)
