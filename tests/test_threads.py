"""Every entry that computes applies the thread policy: the commands and the Python API alike.

``choose_threads`` is replaced by one that answers 3 (a count no test sets otherwise); a spy records
what ``torch.set_num_threads`` is asked for. Each entry must ask for 3 while it computes and leave
torch's count as it found it (1, conftest.py).
"""

import numpy as np
import pytest
import torch

import bmnas
from bmnas.cli.main import main
from bmnas.engine import device
from helpers import write_generic

SMALL = [
    "model.C=8",
    "model.L=4",
    "search.epochs=1",
    "train.epochs=1",
    "search.batch_size=16",
    "search.rerank=0",
    "train.select_folds=0",
]
SENTINEL = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("threads")
    data = write_generic(root / "data")
    run = root / "run"
    args = ["run", "--data", str(data), "--out", str(run), "--no-baselines", "--quiet"]
    assert main([*args, *(f"--set={s}" for s in SMALL)]) == 0
    return data, run


@pytest.fixture
def asked(monkeypatch):
    """The thread counts asked of torch while the policy answers ``SENTINEL``."""
    seen: list[int] = []
    real = torch.set_num_threads

    def spy(n: int) -> None:
        seen.append(n)
        real(n)

    monkeypatch.setattr(device, "choose_threads", lambda *a, **k: SENTINEL)
    monkeypatch.setattr(torch, "set_num_threads", spy)
    assert torch.get_num_threads() == 1
    yield seen
    assert torch.get_num_threads() == 1  # given back as found


def _sets(data) -> list[str]:
    return ["--data", str(data), "--quiet", *(f"--set={s}" for s in SMALL)]


@pytest.mark.parametrize("command", ["search", "train", "run", "predict", "robustness", "export-model"])
def test_every_computing_command_runs_with_the_policy_and_gives_the_threads_back(
    command, trained, asked, tmp_path
):
    data, run = trained
    argv = {
        "search": ["search", *_sets(data), "--out", str(tmp_path / "s")],
        "train": [
            "train",
            *_sets(data),
            "--out",
            str(tmp_path / "t"),
            "--genotype",
            str(run / "genotype.json"),
        ],
        "run": ["run", *_sets(data), "--out", str(tmp_path / "r"), "--no-baselines"],
        "predict": ["predict", str(run), "--out", str(tmp_path / "p.csv"), "--quiet"],
        "robustness": ["robustness", str(run), "--out", str(tmp_path / "rob"), "--noise", "0.5", "--quiet"],
        "export-model": ["export-model", str(run), "--out", str(tmp_path / "m.pt"), "--quiet"],
    }[command]
    assert main(argv) == 0
    assert asked[:1] == [SENTINEL] and set(asked) == {SENTINEL, 1}  # set while computing, then restored


def test_the_threads_setting_overrides_the_policy(trained, asked, tmp_path):
    data, _ = trained
    assert main(["search", *_sets(data), "--set=threads=1", "--out", str(tmp_path / "s")]) == 0
    assert asked == []  # one thread, as already set: the policy's 3 was never asked for


def test_the_python_api_runs_with_the_policy_and_gives_the_threads_back(trained, asked, tmp_path):
    data_dir, run = trained
    cfg = bmnas.Config.from_dict({"data": {"dir": str(data_dir)}, **_nested(SMALL)})
    data = bmnas.load_data(cfg)
    for call in (
        lambda: bmnas.search(data, cfg, progress=False),
        lambda: bmnas.train(bmnas.Genotype.load(run / "genotype.json"), data, cfg, progress=False),
        lambda: bmnas.run(data, cfg, tmp_path / "api", baselines=False, progress=False),
    ):
        asked.clear()
        call()
        assert asked[:1] == [SENTINEL] and asked[-1] == 1
    asked.clear()
    test = dict(np.load(data_dir / "test.npz"))
    test.pop("label")
    bmnas.load(run).predict(test)
    assert asked == [SENTINEL, 1]


def test_nested_entries_restore_the_outer_count():
    with device.thread_policy(threads=2) as outer:
        with device.thread_policy(threads=3) as inner:
            assert (outer, inner, torch.get_num_threads()) == (2, 3, 3)
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1


def _nested(dotted: list[str]) -> dict:
    out: dict = {}
    for item in dotted:
        key, value = item.split("=")
        section, name = key.split(".")
        out.setdefault(section, {})[name] = int(value)
    return out
