"""Electrostatics between SO3LR's partial charges (Kabylda, Frank et al., JACS 2025; as
So3krates-torch computes it with a long-range cutoff: blocks/physical_potentials.py,
CoulombErfShiftedForceSmooth). Real space only; no Ewald/PME sum.

Pair energy of two partial charges q_i, q_j at distance r < r_lr (0 beyond):

    V(r)  = erf(r / sigma) / r                     (Gaussian-damped Coulomb, sigma = 4 A)
    E_ij  = k_e q_i q_j [ V(r) - V(r_lr) - (1 - f(r)) V'(r_lr) (r - r_lr) ]

with f the smooth switch from 1 at r_on = 0.45 r_lr to 0 at r_lr: the plain shifted potential
at short range, the shifted-force one (zero force at the cutoff) near r_lr. Half of E_ij goes to
each atom of the pair (So3krates.long_range_energies).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .zbl import COULOMB_EV_A, smooth_switch


class Electrostatics(nn.Module):
    def __init__(self, cutoff: float, sigma: float):
        super().__init__()
        self.cutoff = float(cutoff)
        self.cuton = 0.45 * float(cutoff)
        self.sigma = float(sigma)
        self.coulomb = COULOMB_EV_A
        rc, s = self.cutoff, self.sigma
        self.shift = math.erf(rc / s) / rc                                   # V(r_lr)
        self.force_shift = (2 * rc * math.exp(-(rc / s) ** 2) / (math.sqrt(math.pi) * s)
                            - math.erf(rc / s)) / rc ** 2                     # V'(r_lr)

    def pair_energy(self, r: torch.Tensor, q_i: torch.Tensor, q_j: torch.Tensor) -> torch.Tensor:
        f = smooth_switch(r, self.cuton, self.cutoff)
        potential = torch.erf(r / self.sigma) / r - self.shift - (1.0 - f) * self.force_shift * (r - self.cutoff)
        energy = self.coulomb * q_i * q_j * potential
        return torch.where(r < self.cutoff, energy, torch.zeros_like(energy))

    def forward(self, r: torch.Tensor, charges: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor
                ) -> torch.Tensor:
        """r (P,) distances of the long-range pairs i <- j, charges of all atoms -> (P,) pair energies E_ij, eV
        (So3krates.long_range_energies gives half of each to each end)."""
        return self.pair_energy(r, charges.index_select(0, idx_i), charges.index_select(0, idx_j))
