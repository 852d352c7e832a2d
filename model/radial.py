"""Radial basis functions and cutoff functions of the interatomic distance (Angstrom)."""
from __future__ import annotations

import math

import torch
from torch import nn

# exp(-87) = 1.6e-38 is just above float32's smallest normal number (1.2e-38). Basis values below it
# are clamped to it: products with subnormal (denormal) operands run 10-100x slower on x86 CPUs,
# and a float32 Bernstein basis of K = 32 holds many of them (x^31 at 4.5 A is ~1e-57); the change of
# a value is below 1.6e-38, nothing a float32 or float64 result can see.
LOG_SMALLEST_NORMAL = -87.0


class BernsteinBasis(nn.Module):
    """K Bernstein polynomials in x = exp(-gamma r) (the SO3LR radial basis)."""

    def __init__(self, num_rbf: int, gamma: float):
        super().__init__()
        self.gamma = float(gamma)
        self.log_floor = LOG_SMALLEST_NORMAL   # an attribute: TorchScript does not read module globals
        k = torch.arange(num_rbf, dtype=torch.float64)
        n = num_rbf - 1
        log_binom = torch.lgamma(torch.tensor(n + 1.0, dtype=torch.float64)) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
        self.register_buffer("k", k)
        self.register_buffer("n_minus_k", n - k)
        self.register_buffer("log_binom", log_binom)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        # Log space: binomials grow large for K = 32. r > 0 for every real edge.
        log_x = -self.gamma * r.unsqueeze(-1)
        log_1mx = torch.log(-torch.expm1(log_x))
        log_b = self.log_binom + self.k * log_x + self.n_minus_k * log_1mx
        return torch.exp(log_b.clamp_min(self.log_floor))


class GaussianBasis(nn.Module):
    """K Gaussians with centres evenly spaced on [0, r_c]."""

    def __init__(self, num_rbf: int, cutoff: float):
        super().__init__()
        centers = torch.linspace(0.0, cutoff, num_rbf, dtype=torch.float64)
        width = cutoff / max(num_rbf - 1, 1)
        self.register_buffer("centers", centers)
        self.coeff = -0.5 / width ** 2
        self.log_floor = LOG_SMALLEST_NORMAL

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return torch.exp((self.coeff * (r.unsqueeze(-1) - self.centers) ** 2).clamp_min(self.log_floor))


class CosineCutoff(nn.Module):
    """Eq. 17: 0.5 (cos(pi r / r_c) + 1) for r < r_c, else 0."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        phi = 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0)
        return torch.where(r < self.cutoff, phi, torch.zeros_like(r))


class PhysNetCutoff(nn.Module):
    """1 - 6u^5 + 15u^4 - 10u^3 with u = r / r_c for r < r_c, else 0 (smooth to 2nd order)."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        u = r / self.cutoff
        phi = 1.0 - u ** 3 * (10.0 - 15.0 * u + 6.0 * u ** 2)
        return torch.where(r < self.cutoff, phi, torch.zeros_like(r))


def RadialBasis(kind: str, num_rbf: int, cutoff: float, gamma: float) -> nn.Module:
    if kind == "bernstein":
        return BernsteinBasis(num_rbf, gamma)
    if kind == "gaussian":
        return GaussianBasis(num_rbf, cutoff)
    raise ValueError(f"unknown radial basis {kind!r}; choose 'bernstein' or 'gaussian'")


def CutoffFunction(kind: str, cutoff: float) -> nn.Module:
    if kind == "cosine":
        return CosineCutoff(cutoff)
    if kind == "physnet":
        return PhysNetCutoff(cutoff)
    raise ValueError(f"unknown cutoff function {kind!r}; choose 'cosine' or 'physnet'")
