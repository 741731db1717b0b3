"""bmnas never deletes or changes a file it did not write: user files, links, --fresh, old runs.

Every case drives the command line in a temp dir as a user meets it and checks the message, the
exit code, and that the user's files are byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from bmnas.cli import main as cli
from bmnas.core.errors import NotOursError
from bmnas.core.fileio import append_jsonl
from bmnas.engine import owned
from bmnas.engine.rundir import RunDir

FAST = ["--set", "search.epochs=1", "--set", "model.C=8", "--set", "model.L=4", "--quiet"]
FAST += ["--set", "search.batch_size=16", "--set", "train.epochs=1", "--set", "search.rerank=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("val", 12), ("test", 12)):
        label = rng.integers(0, 3, n)
        label[:3] = np.arange(3)
        arrays = {"image.vec": rng.normal(size=(n, 7)), "audio.seq": rng.normal(size=(n, 3, 5))}
        np.savez(root / f"{split}.npz", label=label, **{k: v.astype(np.float32) for k, v in arrays.items()})
    return root


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main([*argv])
    return rc, capsys.readouterr().err


def snapshot(root: Path) -> dict[str, str]:
    """Every file and link under ``root``: its SHA-256 (a link: where it points)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def user_files(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text("my: own config\n")
    (root / "draft.tmp").write_text("a draft")
    (root / "model.pt").write_bytes(b"my model")
    (root / "metrics.json").write_text('{"mine": 1}')
    (root / "robustness.md").write_text("# my notes")
    (root / "plots").mkdir(exist_ok=True)
    (root / "plots" / "fig.png").write_bytes(b"\x89PNG mine")
    return root


@pytest.mark.parametrize("fresh", [[], ["--fresh"]])
def test_a_users_directory_is_refused_and_left_byte_identical(tmp_path, data, capsys, fresh):
    out = user_files(tmp_path / "mine")
    before = snapshot(out)
    rc, err = run_cli(capsys, "search", "--data", str(data), "--out", str(out), *fresh, *FAST)
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"bmnas: error: --out {out} is not a bmnas run directory (it holds config.yaml")
    assert "choose another --out" in err
    assert snapshot(out) == before  # not even a lock file or a marker


def test_fresh_in_a_run_directory_removes_only_what_bmnas_wrote(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, "search", "--data", str(data), "--out", str(out), *FAST)[0] == 0
    assert {"genotype.json", "history.jsonl", "search.ckpt.pt", ".bmnas-run"} <= set(os.listdir(out))
    (out / "notes.txt").write_text("mine")
    (out / "draft.tmp").write_text("mine too")
    (out / "plots" / "fig.png").write_bytes(b"my figure")
    ours = {k: v for k, v in snapshot(out).items() if k in ("notes.txt", "draft.tmp", "plots/fig.png")}
    old_ckpt = (out / "search.ckpt.pt").stat().st_mtime_ns
    rc, err = run_cli(capsys, "search", "--data", str(data), "--out", str(out), "--fresh", *FAST)
    assert rc == 0, err
    after = snapshot(out)
    assert {k: after[k] for k in ours} == ours  # the user's files, byte-identical
    assert (out / "search.ckpt.pt").stat().st_mtime_ns != old_ckpt  # bmnas' own were redone


@pytest.mark.parametrize("name", [".lock", "rerank.jsonl", "history.jsonl", "plots"])
def test_a_link_where_bmnas_writes_is_refused_and_its_target_untouched(tmp_path, data, capsys, name):
    out, target = tmp_path / "run", tmp_path / "precious"
    RunDir(out)
    if name == "plots":
        target.mkdir()
        (target / "arch_weights.png").write_bytes(b"a user's picture")
    else:
        target.write_text("a user's file\n")
    (out / name).symlink_to(target)
    before = snapshot(tmp_path / "precious") if name == "plots" else target.read_bytes()
    rc, err = run_cli(capsys, "search", "--data", str(data), "--out", str(out), "--fresh", *FAST)
    assert rc == 2 and err.count("\n") == 1, err
    assert f"{out / name} is a symbolic link; bmnas never writes or deletes through links" in err
    after = snapshot(tmp_path / "precious") if name == "plots" else target.read_bytes()
    assert after == before


def test_ablate_fresh_through_a_linked_ablate_directory_is_refused(tmp_path, data, capsys):
    out, target = tmp_path / "run", tmp_path / "precious"
    RunDir(out)
    target.mkdir()
    (target / "results.jsonl").write_text('{"mine": 1}\n')
    (out / "ablate").symlink_to(target, target_is_directory=True)
    before = snapshot(target)
    argv = ["ablate", "--data", str(data), "--out", str(out), "--fresh", "--seeds", "1"]
    rc, err = run_cli(capsys, *argv, "--methods", "late_fusion", *FAST)
    assert rc == 2 and f"{out / 'ablate'} is a symbolic link" in err, err
    assert snapshot(target) == before


def test_a_run_directory_of_an_older_bmnas_is_adopted_and_resumes(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, "search", "--data", str(data), "--out", str(out), *FAST)[0] == 0
    genotype = (out / "genotype.json").read_text()
    (out / ".bmnas-run").unlink()  # as bmnas < 0.4 left it: no marker
    rc, err = run_cli(capsys, "search", "--data", str(data), "--out", str(out), *FAST)
    assert rc == 0, err
    assert (out / "genotype.json").read_text() == genotype and owned.has_marker(out)


def test_appending_never_follows_a_link_or_a_hard_link(tmp_path):
    target = tmp_path / "precious.jsonl"
    target.write_text('{"mine": 1}\n')
    (tmp_path / "link.jsonl").symlink_to(target)
    with pytest.raises(NotOursError, match="link.jsonl is a symbolic link"):
        append_jsonl(tmp_path / "link.jsonl", {"row": 1})
    os.link(target, tmp_path / "hard.jsonl")
    with pytest.raises(NotOursError, match=r"hard.jsonl is not a plain file of bmnas' \(hard-linked\)"):
        append_jsonl(tmp_path / "hard.jsonl", {"row": 1})
    assert target.read_text() == '{"mine": 1}\n'
    append_jsonl(tmp_path / "ok.jsonl", {"row": 1})  # a plain file of its own is appended to
    assert json.loads((tmp_path / "ok.jsonl").read_text()) == {"row": 1}


def test_only_bmnas_temporary_names_count_as_leftovers():
    assert owned.is_left_temp(Path(".metrics.json.ab_12cd3.tmp"))  # atomic_write's (mkstemp: 8 chars)
    assert owned.is_left_temp(Path("genotype.json.tmp"))  # before 0.2
    assert not owned.is_left_temp(Path("draft.tmp")) and not owned.is_left_temp(Path(".draft.tmp"))


def test_export_never_writes_over_a_users_directory(tmp_path, data, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.npz").write_bytes(b"my own features")
    before = snapshot(mine)
    rc, err = run_cli(capsys, "export", "--data", str(data), "--out", str(mine), "--quiet")
    assert rc == 2 and f"--out {mine} is not a bmnas run directory (it holds train.npz" in err, err
    assert snapshot(mine) == before
    out = tmp_path / "export"
    assert run_cli(capsys, "export", "--data", str(data), "--out", str(out), "--quiet")[0] == 0
    assert (
        run_cli(capsys, "export", "--data", str(data), "--out", str(out), "--quiet")[0] == 0
    )  # its own again
    assert sorted(p.name for p in out.iterdir()) == [".bmnas-run", "test.npz", "train.npz", "val.npz"]
