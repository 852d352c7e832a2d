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
        return [torch.full_like(x, 0.5 * math.sqrt(1.0 / math.pi))]
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


class SphericalHarmonics(nn.Module):
    """Y_l(u) for each l in `degrees`, concatenated: (E, 3) unit vectors -> (E, sum(2l+1))."""

    def __init__(self, degrees: List[int]):
        super().__init__()
        self.degrees = list(degrees)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x, y, z = u[:, 0], u[:, 1], u[:, 2]
        parts: List[torch.Tensor] = []
        for l in self.degrees:
            parts.extend(_degree(l, x, y, z))
        return torch.stack(parts, dim=-1)
