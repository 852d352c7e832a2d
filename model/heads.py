"""SO3LR's partial-charge and Hirshfeld-ratio heads (Kabylda, Frank et al., JACS 2025;
So3krates-torch blocks/output_block.py PartialChargesOutputHead, HirshfeldOutputHead).

Partial charges with charge conservation (PhysNet's correction, Unke & Meuwly 2019, Eq. 14):

    q~_i = Lin(silu(Lin(x_i))) + b[Z_i],   q_i = q~_i + (Q - sum_j q~_j) / N

so that sum_i q_i = Q, the total charge (a global sum: one process must see every atom).

Hirshfeld volume ratios (the dispersion term's atom-in-molecule scaling):

    h_i = | v[Z_i] + (u[Z_i] . Lin(silu(Lin(x_i)))) / sqrt(F/2) |
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as fn


class PartialChargeHead(nn.Module):
    def __init__(self, num_elements: int, features: int, width: int):
        super().__init__()
        self.hidden = nn.Linear(features, width)
        self.out = nn.Linear(width, 1)
        self.element_bias = nn.Embedding(num_elements, 1)   # b[Z]

    def raw(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """q~_i before the charge conservation (per atom: what each LAMMPS rank computes for its own
        atoms before the global sum)."""
        return self.out(fn.silu(self.hidden(x))).squeeze(-1) + self.element_bias(species).squeeze(-1)

    def forward(self, x: torch.Tensor, species: torch.Tensor, total_charge: float) -> torch.Tensor:
        """x (N, F), species (N,) -> charges (N,) in e, summing to total_charge."""
        q = self.raw(x, species)
        return q + (total_charge - q.sum()) / q.shape[0]


class HirshfeldRatioHead(nn.Module):
    def __init__(self, num_elements: int, features: int, width: int):
        super().__init__()
        half = features // 2
        self.hidden = nn.Linear(features, width // 2)
        self.out = nn.Linear(width // 2, half)
        self.element_query = nn.Embedding(num_elements, half)   # u[Z]
        self.element_shift = nn.Embedding(num_elements, 1)      # v[Z]
        self.inv_sqrt_half = 1.0 / math.sqrt(half)

    def forward(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """x (N, F), species (N,) -> Hirshfeld ratios (N,), >= 0."""
        k = self.out(fn.silu(self.hidden(x)))
        qk = (self.element_query(species) * k).sum(-1) * self.inv_sqrt_half
        return torch.abs(self.element_shift(species).squeeze(-1) + qk)
