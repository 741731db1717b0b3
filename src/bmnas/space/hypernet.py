"""The hypernet: every edge and op mixed (docs/DESIGN.md §3–§4, §6; paper eqs. 1–2, 9–10).

States ``S = [f_1 … f_K, cell_1 … cell_N]``. Cell n's input slot ``s ∈ {x, y}`` is

    ``in_s = Σ_i w_s(i) · S_i``,   ``w_s(i) = softmax_g(α[n, s, i])[identity]``

(the ``zero`` edge contributes nothing and is never materialised). Step m of a Cell mixes its
inputs the same way with β over ``[x, y, step_1 … step_{m-1}]`` and outputs
``Σ_f softmax(γ_m)[f] · f(in_x, in_y)``, skipping ``zero``.

Speed (benchmarks/README.md): no zero edge or zero op is ever materialised. Every slot
mixture is a small matmul of its gate matrix with the stacked predecessors (the feature part of
all N·S Cell slots is one ``(N·S, K)`` matmul with the stacked projected features; Cell and step
slots stay stacked as ``(S, B, L, C)`` and are split with ``unbind``, whose backward is one stack
instead of a zero-filled full-size gradient per indexing), and a step's op mixture is one matmul
of the op weights with the stacked op outputs. Ops run on channels-last tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..core.genotype import OUR_RULES, DeriveRules, FeatureSpec, Genotype
from .cells import CellOutput, FeatureProjection, Head
from .derive import derive
from .ops import ZERO, create_op, get_op

INPUT_MODES = ("separate", "shared")
RELAXATIONS = ("softmax", "gate")


def edge_weights(logits: torch.Tensor, relaxation: str = "gate") -> torch.Tensor:
    """Weight of each predecessor of an input slot, from its edge logits ``(…, P, 2)``.

    * ``gate`` (the paper's eq. 1–2): every edge on its own,
      ``w(i) = softmax(α_i)[identity] = σ(α_i,identity − α_i,zero)``; weights need not sum to 1,
      so several predecessors can be "on" together and none has to win.
    * ``softmax``: the predecessors compete for the slot, ``w(i) = softmax_i(α_i,identity)``
      (DARTS' mixed edge; the zero logit is unused); weights sum to 1 over the P predecessors.
    """
    if relaxation == "softmax":
        return logits[..., 0].softmax(-1)
    return torch.sigmoid(logits[..., 0] - logits[..., 1])


def mask_edge(
    weights: Sequence[torch.Tensor], cell: int, slot: int, pred: int, relaxation: str = "gate"
) -> list[torch.Tensor]:
    """Cell slots' edge weights with one edge removed: ``w[cell][slot, pred] = 0``.

    ``gate``: the other edges keep their weights (each is on its own). ``softmax``: the slot's
    other weights are renormalised to sum to 1, ``w'(i) = w(i) / Σ_{j ≠ pred} w(j)``, as if the
    edge had never been a candidate. The other Cells' weights are returned as they are (not copied).
    """
    out = list(weights)
    w = weights[cell].clone()
    w[slot, pred] = 0.0
    if relaxation == "softmax":
        w[slot] = w[slot] / w[slot].sum().clamp_min(torch.finfo(w.dtype).tiny)
    out[cell] = w
    return out


def mask_op(weights: Sequence[torch.Tensor], cell: int, step: int, op: int) -> list[torch.Tensor]:
    """Cells' op weights (per Cell ``(M, |ops|)``, softmax(γ)) with op ``op`` of step ``step`` removed:
    ``w'(f) = w(f) / Σ_{g ≠ op} w(g)`` for the step's other ops, ``w'(op) = 0``."""
    out = list(weights)
    w = weights[cell].clone()
    w[step, op] = 0.0
    w[step] = w[step] / w[step].sum().clamp_min(torch.finfo(w.dtype).tiny)
    out[cell] = w
    return out


def fix_inputs(weights: Sequence[torch.Tensor], cell: int, pair: tuple[int, int]) -> list[torch.Tensor]:
    """Cell slots' edge weights with Cell ``cell`` made discrete: slot x reads only ``pair[0]``, slot y
    only ``pair[1]`` (weight 1, every other edge 0), as the derived network's Cell reads them; a
    single slot (``input_mode: shared``) reads the sum of both."""
    out = list(weights)
    w = torch.zeros_like(weights[cell])
    if w.shape[0] == 1:
        w[0, list(pair)] = 1.0
    else:
        w[0, pair[0]] = w[1, pair[1]] = 1.0
    out[cell] = w
    return out


class ArchParameters(nn.Module):
    """α, β, γ as ``nn.Parameter``s, apart from the weights (checkpointed, moved, DDP-safe).

    * ``alpha[n]``: ``(S, K + n, 2)`` edge logits of Cell n's input slots over its predecessors.
    * ``beta[n·M + m]``: ``(S_step, 2 + m, 2)`` edge logits of step m's input slots.
    * ``gamma[n]``: ``(M, |ops|)`` op logits.
    """

    def __init__(
        self,
        num_features: int,
        num_cells: int,
        num_steps: int,
        num_ops: int,
        cell_slots: int,
        step_slots: int,
        init_scale: float = 1e-3,
    ):
        super().__init__()
        self.num_cells, self.num_steps = num_cells, num_steps

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(init_scale * torch.randn(*shape))

        self.alpha = nn.ParameterList([param(cell_slots, num_features + n, 2) for n in range(num_cells)])
        self.beta = nn.ParameterList(
            [param(step_slots, 2 + m, 2) for _ in range(num_cells) for m in range(num_steps)]
        )
        self.gamma = nn.ParameterList([param(num_steps, num_ops) for _ in range(num_cells)])

    def betas(self, n: int) -> list[nn.Parameter]:
        return [self.beta[n * self.num_steps + m] for m in range(self.num_steps)]

    @torch.no_grad()
    def softmaxed(self, relaxation: str = "gate") -> dict[str, list]:
        """Edge weights of α and β and softmax(γ), as nested lists (for history and plots)."""
        return {
            "alpha": [edge_weights(a, relaxation).tolist() for a in self.alpha],
            "beta": [
                [edge_weights(b, relaxation).tolist() for b in self.betas(n)] for n in range(self.num_cells)
            ],
            "gamma": [g.softmax(-1).tolist() for g in self.gamma],
        }


class SearchCell(nn.Module):
    """A Cell of the hypernet: M mixed steps over ``[x, y, step_1 …]`` and the Cell output."""

    def __init__(
        self,
        C: int,
        L: int,
        num_steps: int,
        ops: Sequence[str],
        inner_multiplier: int,
        dropout: float,
        shared: bool,
        relaxation: str = "gate",
    ):
        super().__init__()
        self.relaxation = relaxation
        self.op_names = list(ops)
        self.arity = [get_op(o).arity for o in ops]
        self.shared = shared
        self.steps = nn.ModuleList(
            nn.ModuleDict({o: create_op(o, C, L, dropout) for o in ops if o != ZERO})
            for _ in range(num_steps)
        )
        self.inner_multiplier = inner_multiplier
        self.output = CellOutput(C, L, inner_multiplier, dropout)
        # the ops a mixed step computes (zero is skipped), with their arity and index in γ
        self._mixed = [(o, self.arity[f]) for f, o in enumerate(self.op_names) if o != ZERO]
        nonzero = [f for f, o in enumerate(self.op_names) if o != ZERO]
        self.register_buffer("_nonzero", torch.tensor(nonzero, dtype=torch.long), persistent=False)
        self._op_override: torch.Tensor | None = None  # (M, |ops|) op weights, see HyperNet.op_override

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, betas: Sequence[torch.Tensor], gamma: torch.Tensor
    ) -> torch.Tensor:
        return self.forward_slots(torch.stack([x, y]), betas, gamma)

    def forward_slots(
        self, xy: torch.Tensor, betas: Sequence[torch.Tensor], gamma: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`forward` with the input slots stacked: ``xy`` is ``(2, B, L, C)`` = ``[x; y]``, or
        ``(1, B, L, C)`` when ``x = y`` (the ``shared`` input mode).

        Every slot mixture is one small matmul of the gate matrix with the stacked states, and the
        op mixture one matmul of the op weights with the stacked op outputs (no per-edge products).
        """
        R, shape = xy.shape[0], xy.shape[1:]
        flat_xy = xy.reshape(R, -1)
        op_p = gamma.softmax(-1) if self._op_override is None else self._op_override
        op_w = op_p.index_select(1, self._nonzero)  # (M, |ops| − zero)
        outs: list[torch.Tensor] = []  # step outputs, each (1, B·L·C)
        for m, mixed in enumerate(self.steps):
            w = edge_weights(betas[m], self.relaxation)  # (S_step, 2 + m) over [x, y, step_1 … step_{m-1}]
            w_xy = w[:, :2] if R == 2 else w[:, :2].sum(1, keepdim=True)
            # unbind, not indexing: the backward of one unbind is one stack, that of an index a
            # zero-filled full-size gradient per use
            slots = mix_rows(w_xy @ flat_xy, w[:, 2:], outs).view(-1, *shape).unbind(0)
            last = len(slots) - 1
            results = [mixed[name](*(slots[min(s, last)] for s in range(k))) for name, k in self._mixed]
            if not results:  # a pool of zero alone
                outs.append(flat_xy.new_zeros(1, flat_xy.shape[1]))
                continue
            outs.append(op_w[m : m + 1] @ torch.stack(results).view(len(results), -1))
        return self.output([o.view(shape) for o in outs[-self.inner_multiplier :]], xy.unbind(0)[0])


def mix_rows(base: torch.Tensor, w: torch.Tensor, rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """``base + w @ [rows]``: add to each row s of ``base`` (``(S, D)``) ``Σ_j w[s, j] · rows[j]``.

    ``rows`` are ``(1, D)`` (or ``(D,)``-sized) tensors; one is added as an outer product, several
    as one matmul with them stacked.
    """
    if not rows:
        return base
    src = rows[0].reshape(1, -1) if len(rows) == 1 else torch.stack(rows).reshape(len(rows), -1)
    return torch.addmm(base, w, src)


class HyperNet(nn.Module):
    """The continuous search network over ``features`` (name → ``(C_in, L_k)``)."""

    def __init__(
        self,
        features: Sequence[FeatureSpec],
        num_outputs: int,
        C: int = 64,
        L: int = 8,
        num_cells: int = 2,
        num_steps: int = 2,
        ops: Sequence[str] = ("sum",),
        inner_multiplier: int = 1,
        multiplier: int | None = None,
        dropout: float = 0.1,
        input_mode: str = "separate",
        relaxation: str = "gate",
    ):
        super().__init__()
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}")
        if relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
        self.relaxation = relaxation
        if len(features) < 2:
            raise ValueError(f"the search needs at least 2 features, got {[f.name for f in features]}")
        if not 1 <= inner_multiplier <= num_steps:
            raise ValueError(f"inner_multiplier must be in [1, {num_steps}], got {inner_multiplier}")
        multiplier = multiplier or num_cells
        if not 1 <= multiplier <= num_cells:
            raise ValueError(f"multiplier must be in [1, {num_cells}], got {multiplier}")
        for o in ops:
            get_op(o)  # clear error for unknown names
        self.features = tuple(features)
        self.C, self.L = C, L
        self.ops = tuple(ops)
        self.num_cells, self.num_steps = num_cells, num_steps
        self.inner_multiplier, self.multiplier = inner_multiplier, multiplier
        self.input_mode = input_mode
        shared = input_mode == "shared"
        step_slots = 1 if shared else max([2] + [get_op(o).arity for o in ops if o != ZERO])
        self.arch = ArchParameters(
            len(features), num_cells, num_steps, len(ops), 1 if shared else 2, step_slots
        )
        self.projections = nn.ModuleList(FeatureProjection(f.channels, C, dropout) for f in features)
        self.cells = nn.ModuleList(
            SearchCell(C, L, num_steps, ops, inner_multiplier, dropout, shared, relaxation)
            for _ in range(num_cells)
        )
        self.head = Head(C, L, multiplier, num_outputs, dropout)
        self._full = [i for i, f in enumerate(features) if f.length != 1]
        self._vec = [i for i, f in enumerate(features) if f.length == 1]
        self.register_buffer("_full_idx", torch.tensor(self._full, dtype=torch.long), persistent=False)
        self.register_buffer("_vec_idx", torch.tensor(self._vec, dtype=torch.long), persistent=False)
        self._alpha_override: list[torch.Tensor] | None = None

    # -- parameter groups --------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.arch.parameters())

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch.parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # -- forward -----------------------------------------------------------------------------
    def project(self, features: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Project every feature: name → ``(B, L_k, C_in)`` becomes a list of ``(B, L_k, C)``."""
        missing = [f.name for f in self.features if f.name not in features]
        if missing:
            raise KeyError(
                f"missing features {missing}; the hypernet needs {[f.name for f in self.features]}"
            )
        return [proj(features[f.name]) for f, proj in zip(self.features, self.projections, strict=True)]

    def alpha_weights(self) -> list[torch.Tensor]:
        """Per Cell n, the weights ``(S, K + n)`` of its input slots over all its predecessors
        (those of :meth:`alpha_override` inside its block)."""
        if self._alpha_override is not None:
            return list(self._alpha_override)
        return [edge_weights(a, self.relaxation) for a in self.arch.alpha]

    @contextlib.contextmanager
    def alpha_override(self, weights: Sequence[torch.Tensor]) -> Iterator[None]:
        """Inside the block, every forward pass mixes the Cell slots with ``weights`` (per Cell n a
        ``(S, K + n)`` tensor, e.g. :func:`mask_edge`'s) instead of α's edge weights; the rest of the
        forward is unchanged. α itself is untouched and gets no gradient from such a pass."""
        expected = [tuple(a.shape[:-1]) for a in self.arch.alpha]
        got = [tuple(w.shape) for w in weights]
        if got != expected:
            raise ValueError(f"alpha override: expected weights of shapes {expected}, got {got}")
        previous, self._alpha_override = self._alpha_override, [w.detach() for w in weights]
        try:
            yield
        finally:
            self._alpha_override = previous

    def mix_features(self, projected: list[torch.Tensor], weights: list[torch.Tensor]) -> torch.Tensor:
        """Feature part of every Cell slot's input, ``(N, S, B, L, C)``, as one gated matmul."""
        B = projected[0].shape[0]
        K = len(projected)
        gates = torch.stack([w[:, :K] for w in weights])  # (N, S, K)
        N, S, _ = gates.shape
        gates = gates.reshape(N * S, K)
        out = None
        for idx, rows, L_k in ((self._full_idx, self._full, self.L), (self._vec_idx, self._vec, 1)):
            if not rows:
                continue
            stacked = torch.stack([projected[i] for i in rows])  # (K_g, B, L_k, C)
            mixed = (gates.index_select(1, idx) @ stacked.view(len(rows), -1)).view(N, S, B, L_k, self.C)
            out = mixed if out is None else out + mixed
        return out.expand(N, S, B, self.L, self.C)

    def forward_cells(self, features: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        projected = self.project(features)
        weights = self.alpha_weights()
        base = self.mix_features(projected, weights)
        K = len(projected)
        cells: list[torch.Tensor] = []
        for n, (cell, slots) in enumerate(zip(self.cells, base.unbind(0), strict=True)):  # slots (S, B, L, C)
            w_cells = weights[n][:, K:]  # (S, n): weights of the earlier Cells
            if cells:
                slots = mix_rows(slots.reshape(slots.shape[0], -1), w_cells, cells).view_as(slots)
            cells.append(cell.forward_slots(slots, self.arch.betas(n), self.arch.gamma[n]))
        return cells

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        cells = self.forward_cells(features)
        return self.head(cells[-self.multiplier :])

    def op_weights(self) -> list[torch.Tensor]:
        """Per Cell, the op weights ``(M, |ops|)`` its steps mix with (softmax(γ), or the override's)."""
        return [
            g.softmax(-1) if c._op_override is None else c._op_override
            for g, c in zip(self.arch.gamma, self.cells, strict=True)
        ]

    @contextlib.contextmanager
    def op_override(self, weights: Sequence[torch.Tensor]) -> Iterator[None]:
        """Inside the block, every Cell's steps mix their ops with ``weights`` (per Cell an
        ``(M, |ops|)`` tensor, e.g. :func:`mask_op`'s) instead of softmax(γ); nothing else changes."""
        expected = [tuple(g.shape) for g in self.arch.gamma]
        got = [tuple(w.shape) for w in weights]
        if got != expected:
            raise ValueError(f"op override: expected weights of shapes {expected}, got {got}")
        previous = [c._op_override for c in self.cells]
        for c, w in zip(self.cells, weights, strict=True):
            c._op_override = w.detach()
        try:
            yield
        finally:
            for c, w in zip(self.cells, previous, strict=True):
                c._op_override = w

    # -- derivation --------------------------------------------------------------------------
    @torch.no_grad()
    def genotype(
        self,
        rules: DeriveRules = OUR_RULES,
        noise: torch.Generator | None = None,
        temperature: float = 1.0,
        alpha: Sequence[np.ndarray] | None = None,
        gamma: Sequence[np.ndarray] | None = None,
    ) -> Genotype:
        """The discrete architecture the current α, β, γ select (rules: :func:`bmnas.space.derive.derive`;
        ``rules``: :class:`~bmnas.core.genotype.DeriveRules`, the search config's by default).

        With ``noise``, a *sample* instead of the argmax: Gumbel noise ``temperature · G`` is added to
        every edge's identity logit and every op logit before deriving (Gumbel-max: a slot then
        picks predecessor i with probability ``softmax_i(logit_i / temperature)``).

        ``alpha``: per Cell, positive scores ``(S, K + n)`` that replace α's edge weights in the
        derivation (e.g. perturbation selection's, :mod:`bmnas.method.select`); ``gamma``: per Cell,
        ``(M, |ops|)`` scores replacing γ (only their argmax counts).
        """
        arch, r = self.arch, self.relaxation

        def perturb(logits: torch.Tensor, edge: bool) -> torch.Tensor:
            if noise is None:
                return logits
            u = torch.rand(logits.shape[:-1] if edge else logits.shape, generator=noise).clamp_(
                1e-9, 1 - 1e-9
            )
            g = -torch.log(-torch.log(u)) * temperature
            if not edge:
                return logits + g
            out = logits.clone()
            out[..., 0] += g
            return out

        return derive(
            alpha=list(alpha)
            if alpha is not None
            else [edge_weights(perturb(a, True), r).cpu().numpy() for a in arch.alpha],
            beta=[
                [edge_weights(perturb(b, True), r).cpu().numpy() for b in arch.betas(n)]
                for n in range(self.num_cells)
            ],
            gamma=list(gamma) if gamma is not None else [perturb(g, False).cpu().numpy() for g in arch.gamma],
            features=self.features,
            ops=self.ops,
            C=self.C,
            L=self.L,
            arity={o: get_op(o).arity for o in self.ops},
            inner_multiplier=self.inner_multiplier,
            multiplier=self.multiplier,
            shared=self.input_mode == "shared",
            rules=rules,
        )
