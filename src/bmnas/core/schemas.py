"""The schema of each file type bmnas reads back (:mod:`bmnas.core.schema`), next to what reads it.

===================================== ============================================ ==================
file                                  schema                                       read by
===================================== ============================================ ==================
``RUN/model.pt``                      :data:`MODEL_FILE` (+ tensors: serve.model)  ``bmnas predict`` …
``RUN/<stage>.ckpt.pt`` (to predict)  :data:`TRAINED_CHECKPOINT`                   serve.model.load
``RUN/<stage>.ckpt.pt`` (to resume)   :data:`SEARCH_STATE`, :data:`TRAIN_STATE`    engine.rundir
``RUN/config.yaml`` (to predict)      :data:`RUN_CONFIG`                           serve.model.load
``RUN/metrics.json``                  :data:`METRICS`                              report.summary
``RUN/*_selection.json``              :data:`SELECTION` (redone when damaged)      method.train
``RUN/rerank.jsonl``                  :data:`RERANK_ROW` (row redone)              method.rerank
``RUN/history.jsonl``                 :data:`SEARCH_EPOCH`                         engine.rundir
``RUN/<stage>_history.jsonl``         :data:`TRAIN_EPOCH`                          engine.rundir
``RUN/fingerprint.json``              :data:`FINGERPRINT`                          engine.rundir
``RUN/devices.json``                  :data:`DEVICES`                              method.placement
``RUN/smbo.jsonl``                    :data:`SMBO_ROW` (rounds redone)             studies.smbo
``OUT/ablate/results.jsonl``          :data:`ABLATE_ROW` (row redone)              studies.ablate
``…/test_predictions.npz`` (``meta``) :data:`PREDICTIONS_META` (+ arrays)          engine.saved_predictions
cache ``…/manifest.json``             :data:`CACHE_MANIFEST` (entry rebuilt)       features.cache
prepared ``…/manifest.json``          :data:`PREPARED_MANIFEST` (prepared again)   datasets.prepared
``genotype.json``                     :meth:`Genotype.from_dict <bmnas.core.genotype.Genotype.from_dict>`
===================================== ============================================ ==================

Objects may hold fields not named here (older and newer files pass); a field named here must have
its type. Losses may be NaN or infinite (a diverged training writes them); scores are finite.
"""

from __future__ import annotations

from .data import MAX_OUTPUTS, SPLITS, TASK_TYPES
from .schema import ANY, Either, Flag, Map, Num, Obj, Opt, Seq, Text, Tup

POOLINGS = ("max", "avg")  # features.pooling.POOLING_MODES, as the config checks them
MODEL_FORMAT = "bmnas.model"
PREDICTIONS_FORMAT = "bmnas.predictions"

SCORE = Num()  # a metric: finite
LOSS = Num(finite=False)
SECONDS = Num(lo=0)
COUNT = Num(lo=0, integer=True)
EPOCH = Num(lo=1, integer=True)
NAME = Text(name=True, max_len=255)  # a method, stage or file name: never a path
SHA256 = Text(pattern="[0-9a-f]{64}", described="a SHA-256 (64 hex digits)")
GENOTYPE = Obj({})  # its own check: Genotype.from_dict, where one is built from it
CLASS_NAMES = Seq(Text(max_len=1000), max_len=MAX_OUTPUTS)
TASK = Obj({"type": Text(choices=TASK_TYPES), "num_outputs": Num(1, MAX_OUTPUTS, integer=True)})
THRESHOLD = Num(0, 1, lo_open=True, hi_open=True)
DROPOUT = Num(0, 1, hi_open=True)

# ------------------------------------------------------------------------------ the trained network
MODEL_FILE = Obj(
    {
        "format": Text(choices=(MODEL_FORMAT,)),
        "version": Num(1, 1, integer=True),
        "bmnas_version": Text(max_len=100),
        "genotype": GENOTYPE,
        "state_dict": Map(ANY, key=Text(max_len=1000)),  # tensors: checked against the genotype
        "task": TASK,
        "class_names": CLASS_NAMES,
        "threshold": THRESHOLD,
        "pooling": Text(choices=POOLINGS),
        "dropout": DROPOUT,
    },
    optional=("bmnas_version", "class_names", "dropout"),
)
"""``model.pt`` (:func:`bmnas.serve.model.save_model`)."""

RUN_CONFIG = Obj(
    {
        "seed": Num(0, 2**32 - 1, integer=True),
        "data": Obj(
            {
                "dataset": Opt(Text(max_len=255)),
                "dir": Opt(Text()),
                "task": Opt(Text(choices=TASK_TYPES)),
                "threshold": THRESHOLD,
                "pooling": Text(choices=POOLINGS),
            },
            optional=("dataset", "dir", "task", "threshold", "pooling"),
        ),
        "model": Obj({"dropout": DROPOUT}, optional=("dropout",)),
        "train": Obj({"epochs": COUNT}, optional=("epochs",)),
    },
    optional=("seed", "data", "model", "train"),
)
"""What loading a trained network reads of a run's configuration (``config.yaml``, a checkpoint's)."""

TRAINED_CHECKPOINT = Obj(
    {
        "config": RUN_CONFIG,
        "model": Map(ANY, key=Text(max_len=1000)),
        "state": Obj({"epoch": COUNT}, optional=("epoch",)),
        "epochs": Opt(COUNT),
        "genotype": Opt(GENOTYPE),
    },
    optional=("config", "epochs", "genotype"),
)
"""An evaluation-stage checkpoint, as :func:`bmnas.serve.model.load` reads a baseline from it."""

# ------------------------------------------------------------------------------ results of a run
PARAMS = Obj({"total": COUNT, "fusion": COUNT, "classifier": COUNT}, optional=("fusion", "classifier"))
RESULT_ROW = {
    "test": Map(LOSS, max_len=1000),  # every test metric and the test loss
    "val": Opt(SCORE),
    "params": PARAMS,
    "epochs": COUNT,
    "train_seconds": SECONDS,
    "search_seconds": SECONDS,
}
ROW = Obj(RESULT_ROW, optional=("val", "epochs", "search_seconds"))
ENVIRONMENT = Obj(
    {
        **{k: Text(max_len=500) for k in ("bmnas", "torch", "python", "platform", "device")},
        "command": Text(max_len=100_000),
        "started": Text(max_len=100),
        "ended": Text(max_len=100),
    },
    optional=("bmnas", "torch", "python", "platform", "device", "command", "started", "ended"),
)
"""``metrics.json``'s ``environment`` (bmnas ≥ 0.5): versions, machine, command line, ISO start/end times."""

METRICS = Obj(
    {
        **RESULT_ROW,
        "metric": Text(max_len=100),
        "data_seconds": SECONDS,
        "best_epoch": COUNT,
        "genotype": GENOTYPE,
        "candidates": Seq(Obj({})),
        "recommended": Obj(
            {"method": NAME, "stage": NAME, "reason": Text(), "genotype": GENOTYPE},
            optional=("genotype", "stage"),
        ),
        "val_folds": COUNT,
        "val_scored_by": Text(max_len=200),
        "baselines": Map(ROW, max_len=10_000, key=NAME),
        "data": Obj(
            {
                "name": Text(),
                "sizes": Map(COUNT),
                "task": TASK,
                "info": Obj({"class_names": CLASS_NAMES}, optional=("class_names",)),
            },
            optional=("name", "sizes", "task", "info"),
        ),
        "environment": ENVIRONMENT,
    },
    optional=(
        *("val", "epochs", "search_seconds", "metric", "data_seconds", "best_epoch", "genotype"),
        *("candidates", "recommended", "val_folds", "val_scored_by", "baselines", "data", "environment"),
    ),
)
"""``metrics.json`` of ``bmnas run`` (every field) or ``bmnas train`` (a result row and the genotype)."""

SELECTION_FIELDS = {
    "genotype": GENOTYPE,
    "curve": Seq(SCORE, min_len=1),
    "metric": Text(max_len=100),
    "seconds": SECONDS,
    "initial": Opt(SCORE),
    "folds": COUNT,
}
SELECTION = Obj({**SELECTION_FIELDS, "best_epoch": COUNT}, optional=("initial", "folds", "best_epoch"))
"""``<stage>_selection.json``: the val curve of training on train alone (``method.train.Selection``)."""

RERANK_ROW = Obj(
    {
        **SELECTION_FIELDS,
        "rank": COUNT,
        "source": Text(max_len=1000),
        "val": SCORE,
        "best_epoch": COUNT,
        "epochs": COUNT,
        "same_as": COUNT,
    },
    optional=("initial", "folds", "same_as"),
)
"""A line of ``rerank.jsonl``: one candidate's selection (:func:`bmnas.method.rerank.rerank`);
``same_as``: the rank of the earlier candidate that is the same network, whose outcome it copies."""

SMBO_ROW = Obj(
    {"round": COUNT, "score": SCORE, "predicted": Opt(SCORE), "seconds": SECONDS, "genotype": GENOTYPE}
)
"""A line of ``smbo.jsonl``: one round (:func:`bmnas.studies.smbo.smbo`)."""

ABLATE_ROW = Obj(
    {
        "method": NAME,
        "seed": Num(0, 2**32 - 1, integer=True),
        "sample": Opt(COUNT),
        **RESULT_ROW,
        "params": Obj({"total": COUNT, "fusion": COUNT}),  # the table's two columns
        "genotype": GENOTYPE,
    },
    optional=("sample", "val", "epochs", "genotype"),
)
"""A line of ``ablate/results.jsonl``: one (method, seed[, sample]) (:func:`bmnas.studies.ablate.ablate`)."""

PREDICTIONS_META = Obj(
    {
        "format": Text(choices=(PREDICTIONS_FORMAT,)),
        "version": Num(1, 1, integer=True),
        "split": Text(choices=SPLITS),
        "task": TASK,
        "threshold": THRESHOLD,
        "rows": COUNT,
    }
)
"""The ``meta`` entry of a saved predictions file (:mod:`bmnas.engine.saved_predictions`); its arrays
are checked against it there."""

# ------------------------------------------------------------------------------ resuming
SEARCH_EPOCH = Obj(
    {
        "epoch": EPOCH,
        "train_loss": LOSS,
        "arch_loss": Opt(LOSS),
        "val": Map(LOSS, max_len=1000),
        "lr": LOSS,
        "best": Flag(),
        "genotype": GENOTYPE,
        "arch": Obj({"alpha": Seq(), "beta": Seq(), "gamma": Seq()}),
        "ops": Seq(Text(max_len=255)),
        "entropy": Map(LOSS),
        "op_share": Map(LOSS),
        "alpha_spread": LOSS,
        "seconds": SECONDS,
    },
    optional=("arch_loss", "lr", "best", "arch", "ops", "entropy", "op_share", "alpha_spread", "seconds"),
)
"""A search epoch: a line of ``history.jsonl`` and of the search checkpoint's history."""

TRAIN_EPOCH = Obj(
    {"epoch": EPOCH, "train_loss": LOSS, "lr": LOSS, "seconds": SECONDS}, optional=("lr", "seconds")
)
"""A training epoch: a line of ``<stage>_history.jsonl`` and of the stage checkpoint's history."""

_STATE = {"epoch": COUNT, "seconds": SECONDS}
SEARCH_STATE = Obj(
    {
        **_STATE,
        "history": Seq(SEARCH_EPOCH),
        "best_score": LOSS,  # -inf before the first epoch after the warm-up
        "best_epoch": COUNT,
        "best_genotype": Opt(GENOTYPE),
    }
)
"""The loop state of ``search.ckpt.pt`` (:func:`bmnas.method.search.search`)."""

TRAIN_STATE = Obj({**_STATE, "history": Seq(TRAIN_EPOCH), "val": Seq(SCORE)}, optional=("val",))
"""The loop state of ``train.ckpt.pt`` and ``baseline_*.ckpt.pt`` (:func:`bmnas.method.train.fit`)."""

FINGERPRINT = Obj(
    {
        "data": Obj(
            {
                "source": Map(Either((Text(), Map(Text())))),
                "features": Map(Tup((COUNT, COUNT))),
                "sizes": Map(COUNT),
                "task": Tup((Text(choices=TASK_TYPES), Num(1, MAX_OUTPUTS, integer=True))),
            },
            optional=("source", "features", "sizes", "task"),
        )
    }
)
"""``fingerprint.json``: what the run's data was (:func:`bmnas.features.validate.fingerprint`)."""

# ------------------------------------------------------------------------------ caches
CACHE_MANIFEST = Obj(
    {
        "key": Obj({}),
        "features": Seq(
            Obj(
                {
                    "name": Text(max_len=1000),
                    "file": NAME,
                    "shape": Seq(COUNT, max_len=8),
                    "dtype": Text(max_len=20),
                    "sha256": SHA256,
                }
            ),
            max_len=10_000,
        ),
    }
)
"""A feature cache entry's ``manifest.json`` (:class:`bmnas.features.cache.FeatureCache`)."""

PREPARED_MANIFEST = Obj(
    {"files": Map(SHA256, max_len=100_000, key=NAME), "sha256": SHA256, "empty": Seq(Text(max_len=1000))},
    optional=("empty",),
)
"""A prepared dataset's ``manifest.json`` (:func:`bmnas.features.datasets.prepared.write_manifest`)."""


# ------------------------------------------------------------------------------ device: auto
DEVICE_PHASE = Obj(
    {
        "device": Text(max_len=100),
        "chosen": Text(max_len=100),
        "ms_per_step": Map(Num(lo=0, lo_open=True), max_len=100),
        "side_by_side": Map(COUNT, max_len=100),
    },
    optional=("chosen", "ms_per_step", "side_by_side"),
)
DEVICES = Obj(
    {"setting": Text(max_len=100), "search": DEVICE_PHASE, "evaluation": DEVICE_PHASE},
    optional=("search", "evaluation"),
)
"""``RUN/devices.json`` (and ``metrics.json``'s ``devices``): ``device: auto``'s choice per phase
with the probe's milliseconds per step; a resumed run keeps the choices its start measured."""
