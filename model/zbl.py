"""ZBL screened nuclear repulsion, as SO3LR adds it to the network's atomic energies.

Pair energy (Ziegler, Biersack, Littmark; SO3LR's ZBLRepulsion, So3krates-torch
blocks/physical_potentials.py):

    E_ij = w(r) phi(r) k_e Z_i Z_j / r * sum_k c_k exp(-a_k r (Z_i^p + Z_j^p) d)

with k_e = 14.3996 eV A, the universal coefficients c = (0.1818, 0.5099, 0.2802, 0.02817)
(normalised to sum 1), a = (3.2, 0.9423, 0.4028, 0.2016), p = 0.23 and d = 1 / (0.8854 a_0),
all learnable (stored through softplus, so they stay positive) and initialised to these values;
phi the model's cutoff function and w a smooth switch from 1 at r = 0 to 0 at r_sw
(zbl_switch_radius, 1.5 A by default):

    w(r) = s(1 - r/r_sw) / (s(1 - r/r_sw) + s(r/r_sw)),  s(x) = exp(-1/x) for x > 0, else 0,

infinitely differentiable, so energy and forces are continuous everywhere.

Each pair's energy is shared equally by its two atoms. With `mirrored` (undirected pairs, the
potential's half list) an edge gives E_ij / 2 to i and to j; with directed edges i <- j (both
directions listed, or only the edges whose receiver a process owns) an edge gives E_ij / 2 to
its receiver i.
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn
from torch.nn import functional as fn

BOHR_A = 0.5291772105638411      # a_0 in Angstrom
COULOMB_EV_A = 14.399645351950548  # e^2 / (4 pi eps_0) in eV Angstrom
ZBL_A = (3.2, 0.9423, 0.4028, 0.2016)
ZBL_C = (0.1818, 0.5099, 0.2802, 0.02817)
ZBL_P = 0.23
ZBL_D = 1.0 / (0.8854 * BOHR_A)


def softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _s(x: torch.Tensor) -> torch.Tensor:
    """exp(-1/x) for x > 0, else 0; the clamp keeps the unused branch (and its gradient) finite."""
    return torch.where(x > 0, torch.exp(-1.0 / x.clamp_min(1e-12)), torch.zeros_like(x))


def smooth_switch(r: torch.Tensor, r_on: float, r_off: float) -> torch.Tensor:
    """1 at r <= r_on, 0 at r >= r_off, C-infinity in between (SO3LR's switching_fn)."""
    c = (r - r_on) / (r_off - r_on)
    on, off = _s(1.0 - c), _s(c)
    return on / (on + off)


def smooth_step_off(r: torch.Tensor, r_off: float) -> torch.Tensor:
    """w(r): 1 at r <= 0, 0 at r >= r_off (smooth_switch with r_on = 0)."""
    return smooth_switch(r, 0.0, r_off)


class ZBLRepulsion(nn.Module):
    """Per-atom ZBL energies (eV) from the edges: forward(r, phi, z, idx_i, idx_j, num_atoms, mirrored)."""

    def __init__(self, elements: List[int], switch_radius: float = 1.5):
        super().__init__()
        self.switch_radius = float(switch_radius)
        self.coulomb = COULOMB_EV_A
        self.a_raw = nn.Parameter(torch.tensor([softplus_inverse(a) for a in ZBL_A], dtype=torch.float64))
        self.c_raw = nn.Parameter(torch.tensor([softplus_inverse(c) for c in ZBL_C], dtype=torch.float64))
        self.p_raw = nn.Parameter(torch.tensor(softplus_inverse(ZBL_P), dtype=torch.float64))
        self.d_raw = nn.Parameter(torch.tensor(softplus_inverse(ZBL_D), dtype=torch.float64))
        # Nuclear charge of each model element index.
        self.register_buffer("charge", torch.tensor([float(z) for z in elements], dtype=torch.float64))

    def pair_energy(self, r: torch.Tensor, phi: torch.Tensor, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        """E_ij for each edge (not halved)."""
        a = fn.softplus(self.a_raw)
        c = fn.softplus(self.c_raw)
        c = c / c.sum()
        p = fn.softplus(self.p_raw)
        d = fn.softplus(self.d_raw)
        screening_length_inv = (torch.pow(z_i, p) + torch.pow(z_j, p)) * d          # 1 / a_ij
        screening = (c * torch.exp(-(r * screening_length_inv).unsqueeze(-1) * a)).sum(-1)
        coulomb = self.coulomb * z_i * z_j / r
        return smooth_step_off(r, self.switch_radius) * phi * coulomb * screening

    def forward(self, r: torch.Tensor, phi: torch.Tensor, species: torch.Tensor, idx_i: torch.Tensor,
                idx_j: torch.Tensor, mirrored: bool) -> torch.Tensor:
        """r, phi (E,) distances and cutoff-function values; species (N,) model element indices;
        idx_i/idx_j (E,) receiver/sender -> (N,) energies in the dtype of r."""
        z = self.charge.to(r.dtype).index_select(0, species)
        half = 0.5 * self.pair_energy(r, phi, z.index_select(0, idx_i), z.index_select(0, idx_j))
        out = torch.zeros(species.shape[0], dtype=r.dtype, device=r.device).index_add_(0, idx_i, half)
        if mirrored:
            out.index_add_(0, idx_j, half)
        return out
