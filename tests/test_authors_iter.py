"""benchmarks/authors_iter.py: the authors' hypernet iteration (issue 22, item 6).

The run against their code needs a checkout of Somedaywilldo/BM-NAS: set ``BMNAS_AUTHORS_DIR``
(CI has none, so it is skipped there). The bad-path test always runs.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "authors_iter.py"
AUTHORS = os.environ.get("BMNAS_AUTHORS_DIR")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_not_a_checkout_exits_2_naming_the_path(tmp_path):
    missing = tmp_path / "nonexistent"
    r = _run("--authors", str(missing), "--device", "cpu")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "no such directory" in lines[0]
    assert r.stdout == ""
    r = _run("--authors", str(missing))  # the default --device cuda: still the path's error
    assert r.returncode == 2 and str(missing) in r.stderr and "CUDA" not in r.stderr
    r = _run("--authors", str(tmp_path), "--device", "cpu")  # a directory, but not their code
    assert r.returncode == 2
    assert "models/search/mmimdb_darts_searchable.py is missing" in r.stderr


@pytest.mark.skipif(not AUTHORS, reason="BMNAS_AUTHORS_DIR (a checkout of Somedaywilldo/BM-NAS) is not set")
def test_their_full_size_mmimdb_hypernet_runs_one_iteration(tmp_path):
    out = tmp_path / "authors.json"
    r = _run(
        "--authors", AUTHORS, "--dataset", "mmimdb", "--device", "cpu",
        "--batch", "4", "--iters", "1", "--warmup", "0", "--json", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[0]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == 7 and cells[1] == "cpu" and cells[2] == "fp32"  # gpu_iter.py's columns
    ms = float(re.fullmatch(r"([0-9.]+) ms", cells[4]).group(1))
    assert math.isfinite(ms) and ms > 0
    res = json.loads(out.read_text())
    assert res["ms"] == pytest.approx(ms, abs=0.01)
    assert res["weight_ms"] > 0 and res["arch_ms"] > 0
    assert (res["C"], res["L"], res["N"], res["M"], res["K"], res["classes"]) == (192, 16, 2, 1, 6, 23)
    # their MM-IMDB hypernet at Table 8 sizes (authors-code-notes.md §15): reshape + fusion + classifier
    assert res["params_trainable"] == 1_057_559 == res["params_weight_optimizer"]
    assert res["arch_numbers"] == 42
