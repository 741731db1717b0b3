"""Shared test setup: one torch thread (small tensors; robust timing when the machine is busy)."""

import torch

torch.set_num_threads(1)
