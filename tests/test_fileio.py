"""core.fileio: atomic writes that a kill or an error cannot half-do, and one policy for damaged logs."""

import json
import logging
import os
import stat

import pytest
import torch

from bmnas.core.errors import BmnasError
from bmnas.core.fileio import (
    append_jsonl,
    atomic_write,
    make_staging_dir,
    publish_dir,
    read_json,
    read_jsonl,
    save_torch,
    sha256,
    write_json,
    write_jsonl,
    write_text_atomic,
)


def test_two_writers_of_one_file_use_different_temporary_files(tmp_path):
    target = tmp_path / "metrics.json"
    temps = []

    def outer(tmp):
        temps.append(tmp)
        tmp.write_text("outer")
        # a second writer of the same file while the first is still writing
        atomic_write(target, lambda inner: temps.append(inner) or inner.write_text("inner"))
        assert tmp.read_text() == "outer"  # the second writer did not touch the first one's file

    atomic_write(target, outer)
    assert temps[0] != temps[1]
    assert all(
        t.parent == tmp_path and t.name.startswith(".metrics.json.") and t.suffix == ".tmp" for t in temps
    )
    assert target.read_text() == "outer"  # the last rename wins, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_an_error_while_writing_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    target = write_text_atomic(tmp_path / "genotype.json", "old\n")

    def fails(tmp):
        tmp.write_text("half of the new cont")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fails)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["genotype.json"]
    with pytest.raises(TypeError):  # not JSON-serialisable: fails before anything is replaced
        write_json(target, {"x": object()})
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["genotype.json"]


def test_json_round_trip_and_a_damaged_or_missing_file(tmp_path):
    path = write_json(tmp_path / "a.json", {"b": [1, 2.5, None]})
    assert path.read_text() == '{\n  "b": [\n    1,\n    2.5,\n    null\n  ]\n}\n'
    assert read_json(path) == {"b": [1, 2.5, None]}
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")
    assert read_json(tmp_path / "missing.json", default=None) is None
    path.write_text('{"b": [1, 2')
    with pytest.raises(BmnasError, match="a.json: not a readable JSON file"):
        read_json(path)
    assert read_json(path, default={}) == {}


def test_a_last_line_cut_by_a_kill_is_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "log.jsonl"
    path.write_text('{"round": 0}\n\n{"round": 1}\n{"round": 2, "sco')
    with caplog.at_level(logging.WARNING, logger="bmnas.core.fileio"):
        assert read_jsonl(path) == [{"round": 0}, {"round": 1}]
    assert "log.jsonl: skipping line 4" in caplog.text
    path.write_text('{"round": 0}\n{"round": 1}')  # a whole last row without its newline counts
    assert read_jsonl(path) == [{"round": 0}, {"round": 1}]
    assert read_jsonl(tmp_path / "none.jsonl") == [] and read_jsonl(None) == []


def test_a_damaged_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(BmnasError, match=r"results.jsonl, line 2: not valid JSON"):
        read_jsonl(path)


def test_appending_after_a_cut_line_drops_it_and_keeps_a_whole_one(tmp_path):
    path = tmp_path / "sub" / "log.jsonl"
    append_jsonl(path, {"round": 0})  # creates the folder and the file
    with path.open("a") as f:
        f.write('{"round": 1, "genotype": {"cel')  # killed in the middle of the next append
    append_jsonl(path, {"round": 1})
    assert path.read_text() == '{"round": 0}\n{"round": 1}\n'
    with path.open("a") as f:
        f.write('{"round": 2}')  # a whole row without its newline
    append_jsonl(path, {"round": 3})
    assert read_jsonl(path) == [{"round": r} for r in range(4)]


def test_write_jsonl_replaces_the_whole_log(tmp_path):
    path = tmp_path / "history.jsonl"
    append_jsonl(path, {"epoch": 9})
    write_jsonl(path, [{"epoch": 1}, {"epoch": 2}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"epoch": 1}, {"epoch": 2}]


def test_save_torch_writes_what_weights_only_loading_accepts(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "state": {"epoch": 2, "history": [{"loss": 0.5}]}}
    path = save_torch(tmp_path / "search.ckpt.pt", state)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0)) and loaded["state"] == state["state"]
    assert [p.name for p in tmp_path.iterdir()] == ["search.ckpt.pt"]


def test_sha256_of_a_file(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    path.write_bytes(b"x" * 3_000_001)  # several chunks
    assert sha256(path, chunk=1 << 20) == sha256(path, chunk=7)


def test_a_staged_directory_is_published_over_the_old_one(tmp_path):
    final = tmp_path / "entry"
    final.mkdir()
    (final / "old.npy").write_text("old")
    staging = make_staging_dir(final)
    assert staging.parent == tmp_path and staging.name.endswith(".tmp")
    (staging / "new.npy").write_text("new")
    assert publish_dir(staging, final)
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]
    assert [p.name for p in final.iterdir()] == ["new.npy"]


def test_written_files_get_the_permissions_open_would_give(tmp_path):
    old = os.umask(0o027)
    try:
        path = write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # not mkstemp's 0600
