"""Shared test setup: one torch thread (small tensors; robust timing when the machine is busy)."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bmnas_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache root per test session, so AV-MNIST is prepared and its backbones pre-trained once."""
    return tmp_path_factory.mktemp("bmnas-cache")
