"""SO3LR's dispersion: the vdW-QDO model with damping (Khabibrakhmanov et al., JCTC 2023,
10.1021/acs.jctc.3c00797) from predicted Hirshfeld ratios (Kabylda, Frank et al., JACS 2025;
So3krates-torch blocks/physical_potentials.py DispersionInteraction).

Free-atom polarisabilities alpha_Z and C6_Z (atomic units; the mlff reference tables below,
rounded to float32 as the reference stores them) are scaled by the Hirshfeld ratio h_i:

    alpha_i = h_i alpha_Z,  C6_i = h_i^2 C6_Z
    alpha_ij = (alpha_i + alpha_j) / 2,  C6_ij = 2 C6_i C6_j alpha_i alpha_j / (alpha_i^2 C6_j + alpha_j^2 C6_i)
    gamma_ij = 1 / (2 sigma^2),  sigma = b3 R^3 + b2 R^2 + b1 R + b0,  R = a_fs^(-4/21) alpha_ij^(1/7)
    C8 = 5 C6 / gamma,  C10 = 245 C6 / (8 gamma^2),  p = s 2 * 2.54 alpha_ij^(1/7)   (s = 1.2 in SO3LR)
    E_ij = -E_h [C6/(R^6 + p^6) + C8/(R^8 + p^8) + C10/(R^10 + p^10)] w(r),   R = r / a_0

with w the smooth switch from 1 at r_lr - d (d = 2 A, the damping width) to 0 at r_lr. Half of
E_ij goes to each atom of the pair (So3krates.long_range_energies).
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from .zbl import BOHR_A, smooth_switch

HARTREE_EV = 27.211386245988
FINE_STRUCTURE = 0.0072973525693
SIGMA_FIT = (-0.00433008, 0.24428889, 0.04125273, -0.00078893)   # b0..b3

# Free-atom reference data for Z = 1..102 (a_0^3 and E_h a_0^6), from mlff's dispersion_ref_data.
ALPHA = (
    4.5, 1.38, 164.2, 38.0, 21.0, 12.0, 7.4, 5.4, 3.8, 2.67, 162.7, 71.0, 60.0, 37.0, 25.0, 19.6,
    15.0, 11.1, 292.9, 160.0, 120.0, 98.0, 84.0, 78.0, 63.0, 56.0, 50.0, 48.0, 42.0, 40.0, 60.0,
    41.0, 29.0, 25.0, 20.0, 16.8, 319.2, 199.0, 126.74, 119.97, 101.6, 88.42, 80.08, 65.89, 56.1,
    23.68, 50.6, 39.7, 70.22, 55.95, 43.67, 37.65, 35.0, 27.3, 399.9, 275.0, 213.7, 204.7, 215.8,
    208.4, 200.2, 192.1, 184.2, 158.3, 169.5, 164.64, 156.3, 150.2, 144.3, 138.9, 137.2, 99.52,
    82.53, 71.04, 63.04, 55.06, 42.51, 39.68, 36.5, 33.9, 69.92, 61.8, 49.02, 45.01, 38.93, 33.54,
    317.8, 246.2, 203.3, 217.0, 154.4, 127.8, 150.5, 132.2, 131.2, 143.6, 125.3, 121.5, 117.5,
    113.4, 109.4, 105.4,
)
C6 = (
    6.5, 1.46, 1387.0, 214.0, 99.5, 46.6, 24.2, 15.6, 9.52, 6.38, 1556.0, 627.0, 528.0, 305.0,
    185.0, 134.0, 94.6, 64.3, 3897.0, 2221.0, 1383.0, 1044.0, 832.0, 602.0, 552.0, 482.0, 408.0,
    373.0, 253.0, 284.0, 498.0, 354.0, 246.0, 210.0, 162.0, 129.6, 4691.0, 3170.0, 1968.58, 1677.91,
    1263.61, 1028.73, 1390.87, 609.75, 469.0, 157.5, 339.0, 452.0, 707.05, 587.42, 459.32, 396.0,
    385.0, 285.9, 6846.0, 5727.0, 3884.5, 3708.33, 3911.84, 3908.75, 3847.68, 3708.69, 3511.71,
    2781.53, 3124.41, 2984.29, 2839.95, 2724.12, 2576.78, 2387.53, 2371.8, 1274.8, 1019.92, 847.93,
    710.2, 596.67, 359.1, 347.1, 298.0, 392.0, 717.44, 697.0, 571.0, 530.92, 457.53, 390.63,
    4224.44, 4851.32, 3604.41, 4047.54, 2876.77, 2375.89, 3102.12, 2820.47, 2794.0, 3150.95, 2756.0,
    2702.57, 2626.59, 2548.62, 2468.69, 2386.8,
)


class Dispersion(nn.Module):
    def __init__(self, elements: List[int], cutoff: float, damping: float, scale: float):
        super().__init__()
        self.cutoff = float(cutoff)
        self.cuton = float(cutoff) - float(damping)
        self.scale = float(scale)
        self.radius_factor = FINE_STRUCTURE ** (-4.0 / 21)
        self.b0, self.b1, self.b2, self.b3 = SIGMA_FIT
        self.hartree = HARTREE_EV
        self.bohr = BOHR_A
        # float32 first: the reference keeps these tables in float32 and casts them.
        alpha = torch.tensor([ALPHA[z - 1] for z in elements], dtype=torch.float32)
        c6 = torch.tensor([C6[z - 1] for z in elements], dtype=torch.float32)
        self.register_buffer("alpha_free", alpha.to(torch.float64))
        self.register_buffer("c6_free", c6.to(torch.float64))

    def pair_energy(self, r: torch.Tensor, alpha_i: torch.Tensor, c6_i: torch.Tensor, alpha_j: torch.Tensor,
                    c6_j: torch.Tensor) -> torch.Tensor:
        alpha = 0.5 * (alpha_i + alpha_j)
        c6 = 2 * c6_i * c6_j * alpha_i * alpha_j / (alpha_i * alpha_i * c6_j + alpha_j * alpha_j * c6_i)
        radius = self.radius_factor * torch.pow(alpha, 1.0 / 7)
        sigma = self.b3 * radius ** 3 + self.b2 * radius * radius + self.b1 * radius + self.b0
        gamma = 0.5 / (sigma * sigma)
        c8 = 5 / gamma * c6
        c10 = 245 / 8 / (gamma * gamma) * c6
        p = self.scale * 2 * 2.54 * torch.pow(alpha, 1.0 / 7)
        big_r = r / self.bohr
        potential = -(c6 / (big_r ** 6 + p ** 6) + c8 / (big_r ** 8 + p ** 8) + c10 / (big_r ** 10 + p ** 10))
        return self.hartree * potential * smooth_switch(r, self.cuton, self.cutoff)

    def forward(self, r: torch.Tensor, ratios: torch.Tensor, species: torch.Tensor, idx_i: torch.Tensor,
                idx_j: torch.Tensor) -> torch.Tensor:
        """r (P,) distances of the long-range pairs i <- j, Hirshfeld ratios and species of all atoms -> (P,)
        pair energies E_ij, eV (So3krates.long_range_energies gives half of each to each end)."""
        alpha = self.alpha_free.to(r.dtype).index_select(0, species) * ratios
        c6 = self.c6_free.to(r.dtype).index_select(0, species) * ratios * ratios
        return self.pair_energy(r, alpha.index_select(0, idx_i), c6.index_select(0, idx_i),
                                alpha.index_select(0, idx_j), c6.index_select(0, idx_j))
