"""The blocks of one Euclidean transformer layer, named as in the paper.

Shapes: N atoms, E directed edges (receiver i <- sender j), F invariant features,
n_D degrees, S = sum over degrees of (2l + 1) Euclidean-variable components.
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn
from torch.nn import functional as fn


class DegreeContraction(nn.Module):
    """c_l(v) = sum_m v_lm^2 / sqrt(2l + 1): the only way Euclidean variables become invariant."""

    def __init__(self, degrees: List[int]):
        super().__init__()
        rows = []
        for d, l in enumerate(degrees):
            for _ in range(2 * l + 1):
                row = [0.0] * len(degrees)
                row[d] = 1.0
                rows.append(row)
        expand = torch.tensor(rows, dtype=torch.float64)           # (S, n_D) of ones
        norm = torch.tensor([1.0 / math.sqrt(2 * l + 1) for l in degrees], dtype=torch.float64)
        self.register_buffer("contract", expand * norm)            # (S, n_D)
        self.register_buffer("expand", expand.t().contiguous())     # (n_D, S): per-degree scalar -> components

    def forward(self, ev: torch.Tensor) -> torch.Tensor:
        return (ev * ev) @ self.contract


class FilterNet(nn.Module):
    """w_ij = Lin_F->F(silu(Lin_K->F(rbf_ij))) + Lin_F/4->F(silu(Lin_nD->F/4(c(ev_j - ev_i))))."""

    def __init__(self, num_rbf: int, num_degrees: int, features: int):
        super().__init__()
        self.radial_in = nn.Linear(num_rbf, features)
        self.radial_out = nn.Linear(features, features)
        self.spherical_in = nn.Linear(num_degrees, features // 4)
        self.spherical_out = nn.Linear(features // 4, features)

    def forward(self, rbf: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return (self.radial_out(fn.silu(self.radial_in(rbf)))
                + self.spherical_out(fn.silu(self.spherical_in(delta))))


class InvariantAttention(nn.Module):
    """Multi-head attention without softmax on x:
    x_i += concat_h sum_j phi(r_ij) alpha_ij,h (W_v x_j)_h with
    alpha_ij,h = sum_d (W_q x_i)_hd w_ij,hd (W_k x_j)_hd / nu."""

    def __init__(self, features: int, num_heads: int, normalization: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = features // num_heads
        self.query = nn.Linear(features, features, bias=False)
        self.key = nn.Linear(features, features, bias=False)
        self.value = nn.Linear(features, features, bias=False)
        self.inv_norm = 1.0 / normalization

    def forward(self, x: torch.Tensor, w: torch.Tensor, phi: torch.Tensor,
                idx_i: torch.Tensor, idx_j: torch.Tensor) -> torch.Tensor:
        h, d = self.num_heads, self.head_dim
        q = self.query(x).index_select(0, idx_i).view(-1, h, d)
        k = self.key(x).index_select(0, idx_j).view(-1, h, d)
        v = self.value(x).index_select(0, idx_j).view(-1, h, d)
        alpha = (q * w.view(-1, h, d) * k).sum(-1) * (phi.unsqueeze(-1) * self.inv_norm)  # (E, H)
        messages = (alpha.unsqueeze(-1) * v).reshape(-1, h * d)
        return torch.zeros_like(x).index_add_(0, idx_i, messages)


class EuclideanAttention(nn.Module):
    """One head per degree: ev_i,l += sum_j phi(r_ij) alpha_ij^(l) Y_l(u_ij) with
    alpha_ij^(l) = sum_d (W_q x_i)_ld w_ij,ld (W_k x_j)_ld / nu'."""

    def __init__(self, features: int, num_degrees: int, normalization: float):
        super().__init__()
        self.num_degrees = num_degrees
        self.chunk = features // num_degrees
        self.query = nn.Linear(features, features, bias=False)
        self.key = nn.Linear(features, features, bias=False)
        self.inv_norm = 1.0 / normalization

    def forward(self, x: torch.Tensor, w: torch.Tensor, phi: torch.Tensor, sh: torch.Tensor,
                expand: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor, num_atoms: int) -> torch.Tensor:
        n, c = self.num_degrees, self.chunk
        q = self.query(x).index_select(0, idx_i).view(-1, n, c)
        k = self.key(x).index_select(0, idx_j).view(-1, n, c)
        alpha = (q * w.view(-1, n, c) * k).sum(-1) * (phi.unsqueeze(-1) * self.inv_norm)  # (E, n_D)
        messages = (alpha @ expand) * sh                                                  # (E, S)
        return torch.zeros((num_atoms, sh.shape[1]), dtype=sh.dtype, device=sh.device).index_add_(0, idx_i, messages)


class ExchangeBlock(nn.Module):
    """y = Lin([x_i, c(ev_i)]) split into (dx, b); x_i += dx, ev_i,l += b_l ev_i,l."""

    def __init__(self, features: int, num_degrees: int):
        super().__init__()
        self.features = features
        self.mix = nn.Linear(features + num_degrees, features + num_degrees)

    def forward(self, x: torch.Tensor, ev: torch.Tensor, contract: torch.Tensor, expand: torch.Tensor):
        y = self.mix(torch.cat([x, (ev * ev) @ contract], dim=-1))
        dx, b = y[:, : self.features], y[:, self.features:]
        return x + dx, ev + (b @ expand) * ev


class ResidualMLP(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.lin1 = nn.Linear(features, features)
        self.lin2 = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lin2(fn.silu(self.lin1(fn.silu(x))))


class EuclideanTransformerLayer(nn.Module):
    """Filters -> invariant + Euclidean attention (in parallel) -> residual -> [LayerNorm]
    -> exchange -> [residual MLP] -> [LayerNorm]."""

    def __init__(self, features: int, degrees: List[int], num_heads: int, num_rbf: int,
                 inv_normalization: float, ev_normalization: float, layer_norm: bool, residual_mlp: bool):
        super().__init__()
        nd = len(degrees)
        self.filter_inv = FilterNet(num_rbf, nd, features)
        self.filter_ev = FilterNet(num_rbf, nd, features)
        self.invariant_attention = InvariantAttention(features, num_heads, inv_normalization)
        self.euclidean_attention = EuclideanAttention(features, nd, ev_normalization)
        self.exchange = ExchangeBlock(features, nd)
        self.norm_attention = nn.LayerNorm(features) if layer_norm else nn.Identity()
        self.norm_out = nn.LayerNorm(features) if layer_norm else nn.Identity()
        self.mlp = ResidualMLP(features) if residual_mlp else nn.Identity()

    def forward(self, x: torch.Tensor, ev: torch.Tensor, rbf: torch.Tensor, phi: torch.Tensor,
                sh: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor,
                contract: torch.Tensor, expand: torch.Tensor):
        """contract (S, n_D) and expand (n_D, S) come from DegreeContraction."""
        diff = ev.index_select(0, idx_j) - ev.index_select(0, idx_i)
        delta = (diff * diff) @ contract                                           # (E, n_D)
        w_inv = self.filter_inv(rbf, delta)
        w_ev = self.filter_ev(rbf, delta)
        dx = self.invariant_attention(x, w_inv, phi, idx_i, idx_j)
        dev = self.euclidean_attention(x, w_ev, phi, sh, expand, idx_i, idx_j, x.shape[0])
        x = self.norm_attention(x + dx)
        ev = ev + dev
        x, ev = self.exchange(x, ev, contract, expand)
        x = self.norm_out(self.mlp(x))
        return x, ev
