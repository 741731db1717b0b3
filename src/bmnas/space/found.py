"""The found network: built from a :class:`~bmnas.core.genotype.Genotype` alone (docs/DESIGN.md §8).

Only the features the genotype reads get a projection (unused features get no parameters and
are never touched). Each step runs its one op; a ``zero`` step outputs zeros.

With ``genotype.linear`` the logits also get a linear path from those raw (pooled) features,
``logits = head(states) + W · BN([f_1; …; f_k]) + b`` with ``f_i`` flattened to ``L_i · C_i`` values
and BN a batch normalisation without affine parameters (wide & deep): every network then contains
a linear probe of those features, which small datasets need (docs/DESIGN.md §8). A genotype with no
Cells and no ``output`` has no head: ``logits = W · BN([f_1; …; f_k]) + b`` is the linear probe
itself (:mod:`bmnas.method.probe`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..core.genotype import CellGene, Genotype, validate
from .cells import CellOutput, FeatureProjection, Head
from .ops import ZERO, create_op, get_op, list_ops


class FoundCell(nn.Module):
    """A discrete Cell: steps with one op each, then the Cell output of docs/DESIGN.md §4."""

    def __init__(self, gene: CellGene, C: int, L: int, dropout: float):
        super().__init__()
        self.gene = gene
        self.ops = nn.ModuleList(
            nn.Identity() if s.op == ZERO else create_op(s.op, C, L, dropout) for s in gene.steps
        )
        self.output = CellOutput(C, L, len(gene.concat), dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        inner = {"x": x, "y": y}
        for m, (step, op) in enumerate(zip(self.gene.steps, self.ops, strict=True), 1):
            inner[f"step{m}"] = (
                torch.zeros_like(x) if step.op == ZERO else op(*(inner[i] for i in step.inputs))
            )
        return self.output([inner[name] for name in self.gene.concat], x)


class FoundNet(nn.Module):
    """The fusion network a genotype describes, with a head of ``num_outputs`` logits."""

    def __init__(self, genotype: Genotype, num_outputs: int, dropout: float = 0.1):
        super().__init__()
        ops = {s.op for c in genotype.cells for s in c.steps}
        validate(genotype, known_ops=list_ops(), arity={o: get_op(o).arity for o in ops if o in list_ops()})
        self.genotype = genotype
        C, L = genotype.C, genotype.L
        channels = {f.name: f.channels for f in genotype.features}
        self.used = genotype.used_features()  # every feature forward() reads
        read = {i for c in genotype.cells for i in c.inputs} | set(genotype.output)
        self.projected = tuple(n for n in self.used if n in read)
        self.projections = nn.ModuleList(FeatureProjection(channels[n], C, dropout) for n in self.projected)
        self.cells = nn.ModuleList(FoundCell(c, C, L, dropout) for c in genotype.cells)
        self.head = Head(C, L, len(genotype.output), num_outputs, dropout) if genotype.output else None
        self.linear: nn.Sequential | None = None
        if genotype.linear:
            sizes = {f.name: f.channels * f.length for f in genotype.features}
            width = sum(sizes[n] for n in genotype.linear)
            self.linear = nn.Sequential(nn.BatchNorm1d(width, affine=False), nn.Linear(width, num_outputs))

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = [n for n in self.used if n not in features]
        if missing:
            raise KeyError(f"missing features {missing}; this network reads {list(self.used)}")
        states = {n: proj(features[n]) for n, proj in zip(self.projected, self.projections, strict=True)}
        B = features[self.used[0]].shape[0]
        L = self.genotype.L
        for n, (gene, cell) in enumerate(zip(self.genotype.cells, self.cells, strict=True), 1):
            x, y = (states[i].expand(B, L, states[i].shape[-1]) for i in gene.inputs)
            states[f"cell{n}"] = cell(x, y)
        if self.linear is None:
            return self.head([states[name] for name in self.genotype.output])
        flat = torch.cat([features[n].reshape(B, -1) for n in self.genotype.linear], dim=1)
        if self.head is None:  # the linear probe
            return self.linear(flat)
        return self.head([states[name] for name in self.genotype.output]) + self.linear(flat)

    def param_counts(self) -> dict[str, int]:
        """Parameters of the fusion part (projections + Cells + head norm) and of the classifier."""
        classifier = sum(p.numel() for p in self.head.classifier.parameters()) if self.head else 0
        if self.linear is not None:
            classifier += sum(p.numel() for p in self.linear.parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"fusion": total - classifier, "classifier": classifier, "total": total}
