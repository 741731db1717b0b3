"""Shared test setup: one torch thread (small tensors; robust timing when the machine is busy).

``BMNAS_TEST_DEVICE=cuda`` (benchmarks/gpu_check.sh) runs the suite's in-process runs on that
device: it becomes the default of ``Config.device``, with ``deterministic: true`` (exact resume on a
GPU). Subprocess CLI runs keep the ordinary default (``auto``).
"""

import dataclasses
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


def _test_device(name: str) -> None:
    """Make ``name`` the default ``Config.device`` (and ``deterministic`` true) for this session."""
    from bmnas.core.config import Config  # noqa: PLC0415 (only when the variable is set)

    names = [f.name for f in dataclasses.fields(Config)]
    defaults = list(Config.__init__.__defaults__)
    defaults[names.index("device")] = name
    defaults[names.index("deterministic")] = True
    Config.__init__.__defaults__ = tuple(defaults)


if os.environ.get("BMNAS_TEST_DEVICE"):
    _test_device(os.environ["BMNAS_TEST_DEVICE"])


@pytest.fixture(scope="session")
def bmnas_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache root per test session, so AV-MNIST is prepared and its backbones pre-trained once."""
    return tmp_path_factory.mktemp("bmnas-cache")
