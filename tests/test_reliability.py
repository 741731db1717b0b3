"""Hostile and clumsy input: one clear ``bmnas: error:`` line (exit 2), never code run from a file.

Most cases drive the command line the way a user does and check that the message names the
culprit and that nothing of the run was written when the input is refused; the cache, lock and
parser cases call the library directly.
"""

import contextlib
import fcntl
import json
import logging
import os
import random
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bmnas.cli import main as cli
from bmnas.core import locks
from bmnas.core.config import Config, ConfigError
from bmnas.core.genotype import CellGene, FeatureSpec, Genotype, GenotypeError, StepGene
from bmnas.engine.rundir import RunDir, RunError
from bmnas.features.cache import MANIFEST, CacheKey, FeatureCache
from bmnas.features.datasets import base as datasets_base
from bmnas.features.datasets.base import DatasetError, RawDataset, RawSplit, create_dataset, register_dataset
from bmnas.features.generic import load_generic_dir
from helpers import corrupt, write_generic

FAST = ["--set", "search.epochs=1", "--set", "model.C=8", "--set", "model.L=4", "--quiet"]
FAST += ["--set", "search.batch_size=16", "--set", "train.epochs=1"]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()  # this command's output only (earlier ones may have logged warnings)
    rc = cli.main([*argv])
    return rc, capsys.readouterr().err


def assert_refused(rc: int, err: str, *parts: str) -> None:
    assert rc == 2, err
    assert err.startswith("bmnas: error: ") and err.count("\n") == 1, err  # one line, no traceback
    for part in parts:
        assert part in err, f"{part!r} not in {err!r}"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_generic(tmp_path / "d")


# ------------------------------------------------------------------------------------- security
class _RunsCode:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do with a shell."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, data, capsys):
    probe = tmp_path / "probe.pt"
    torch.save({"x": _RunsCode(tmp_path / "probe-ran")}, probe)
    torch.load(probe, weights_only=False)["x"].close()
    assert (tmp_path / "probe-ran").exists()  # the payload is live: unsafe loading would run it

    out, marker = tmp_path / "run", tmp_path / "pwned"
    RunDir(out)  # a bmnas run directory (its marker), where a checkpoint is then planted
    torch.save({"config": {}, "model": _RunsCode(marker)}, out / "search.ckpt.pt")
    rc, err = run_cli(capsys, "search", "--data", str(data), "--out", str(out), *FAST)
    assert_refused(rc, err, "search.ckpt.pt: refused to load", "could run code", "--fresh")
    assert not marker.exists()
    assert not (out / "config.yaml").exists()  # refused before anything of the run was written


def test_checkpoints_save_only_tensors_and_plain_values(tmp_path):
    run = RunDir(tmp_path / "run")
    state = {"model": {"w": torch.ones(2)}, "state": {"epoch": 1, "history": [], "best": np.float64(0.5)}}
    run.save_checkpoint("custom", Config(), state)
    ckpt = torch.load(run.checkpoint_path("custom"), weights_only=True)
    assert ckpt["state"]["best"] == 0.5 and type(ckpt["state"]["best"]) is float
    assert run.load_checkpoint("custom", Config())["model"]["w"].tolist() == [1.0, 1.0]


def test_a_checkpoint_without_its_model_is_refused_by_name(tmp_path, data, capsys):
    out = tmp_path / "run"
    RunDir(out)
    torch.save({"config": {}, "stage": "search", "state": {"epoch": 1}}, out / "search.ckpt.pt")
    rc, err = run_cli(capsys, "search", "--data", str(data), "--out", str(out), *FAST)
    assert_refused(rc, err, "search.ckpt.pt: damaged checkpoint (missing ['model', 'w_opt'")


# ------------------------------------------------------------------------------------- bad data
def _split(root: Path, split: str, n: int, **extra) -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "label": np.arange(n) % 3,
        "image.vec": rng.normal(size=(n, 7)),
        "audio.seq": np.ones((n, 3, 5)),
    }
    arrays.update(extra)
    np.savez(root / f"{split}.npz", **{k: v for k, v in arrays.items() if v is not None})


def _flip_middle_byte(file: Path) -> None:
    raw = bytearray(file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    file.write_bytes(bytes(raw))


BAD_DATA = {
    "string labels": (
        lambda r: corrupt(r, "train", label=np.array(["cat", "dog"] * 20)),
        ["/train: 'label' has dtype <U3", "integer class indices"],
    ),
    "empty val": (lambda r: _split(r, "val", 0), ["/val: no samples ('label' is empty)"]),
    "empty train": (lambda r: _split(r, "train", 0), ["/train: no samples"]),
    "empty test": (lambda r: _split(r, "test", 0), ["/test: no samples"]),
    "one training row": (
        lambda r: _split(r, "train", 1),
        ["/train: 1 sample(s); this split needs at least 2"],
    ),
    "0-d feature": (
        lambda r: corrupt(r, "train", **{"image.vec": np.array(1.0)}),
        ["feature 'image.vec' has shape (); a raw feature must be (N, C), (N, C, T)"],
    ),
    "0-d label": (lambda r: corrupt(r, "val", label=np.array(3)), ["/val: 'label' has shape ()"]),
    "6-d feature": (
        lambda r: corrupt(r, "train", **{"image.vec": np.ones((40, 2, 1, 1, 1, 1), np.float32)}),
        ["feature 'image.vec' has shape (40, 2, 1, 1, 1, 1)"],
    ),
    "zero-length sequence": (
        lambda r: corrupt(r, "train", **{"audio.seq": np.ones((40, 4, 0), np.float32)}),
        ["feature 'audio.seq' has shape (40, 4, 0) with an empty dimension"],
    ),
    "truncated npz": (
        lambda r: (r / "val.npz").write_bytes((r / "val.npz").read_bytes()[:500]),
        ["val.npz: cannot be read as .npz (BadZipFile", "numpy.savez"],
    ),
    "flipped byte": (
        lambda r: _flip_middle_byte(r / "train.npz"),
        ["train.npz: damaged .npz (BadZipFile: Bad CRC-32"],
    ),
    "empty npz file": (
        lambda r: (r / "test.npz").write_bytes(b""),
        ["test.npz: cannot be read as .npz (EOFError"],
    ),
    "test label beyond train's classes": (
        lambda r: corrupt(r, "test", label=np.array([99] + [0] * 11)),
        ["split 'test': label 99 at row 0 is out of range [0, 3)", "inferred from train's labels"],
    ),
    "val class never seen in train": (
        lambda r: corrupt(r, "train", label=np.array([0, 2] * 20)),
        ["split 'val': label 1 at row", "never occurs in train"],
    ),
    "one class": (
        lambda r: [
            corrupt(r, s, label=np.zeros(k, np.int64)) for s, k in (("train", 40), ("val", 12), ("test", 12))
        ],
        ["split 'train': every label is 0; a classification task needs at least 2 classes"],
    ),
    "fractional labels": (
        lambda r: corrupt(r, "val", label=np.array([0.5] + [1.0] * 11)),
        ["split 'val': multiclass labels must be integers; row 0 has 0.5"],
    ),
    "beyond float32": (
        lambda r: corrupt(r, "val", **{"image.vec": np.full((12, 7), 1e300)}),
        ["/val: feature 'image.vec' has 84 values beyond float32's range", "rescale"],
    ),
    "complex feature": (
        lambda r: corrupt(r, "test", **{"image.vec": np.ones((12, 7), np.complex64)}),
        ["/test: feature 'image.vec' is complex (complex64)"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_one_clear_error_before_the_run_is_touched(case, tmp_path, data, capsys):
    damage, parts = BAD_DATA[case]
    damage(data)
    out = tmp_path / "run"
    rc, err = run_cli(capsys, "run", "--data", str(data), "--out", str(out), *FAST)
    assert_refused(rc, err, *parts)
    assert not out.exists()


def test_a_search_needs_two_features(tmp_path, capsys):
    root = tmp_path / "one"
    root.mkdir()
    for split, n in (("train", 10), ("val", 4), ("test", 4)):
        _split(root, split, n, **{"audio.seq": None})
    rc, err = run_cli(capsys, "search", "--data", str(root), "--out", str(tmp_path / "r"), *FAST)
    assert_refused(rc, err, "a search needs at least 2 features", "['image.vec']")
    data = write_generic(tmp_path / "d")
    argv = ["search", "--data", str(data), "--out", str(tmp_path / "r"), "--set", "data.features=[audio.seq]"]
    assert_refused(*run_cli(capsys, *argv, *FAST), "a search needs at least 2 features", "['audio.seq']")
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------- bad config
BAD_CONFIG = {
    "threads=-1": "threads: must be in [0, 1024] (0: bmnas' thread policy), got -1",
    "seed=12345678901234567890": "seed: must be in [0, 4294967295], got 12345678901234567890",
    "search.arch_betas=[2.0,0.999]": "search.arch_betas: Adam's betas must be in [0, 1), got [2.0, 0.999]",
    "search.weight_decay=-1": "search.weight_decay: must be >= 0, got -1.0",
    "train.weight_decay=-0.5": "train.weight_decay: must be >= 0, got -0.5",
    "search.arch_lr=-1": "search.arch_lr: must be > 0, got -1.0",
    "search.lr=.inf": "search.lr: must be a finite number of at most 3.4e+38 in size, got inf",
    "search.lr=1e300": "search.lr: must be a finite number",
    "model.dropout=.nan": "model.dropout: must be a finite number",
    "data.num_outputs=0": "data.num_outputs: must be >= 1, or null to infer it from the labels; got 0",
    "model.C=1099511627776": "model.C: must be <= 8192, got 1099511627776",
    "model.cells=100000": "model.cells: must be <= 256, got 100000",
    "model.C=[[[1]]]": "model.C: expected int, got [[[1]]]",
    "model.ops=[sum": "override 'model.ops=[sum': the value is not valid YAML",
    "model.ops=[sum,nosuch]": "model.ops: unknown op 'nosuch'; registered ops: [",
}


@pytest.mark.parametrize("override", list(BAD_CONFIG))
def test_bad_config_values_are_named(override, tmp_path, data, capsys):
    out = tmp_path / "run"
    rc, err = run_cli(capsys, "search", "--data", str(data), "--out", str(out), *FAST, "--set", override)
    assert_refused(rc, err, BAD_CONFIG[override])
    assert not out.exists()


def test_config_and_out_paths_of_the_wrong_kind(tmp_path, data, capsys):
    rc, err = run_cli(
        capsys, "search", "--data", str(data), "--out", str(tmp_path / "r"), "--config", str(tmp_path)
    )
    assert_refused(rc, err, f"--config {tmp_path}: not a file")
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    rc, err = run_cli(
        capsys, "search", "--data", str(data), "--out", str(tmp_path / "r"), "--config", str(deep)
    )
    assert_refused(rc, err, f"--config {deep}:")
    file = tmp_path / "file.txt"
    file.write_text("mine")
    rc, err = run_cli(capsys, "search", "--data", str(data), "--out", str(file), *FAST)
    assert_refused(rc, err, f"{file} is a file, not a directory")
    rc, err = run_cli(capsys, "export", "--data", str(data), "--out", str(file))
    assert_refused(rc, err, f"--out {file} is a file, not a directory")
    assert file.read_text() == "mine"


def test_registered_datasets_and_their_options_are_listed(tmp_path, data, capsys):
    cache = ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "r")]
    rc, err = run_cli(capsys, "search", "--dataset", "nosuch", *cache)
    assert_refused(
        rc, err, "unknown dataset 'nosuch'; registered datasets: ['avmnist', 'egogesture', 'emoji'"
    )
    rc, err = run_cli(capsys, "search", "--dataset", "avmnist", "--dataset-option", "colour=1", *cache)
    assert_refused(
        rc, err, "unknown --dataset-option colour for dataset 'avmnist'; valid options: [", "'split_seed'"
    )
    assert not (tmp_path / "cache" / "avmnist").exists()  # refused before preparing anything
    rc, err = run_cli(capsys, "search", "--data", str(data), "--dataset-option", "path=x", *cache[2:])
    assert_refused(rc, err, "--dataset-option and --backbone-option apply to --dataset, not to --data DIR")


def test_preparing_a_dataset_is_locked_and_cleans_what_a_killed_one_left(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets_base, "_DATASETS", dict(datasets_base._DATASETS))  # registry restored after
    calls = []

    @register_dataset("toy_reliability")
    def toy(root: Path, *, size: int = 3) -> RawDataset:
        calls.append(size)
        split = RawSplit({"a": np.zeros((size, 2))}, np.arange(size) % 2)
        return RawDataset("toy_reliability", {s: split for s in ("train", "val", "test")})

    leftover = tmp_path / "toy_reliability" / ".v1.k1ll3d.tmp"
    leftover.mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"unknown --dataset-option colour .* valid options: \['size'\]"):
        create_dataset("toy_reliability", tmp_path, colour=1)
    assert calls == [] and leftover.exists()  # refused before the builder ran
    assert len(create_dataset("toy_reliability", tmp_path, size=4).splits["val"]) == 4
    assert calls == [4] and not leftover.exists()


def test_show_of_a_missing_run_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "run"
    rc, err = run_cli(capsys, "show", str(missing))
    assert_refused(rc, err, f"{missing}: no such run directory")
    assert not (tmp_path / "no").exists()


# ------------------------------------------------------------------------------ genotype vs data
def _genotype(path: Path, **edit) -> Path:
    """A one-Cell genotype of the test data (``image.vec`` x ``audio.seq``) with ``edit`` applied."""
    specs = {"image.vec": FeatureSpec("image.vec", 7, 1), "audio.seq": FeatureSpec("audio.seq", 3, 4)}
    specs.update(edit.pop("specs", {}))
    cell = CellGene(("image.vec", "audio.seq"), (StepGene(edit.pop("op", "sum"), ("x", "y")),), ("step1",))
    g = Genotype(edit.pop("C", 8), edit.pop("L", 4), tuple(specs.values()), (cell,), ("cell1",))
    path.write_text(g.to_json())
    return path


GENOTYPE_CASES = {
    "channels": (
        {"specs": {"audio.seq": FeatureSpec("audio.seq", 5, 4)}},
        "'audio.seq': the genotype expects 5 channels x 4 positions (L=4) but the data has 3 channels x 4",
    ),
    "another L": (
        {"L": 8, "specs": {"audio.seq": FeatureSpec("audio.seq", 3, 8)}},
        "pass --set model.L=8 to pool the data as the genotype expects",
    ),
    "vector declared as a sequence": (
        {"specs": {"image.vec": FeatureSpec("image.vec", 7, 4)}},
        "'image.vec': the genotype expects 7 channels x 4 positions (L=4) but the data has 7 channels x 1",
    ),
    "unknown op": ({"op": "nosuch"}, "steps[0].op: unknown op 'nosuch'; registered ops: ["),
}


@pytest.mark.parametrize("case", list(GENOTYPE_CASES))
def test_a_genotype_that_does_not_fit_the_data_is_refused(case, tmp_path, data, capsys):
    edit, message = GENOTYPE_CASES[case]
    g, out = _genotype(tmp_path / "g.json", **edit), tmp_path / "run"
    rc, err = run_cli(capsys, "train", "--data", str(data), "--out", str(out), "--genotype", str(g), *FAST)
    assert_refused(rc, err, str(g), message)
    assert not out.exists()


def test_a_genotype_reading_a_feature_the_data_lacks(tmp_path, data, capsys):
    g = _genotype(tmp_path / "g.json")
    g.write_text(g.read_text().replace("image.vec", "image.gone"))
    rc, err = run_cli(
        capsys, "train", "--data", str(data), "--out", str(tmp_path / "r"), "--genotype", str(g), *FAST
    )
    assert_refused(rc, err, "'image.gone': the genotype reads it but the data has no such feature")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 200_000 + "]" * 200_000, "nested too deeply to be a genotype"),
        (None, "C: must be an integer in [1, 8192], got 1099511627776"),
        ("9" * 5000, "not valid JSON"),
    ],
)
def test_hostile_genotype_files(text, message, tmp_path, data, capsys):
    path = _genotype(tmp_path / "g.json")
    path.write_text(text if text is not None else path.read_text().replace('"C": 8', f'"C": {2**40}'))
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--genotype", str(path), *FAST]
    assert_refused(*run_cli(capsys, *argv), str(path), message)


def _random_edit(node, rng: random.Random):
    """``node`` with one random change somewhere inside: a key dropped, a value replaced."""
    if isinstance(node, dict) and node and rng.random() < 0.7:
        key = rng.choice(sorted(node))
        if rng.random() < 0.2:
            return {k: v for k, v in node.items() if k != key}
        return {**node, key: _random_edit(node[key], rng)}
    if isinstance(node, list) and node and rng.random() < 0.7:
        i = rng.randrange(len(node))
        return node[:i] + [_random_edit(node[i], rng)] + node[i + 1 :]
    return rng.choice([None, True, -1, 0, 2**70, 1.5, "", "x", "cell9", "step1", [], {}, [node], {"a": node}])


def test_mutated_genotypes_parse_or_fail_with_a_genotype_error(tmp_path):
    base = json.loads(_genotype(tmp_path / "g.json").read_text())
    rng, outcomes = random.Random(0), {"ok": 0, "refused": 0}
    for _ in range(1500):
        mutated = _random_edit(base, rng)
        try:
            Genotype.from_dict(mutated)
            outcomes["ok"] += 1
        except GenotypeError as err:
            assert str(err).startswith("genotype"), err
            outcomes["refused"] += 1
    assert outcomes["refused"] > 1000 and outcomes["ok"] > 0, outcomes


GENOTYPE_FIELDS = [
    ("format",),
    ("version",),
    ("C",),
    ("L",),
    ("features", 0, "name"),
    ("features", 1, "channels"),
    ("features", 0, "length"),
    ("cells", 0, "inputs"),
    ("cells", 0, "steps", 0, "op"),
    ("cells", 0, "steps", 0, "inputs"),
    ("cells", 0, "concat"),
    ("output",),
]
CONFIG_KEYS = [
    "seed",
    "threads",
    "model.C",
    "model.ops",
    "search.lr",
    "search.arch_betas",
    "data.num_outputs",
]


def test_hypothesis_fuzz_of_the_genotype_and_config_parsers(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    values = st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=12,
    )
    base = _genotype(tmp_path / "g.json").read_text()

    @hypothesis.settings(max_examples=200, deadline=None, database=None)
    @hypothesis.given(field=st.sampled_from(GENOTYPE_FIELDS), key=st.sampled_from(CONFIG_KEYS), value=values)
    def check(field, key, value):
        d = json.loads(base)
        node = d
        for part in field[:-1]:
            node = node[part]
        node[field[-1]] = value  # one field of a valid genotype replaced by anything JSON holds
        with contextlib.suppress(GenotypeError):
            Genotype.from_dict(d)
        with contextlib.suppress(ConfigError):
            Config.from_sources(None, [f"{key}={json.dumps(value)}"])

    check()


# --------------------------------------------------------------------------------- run directories
def test_a_changed_config_or_data_is_refused_before_config_yaml_is_touched(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert cli.main(["search", "--data", str(data), "--out", str(out), *FAST]) == 0
    before = (out / "config.yaml").read_text()
    rc, err = run_cli(capsys, "search", "--data", str(data), "--out", str(out), *FAST, "--set", "model.C=16")
    assert_refused(rc, err, "holds search results of another configuration (model.C: 8 -> 16)", "--fresh")
    assert (out / "config.yaml").read_text() == before
    corrupt(data, "train", **{"image.vec": np.zeros((40, 7), np.float32)})
    rc, err = run_cli(capsys, "search", "--data", str(data), "--out", str(out), *FAST, "--set", "model.C=16")
    assert_refused(rc, err, "model.C: 8 -> 16", "and other data (data.source.train.npz: ")
    assert (out / "config.yaml").read_text() == before
    # --fresh discards everything the run owns, baselines included, and starts over
    (out / "baseline_late_fusion.ckpt.pt").write_bytes(b"old")
    (out / "metrics.json").write_text("{}")
    assert cli.main(["search", "--data", str(data), "--out", str(out), *FAST, "--fresh"]) == 0
    assert not (out / "baseline_late_fusion.ckpt.pt").exists() and not (out / "metrics.json").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["C"] == 8
    assert json.loads((out / "fingerprint.json").read_text())["data"]["sizes"] == {
        "train": 40,
        "val": 12,
        "test": 12,
    }


def test_a_run_directory_in_use_is_refused(tmp_path, data, capsys):
    out = tmp_path / "run"
    RunDir(out)
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process's lock: a second open file description
        os.write(fd, b"4242\n")
        rc, err = run_cli(capsys, "search", "--data", str(data), "--out", str(out), *FAST)
        assert_refused(rc, err, f"{out} is in use by another bmnas process (pid 4242)", "another --out")
        assert not (out / "config.yaml").exists()
    finally:
        os.close(fd)
    assert locks.try_lock(out / ".lock")  # main() released what it held; the lock is free again
    locks.release(out / ".lock")


def test_keys_added_to_the_config_since_a_run_are_no_change(tmp_path):
    run, cfg = RunDir(tmp_path / "run"), Config()
    recorded = cfg.to_dict()
    del recorded["search"]["arch_weight_decay"]  # as if the key had been added since
    run.config_path.write_text(yaml.safe_dump(recorded))
    run.genotype_path.write_text("{}")
    try:
        run.open(cfg)
        with pytest.raises(
            RunError, match=r"another configuration \(search.arch_weight_decay: 0.001 -> 0.5\)"
        ):
            run.open(Config.from_sources(None, ["search.arch_weight_decay=0.5"]))
    finally:
        locks.release_all()


def test_leftover_temporary_files_are_removed_and_writes_use_unique_names(tmp_path):
    run = RunDir(tmp_path / "run")
    for name in ("genotype.json.tmp", ".metrics.json.k1ll3d_x.tmp", "plots/.genotype.png.a_b2c3d4.tmp"):
        (run.path / name).parent.mkdir(exist_ok=True)
        (run.path / name).write_text("half")
    (run.path / "draft.tmp").write_text("a user's")  # not a temporary file of bmnas'
    run.open(Config())
    assert sorted(p.name for p in run.path.iterdir()) == [
        ".bmnas-run",
        ".lock",
        "config.yaml",
        "draft.tmp",
        "plots",
    ]
    assert list((run.path / "plots").iterdir()) == [] and (run.path / "draft.tmp").read_text() == "a user's"
    locks.release_all()


# ------------------------------------------------------------------------------------- the cache
KEY = CacheKey("toy", "abc", "train", "image", "w0", (("image.a", "layer1"),), 4, "max")


def _cached(tmp_path: Path) -> tuple[FeatureCache, Path]:
    cache = FeatureCache(tmp_path / "features")
    cache.store(KEY, {"image.a": np.ones((3, 4, 2), np.float32)})
    return cache, cache.entry_dir(KEY)


@pytest.mark.parametrize(
    "manifest, reason",
    [
        ([1, 2], "damaged manifest: must be an object, got a list of 2 items"),
        (None, "damaged manifest: must be an object, got null"),
        ({"features": 5}, "damaged manifest: key is missing"),
        ("features=5", "damaged manifest: features must be a list of at most 10000 items, got 5"),
        ("no sha256", "damaged manifest: features[0].sha256 is missing"),
        ("no file", "damaged manifest: features[0].file is missing"),
        ("escape", "features[0].file must be a name of 1 to 255 characters, without '/' and not starting"),
    ],
)
def test_damaged_manifests_of_any_shape_are_rebuilt(manifest, reason, tmp_path, caplog):
    cache, entry = _cached(tmp_path)
    good = json.loads((entry / MANIFEST).read_text())
    entry_0 = good["features"][0]
    if manifest == "features=5":
        manifest = {**good, "features": 5}
    elif manifest in ("no sha256", "no file"):
        manifest = {**good, "features": [{k: v for k, v in entry_0.items() if k != manifest[3:]}]}
    elif manifest == "escape":
        manifest = {**good, "features": [{**entry_0, "file": "../../outside.npy"}]}
    (entry / MANIFEST).write_text(json.dumps(manifest))
    calls = []
    with caplog.at_level(logging.WARNING, logger="bmnas.features.cache"):
        arrays, hit = cache.get_or_compute(
            KEY, lambda: calls.append(1) or {"image.a": np.zeros((3, 4, 2), np.float32)}
        )
    assert not hit and calls == [1] and float(arrays["image.a"].sum()) == 0.0
    assert reason in caplog.text and "rebuilding it" in caplog.text
    assert cache.get_or_compute(KEY, lambda: pytest.fail("rebuilt twice"))[1]


def test_a_second_builder_waits_for_the_first_and_reads_its_entry(tmp_path):
    cache = FeatureCache(tmp_path / "features")
    entry = cache.entry_dir(KEY)
    entry.parent.mkdir(parents=True)
    leftover = entry.parent / f".{entry.name}.killed.tmp"
    leftover.mkdir()
    result = {}

    def second() -> None:
        result["arrays"], result["hit"] = cache.get_or_compute(KEY, lambda: pytest.fail("built twice"))

    with locks.locked(entry.parent / f".{entry.name}.lock"):  # the first builder, still extracting
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive()  # the second one waits rather than building or failing
        cache.store(KEY, {"image.a": np.full((3, 4, 2), 7.0, np.float32)})
    thread.join(10)
    assert result["hit"] and float(result["arrays"]["image.a"][0, 0, 0]) == 7.0
    assert leftover.exists()  # a hit touches nothing; a miss under the lock cleans leftovers:
    (entry / MANIFEST).write_text("null")
    cache.get_or_compute(KEY, lambda: {"image.a": np.ones((3, 4, 2), np.float32)})
    assert not leftover.exists()


# ----------------------------------------------------------------------- interrupts and real bugs
def test_interrupt_and_internal_errors(monkeypatch, tmp_path, capsys):
    import bmnas.cli.serve

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bmnas.cli.serve, "show_command", interrupted)
    rc, err = run_cli(capsys, "show", str(tmp_path))
    assert (
        rc == 130
        and err == "bmnas: interrupted before bmnas show finished: rerun the same command to start again\n"
    )

    def buggy(args):
        return {}["nothing"]

    monkeypatch.setattr(bmnas.cli.serve, "show_command", buggy)
    rc, err = run_cli(capsys, "show", str(tmp_path))
    assert rc == 1 and "bmnas: internal error: KeyError: 'nothing' (at test_reliability.py:" in err
    assert "please report it" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(KeyError, match="nothing"):
        cli.main(["--debug", "show", str(tmp_path)])


def test_genotype_file_loading_is_refused_cleanly(tmp_path):
    with pytest.raises(GenotypeError, match=f"{tmp_path}: not a file; name a genotype.json"):
        Genotype.load(tmp_path)
    binary = tmp_path / "g.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(GenotypeError, match="not a text file; a genotype is JSON"):
        Genotype.load(binary)
    assert load_generic_dir(write_generic(tmp_path / "d"), 4).info["files_sha256"]["train.npz"]
