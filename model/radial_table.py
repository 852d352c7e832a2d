"""Tabulated radial filters, for inference.

The radial branch of each filter net, Lin_F->F(silu(Lin_K->F(rbf(r)))), is a function of the
distance alone, and it is the costliest part of a layer (K*F + F^2 multiply-adds per pair). An
exported model replaces it (with the rest of FilterNet.distance_part: the output biases, and in
the first layer the constant spherical branch) by a cubic Hermite table on an even grid over
[0, r_c]: values and exact derivatives (forward-mode autodiff) at the grid points, so the
tabulated filter and its derivative are continuous (forces stay smooth; NVE energy conservation
is unaffected). The lookup is one fused `embedding_bag` per filter: the four coefficient rows of
the pair's grid cell, weighted by powers of the fractional position in the cell.

The error is O(h^4) in the energy and O(h^3) in the forces. On the default grid (DEFAULT_POINTS
over 4.5 A, h = 2.2 mA) the largest force error of a model trained on rMD17 ethanol is below
1e-7 of the largest force, under float32 round-off (tests/test_model.py, docs/benchmarks.md).
The table takes 4 (G - 1) F numbers per filter net; the six of the default preset add 24 MB to a
float32 file.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch.func import jvp
from torch.nn import functional as fn

DEFAULT_POINTS = 2048


def grid(cutoff: float, num_points: int) -> torch.Tensor:
    """num_points distances from 0 to r_c (float64); the first is nudged off 0, where the
    Bernstein basis (a log of 1 - exp(-gamma r)) is not evaluable but has a finite limit."""
    r = torch.linspace(0.0, cutoff, num_points, dtype=torch.float64)
    r[0] = 1e-12
    return r


def hermite_table(radial_fn, r: torch.Tensor) -> torch.Tensor:
    """(4(G-1), F): for each grid cell k, the rows a, b, c, d of its cubic a + b u + c u^2 + d u^3
    (u in [0, 1] across the cell) through the values and derivatives of the row-wise function
    y = radial_fn(r) (G, F) at both ends. Stored as coefficients, not as end-point values, so a
    float32 table gives the derivative (the force) without cancellation between end points."""
    spacing = float(r[2] - r[1])
    y, dy = jvp(radial_fn, (r,), (torch.ones_like(r),))
    slope = spacing * dy
    rise = y[1:] - y[:-1]
    a, b = y[:-1], slope[:-1]
    c = 3.0 * rise - 2.0 * slope[:-1] - slope[1:]
    d = -2.0 * rise + slope[:-1] + slope[1:]
    return torch.stack([a, b, c, d], dim=1).reshape(4 * (r.shape[0] - 1), -1)


def hermite_weights(r: torch.Tensor, cutoff: float, num_points: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows (E, 4) of the table to combine for each distance, and their weights (E, 4) =
    1, u, u^2, u^3, differentiable in r. Distances beyond r_c (where the cutoff function is 0)
    read the last cell."""
    t = r.clamp(max=cutoff) * ((num_points - 1) / cutoff)
    k = torch.floor(t).clamp(0, num_points - 2)
    u = (t - k).unsqueeze(-1)
    weights = torch.cat([torch.ones_like(u), u, u * u, u * u * u], dim=-1)
    rows = 4 * k.to(torch.long).unsqueeze(-1) + torch.arange(4, device=r.device)
    return rows, weights


def lookup(table: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(E, F): sum over the four rows of weight * table row, in one fused kernel."""
    return fn.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")
