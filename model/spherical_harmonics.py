"""Real, orthonormal spherical harmonics up to l = 4 (no Condon-Shortley phase).

Components of degree l are ordered m = -l..l; for l = 1 that is (y, z, x).
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn


def _degree(l: int, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> List[torch.Tensor]:
    if l == 0:
        return [0.0 * x + 0.5 * math.sqrt(1.0 / math.pi)]   # also a _Polynomial constant
    if l == 1:
        c = math.sqrt(3.0 / (4.0 * math.pi))
        return [c * y, c * z, c * x]
    if l == 2:
        c = 0.5 * math.sqrt(15.0 / math.pi)
        return [c * x * y, c * y * z, 0.25 * math.sqrt(5.0 / math.pi) * (3.0 * z * z - 1.0),
                c * x * z, 0.5 * c * (x * x - y * y)]
    if l == 3:
        z2 = z * z
        return [0.25 * math.sqrt(35.0 / (2 * math.pi)) * y * (3 * x * x - y * y),
                0.5 * math.sqrt(105.0 / math.pi) * x * y * z,
                0.25 * math.sqrt(21.0 / (2 * math.pi)) * y * (5 * z2 - 1),
                0.25 * math.sqrt(7.0 / math.pi) * (5 * z2 * z - 3 * z),
                0.25 * math.sqrt(21.0 / (2 * math.pi)) * x * (5 * z2 - 1),
                0.25 * math.sqrt(105.0 / math.pi) * (x * x - y * y) * z,
                0.25 * math.sqrt(35.0 / (2 * math.pi)) * x * (x * x - 3 * y * y)]
    if l == 4:
        x2, y2, z2 = x * x, y * y, z * z
        return [0.75 * math.sqrt(35.0 / math.pi) * x * y * (x2 - y2),
                0.75 * math.sqrt(35.0 / (2 * math.pi)) * y * z * (3 * x2 - y2),
                0.75 * math.sqrt(5.0 / math.pi) * x * y * (7 * z2 - 1),
                0.75 * math.sqrt(5.0 / (2 * math.pi)) * y * z * (7 * z2 - 3),
                (3.0 / 16.0) * math.sqrt(1.0 / math.pi) * (35 * z2 * z2 - 30 * z2 + 3),
                0.75 * math.sqrt(5.0 / (2 * math.pi)) * x * z * (7 * z2 - 3),
                0.375 * math.sqrt(5.0 / math.pi) * (x2 - y2) * (7 * z2 - 1),
                0.75 * math.sqrt(35.0 / (2 * math.pi)) * x * z * (x2 - 3 * y2),
                (3.0 / 16.0) * math.sqrt(35.0 / math.pi) * (x2 * (x2 - 3 * y2) - y2 * (3 * x2 - y2))]
    raise ValueError(f"spherical harmonics are implemented up to l = 4, got l = {l}")


class _Polynomial:
    """A polynomial in x, y, z as {(a, b, c): coefficient of x^a y^b z^c}: `_degree` evaluated on it
    gives each harmonic's exact coefficients (the formulas above stay the definition)."""

    def __init__(self, terms):
        self.terms = {k: v for k, v in terms.items() if v != 0.0}

    @staticmethod
    def _lift(other) -> "_Polynomial":
        return other if isinstance(other, _Polynomial) else _Polynomial({(0, 0, 0): float(other)})

    def __add__(self, other):
        out = dict(self.terms)
        for k, v in self._lift(other).terms.items():
            out[k] = out.get(k, 0.0) + v
        return _Polynomial(out)

    def __mul__(self, other):
        out: dict = {}
        for (a, b, c), v in self.terms.items():
            for (d, e, f), w in self._lift(other).terms.items():
                out[(a + d, b + e, c + f)] = out.get((a + d, b + e, c + f), 0.0) + v * w
        return _Polynomial(out)

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-self._lift(other))

    def __rsub__(self, other):
        return self._lift(other) - self

    __radd__ = __add__
    __rmul__ = __mul__


class SphericalHarmonics(nn.Module):
    """Y_l(u) for each l in `degrees`, concatenated: (E, 3) unit vectors -> (E, sum(2l+1)).

    Computed as (monomials x^a y^b z^c of u) @ (their coefficients): a handful of tensor operations
    instead of one per term of the formulas (~100 for l <= 4, each a node of the force training's
    double backward). The same polynomials, so the same values and derivatives to round-off."""

    def __init__(self, degrees: List[int]):
        super().__init__()
        self.degrees = list(degrees)
        x, y, z = (_Polynomial({e: 1.0}) for e in [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
        columns = []
        for l in self.degrees:
            columns.extend(_degree(l, x, y, z))
        monomials = sorted({k for p in columns for k in p.terms})
        coefficients = torch.tensor([[p.terms.get(k, 0.0) for p in columns] for k in monomials], dtype=torch.float64)
        # Not persistent: derived from `degrees`, so state dicts stay as they were.
        self.register_buffer("coefficients", coefficients, persistent=False)
        self.register_buffer("powers", torch.tensor(monomials, dtype=torch.long).t().contiguous(), persistent=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        u2 = u * u
        powers = torch.stack([torch.ones_like(u), u, u2, u2 * u, u2 * u2], dim=1)   # (E, 5, 3): u_c^p
        monomials = powers[:, self.powers[0], 0] * powers[:, self.powers[1], 1] * powers[:, self.powers[2], 2]
        return monomials @ self.coefficients.to(u.dtype)
