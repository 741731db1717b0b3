"""Pieces of the hypernet and the found network: projection, Cell output, head (docs/DESIGN.md §2, §4, §6).

All tensors are channels last: ``(B, L, C)``; a vector feature is ``(B, 1, C)`` and broadcasts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import Dropout


def batch_norm_cl(bn: nn.BatchNorm1d, z: torch.Tensor) -> torch.Tensor:
    """BatchNorm over the channels of ``(B, L, C)``: the statistics of BatchNorm1d on ``(B, C, L)``."""
    return bn(z.reshape(-1, z.shape[-1])).view_as(z)


class FeatureProjection(nn.Module):
    """Trainable half of docs/DESIGN.md §2: ``Dropout(ReLU(BN(W f + b)))``, ``W ∈ R^{C×C_in}`` (a 1×1 Conv1d).

    ``(B, L_k, C_in) -> (B, L_k, C)``.
    """

    def __init__(self, C_in: int, C: int, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(C_in, C)
        self.bn = nn.BatchNorm1d(C)
        self.dropout = Dropout(dropout)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.dropout(F.relu(batch_norm_cl(self.bn, self.fc(f))))


class CellOutput(nn.Module):
    """Cell output (docs/DESIGN.md §4): ``LayerNorm_{(L, C)}(reduce([t_1; …; t_k]) + x)``.

    ``reduce`` is the identity when ``k = 1``, else ``Dropout(ReLU(BN(W [t_1; …; t_k])))`` with
    ``W ∈ R^{C×kC}``.
    """

    def __init__(self, C: int, L: int, num_concat: int = 1, dropout: float = 0.0):
        super().__init__()
        self.reduce = FeatureProjection(num_concat * C, C, dropout) if num_concat > 1 else None
        self.norm = nn.LayerNorm([L, C])

    def forward(self, outputs: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        z = outputs[0] if self.reduce is None else self.reduce(torch.cat(outputs, dim=-1))
        return self.norm(z + x)


class Head(nn.Module):
    """Output head (docs/DESIGN.md §6).

    ``Linear(Dropout(flatten(ReLU(LayerNorm_{(L, kC)}([s_1; …; s_k])))))``.
    """

    def __init__(self, C: int, L: int, num_inputs: int, num_outputs: int, dropout: float = 0.0):
        super().__init__()
        self.length = L
        self.norm = nn.LayerNorm([L, num_inputs * C])
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(L * num_inputs * C, num_outputs)

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        B = states[0].shape[0]
        z = torch.cat([s.expand(B, self.length, s.shape[-1]) for s in states], dim=-1)
        return self.classifier(self.dropout(F.relu(self.norm(z)).flatten(1)))
