"""The small surprises, met as a user meets them: a stretched feature is named, a model file's
suffix says its format, a derived Cell reads both its inputs."""

import numpy as np

from bmnas.cli.main import main
from helpers import write_generic


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_feature_shorter_than_model_L_is_named_once_when_it_is_stretched(tmp_path, capsys):
    data = write_generic(tmp_path / "d")  # audio.seq has T = 11; image.map is 6×5
    rc, _, err = _run(capsys, "pretrain", "--data", str(data), "--set", "model.L=16")
    assert rc == 0
    lines = [line for line in err.splitlines() if "fewer than model.L" in line]
    assert lines == [
        "bmnas: feature 'audio.seq' has 11 positions, fewer than model.L = 16: interpolated up to 16 "
        "(copies, no new information); set model.L to at most its length, or extract it with length >= 16",
        "bmnas: feature 'audio.video' has 3 positions, fewer than model.L = 16: interpolated up to 16 "
        "(copies, no new information); set model.L to at most its length, or extract it with length >= 16",
    ]  # once each, though three splits were pooled; the 6×5 map holds a 4×4 grid
    rc, _, err = _run(capsys, "pretrain", "--data", str(data), "--set", "model.L=2")
    assert rc == 0 and "fewer than model.L" not in err
    assert np.load(data / "train.npz")["audio.seq"].shape[-1] == 11
