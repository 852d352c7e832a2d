"""The blocks of one Euclidean transformer layer, named as in the paper.

Shapes: N atoms, E directed edges (receiver i <- sender j), F invariant features,
n_D degrees, S = sum over degrees of (2l + 1) Euclidean-variable components.

Equation numbers refer to Frank et al., Nat. Commun. 15, 6539 (2024), as the authors'
PyTorch port (So3krates-torch, blocks/euclidean_transformer.py) cites them.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Tuple

import torch
from torch import nn
from torch.nn import functional as fn

from .radial_table import lookup


def gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[index] along the first dimension. In float64, advanced indexing is faster (its
    backward, an accumulating index_put, beats the scatter behind index_select's); in float32,
    index_select is (measured on the whole model with benchmarks/compare_exports.py)."""
    if values.dtype == torch.float64:
        return values[index]
    return values.index_select(0, index)


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


class EdgeGeometry(NamedTuple):
    """What a layer needs of each edge, computed once per evaluation (So3krates.edge_geometry).

    r (E,) distance; rbf (E, K) radial basis, or (0, 0) for a tabulated model, which reads
    `rows`/`weights` (E, 4) (radial_table.hermite_weights) instead; phi (E,) cutoff function;
    sh (E, S) spherical harmonics Y(u_ij)."""
    r: torch.Tensor
    rbf: torch.Tensor
    rows: torch.Tensor
    weights: torch.Tensor
    phi: torch.Tensor
    sh: torch.Tensor


class FilterNet(nn.Module):
    """Eq. 20: w_ij = Lin_F->F(silu(Lin_K->F(rbf_ij))) + Lin_F/4->F(silu(Lin_nD->F/4(c(ev_j - ev_i)))).

    Evaluated in two parts. `distance_part` is all that does not depend on the Euclidean
    variables: the radial branch and both output biases, and in the first layer, where ev = 0 and
    so c = 0, the whole spherical branch. It is a function of the distance alone, which an
    exported model reads from a table (`tabulated`, see radial_table). `forward` adds the
    spherical branch's last product to it in one addmm. `fused` (set_fused; exports only): the table
    is read by the C++ operator so3krates::hermite_lookup (ops/radial_lookup.cpp), the same numbers
    with a faster backward."""

    __constants__ = ["fused"]   # a plain model's TorchScript code does not mention the operator

    def __init__(self, num_rbf: int, num_degrees: int, features: int):
        super().__init__()
        self.radial_in = nn.Linear(num_rbf, features)
        self.radial_out = nn.Linear(features, features)
        self.spherical_in = nn.Linear(num_degrees, features // 4)
        self.spherical_out = nn.Linear(features // 4, features)
        self.tabulated = False
        self.fused = False
        self.register_buffer("table", torch.zeros(0, features), persistent=False)

    def distance_part(self, rbf: torch.Tensor, ev_is_zero: bool) -> torch.Tensor:
        if ev_is_zero:
            spherical = self.spherical_out(fn.silu(self.spherical_in.bias))
        else:
            spherical = self.spherical_out.bias
        return torch.addmm(self.radial_out.bias + spherical, fn.silu(self.radial_in(rbf)),
                           self.radial_out.weight.t())

    def forward(self, rbf: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor,
                delta: torch.Tensor, ev_is_zero: bool) -> torch.Tensor:
        """delta (E, n_D) = c(ev_j - ev_i); not read when ev_is_zero (the first layer)."""
        if self.tabulated and self.fused:
            w = torch.ops.so3krates.hermite_lookup(self.table, rows, weights)
        elif self.tabulated:
            w = lookup(self.table, rows, weights)
        else:
            w = self.distance_part(rbf, ev_is_zero)
        if ev_is_zero:
            return w
        # In place: w is a fresh tensor that no backward needs. A contiguous (F/4, F) operand: its
        # backward product (E, F) x (F, F/4) is faster in float64 MKL than with the transposed view
        # of the weight.
        return w.addmm_(fn.silu(self.spherical_in(delta)), self.spherical_out.weight.t().contiguous())


class HeadProjection(nn.Module):
    """A query/key/value projection x (N, F) -> (N, F).

    per_head (the reference, Eq. 21): x is split into `blocks` slices of width F/blocks and each
    slice has its own (F/blocks x F/blocks) matrix, weight (blocks, w, w), y_b = x_b W_b (mlff and
    So3krates-torch: einsum("nhd,hde->nhe")). Otherwise one full F x F matrix, weight (F, F) as in
    nn.Linear (y = x W^T): the form of models saved before per-head projections, whose state-dict
    key (`<name>.weight`) it keeps."""

    def __init__(self, features: int, blocks: int, per_head: bool):
        super().__init__()
        self.per_head = per_head
        self.blocks = blocks
        self.width = features // blocks
        if per_head:
            # Each block drawn as nn.Linear draws its weight (uniform, bound 1/sqrt(fan-in), fan-in the
            # block width): a block's output then has the variance of a full F x F nn.Linear's, the
            # scale every other layer here starts at. (The reference's lecun normal, 3x the variance
            # per projection, makes an untrained network's energies and forces ~100x larger.)
            bound = 1.0 / math.sqrt(self.width)
            self.weight = nn.Parameter(torch.empty(blocks, self.width, self.width).uniform_(-bound, bound))
        else:
            self.weight = nn.Linear(features, features, bias=False).weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_head:
            # y = x W with W the block-diagonal (F x F) matrix of the blocks: one GEMM, faster on the
            # CPU than a batched product of the slices and its transposes (benchmarks/qkv_projections.py);
            # the zero blocks add exact zeros, so the numbers are the slices' up to summation order.
            f = self.blocks * self.width
            eye = torch.eye(self.blocks, dtype=self.weight.dtype, device=self.weight.device)
            dense = (eye[:, None, :, None] * self.weight[:, :, None, :]).reshape(f, f)
            return torch.mm(x, dense)
        return fn.linear(x, self.weight)


class InvariantAttention(nn.Module):
    """Multi-head attention without softmax on x (Eqs. 15 and 21):
    x_i += concat_h sum_j phi(r_ij) alpha_ij,h (W_v x_j)_h with
    alpha_ij,h = sum_d (W_q x_i)_hd w_ij,hd (W_k x_j)_hd / nu.

    With `mirrored`, each edge (i, j) is a pair and the messages flow both ways, i <- j and
    j <- i, sharing the (symmetric) filter w_ij. qk_silu applies silu to queries and keys
    (qk_non_linearity). `fused` (set_fused; exports only): the edge pass is the C++ operator
    so3krates::edge_attention_pairs (ops/edge_attention.cpp), same numbers without the edges x F tensors."""

    __constants__ = ["fused"]   # a plain model's TorchScript code does not mention the operator

    def __init__(self, features: int, num_heads: int, normalization: float, per_head: bool = True,
                 qk_silu: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = features // num_heads
        self.query = HeadProjection(features, num_heads, per_head)
        self.key = HeadProjection(features, num_heads, per_head)
        self.value = HeadProjection(features, num_heads, per_head)
        self.qk_silu = qk_silu
        self.inv_norm = 1.0 / normalization
        self.fused = False
        self.head_segments = [head * self.head_dim for head in range(num_heads + 1)]

    def forward(self, x: torch.Tensor, w: torch.Tensor, phi: torch.Tensor,
                idx_i: torch.Tensor, idx_j: torch.Tensor, mirrored: bool,
                num_receivers: int = -1, num_pairs: int = -1) -> torch.Tensor:
        """Messages into all N atoms, or with num_pairs >= 0 (see `pair_edges`) into the first
        num_receivers only."""
        h, d = self.num_heads, self.head_dim
        q = self.query(x if num_pairs < 0 else x[:num_receivers])   # only receivers' queries are read
        k, v = self.key(x), self.value(x)
        if self.qk_silu:
            q, k = fn.silu(q), fn.silu(k)
        if self.fused:
            # The values are the senders' rows of v, the same in both directions (parity 1).
            return fused_edge_attention(q, k, w, phi * self.inv_norm, v, v.new_ones([v.shape[1]]), self.head_segments,
                                        idx_i, idx_j, False, mirrored, num_pairs)
        w = w.view(-1, h, d)
        scale = (phi * self.inv_norm).unsqueeze(-1)
        out = torch.zeros_like(q)
        # Eq. 21: alpha_ij,h; Eq. 15: the phi-weighted sum of values
        alpha = (gather(q, idx_i).view(-1, h, d) * w * gather(k, idx_j).view(-1, h, d)).sum(-1) * scale
        out.index_add_(0, idx_i, (alpha.unsqueeze(-1) * gather(v, idx_j).view(-1, h, d)).view(-1, h * d))
        if mirrored:
            idx_i, idx_j, w, scale = pair_edges(num_pairs, idx_i, idx_j, w, scale)
            alpha = (gather(q, idx_j).view(-1, h, d) * w * gather(k, idx_i).view(-1, h, d)).sum(-1) * scale
            out.index_add_(0, idx_j, (alpha.unsqueeze(-1) * gather(v, idx_i).view(-1, h, d)).view(-1, h * d))
        return out


def pair_edges(num_pairs: int, idx_i: torch.Tensor, idx_j: torch.Tensor, w: torch.Tensor,
               scale: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The edges whose mirrored message j <- i is wanted: all (num_pairs < 0), or the first
    num_pairs. A LAMMPS rank puts its pairs of two owned atoms first and then the edges from a
    sender owned by another rank, whose mirrored message that rank computes itself: their
    mirrored halves, and the queries of such senders, are then not computed here at all."""
    if num_pairs < 0:
        return idx_i, idx_j, w, scale
    return idx_i[:num_pairs], idx_j[:num_pairs], w[:num_pairs], scale[:num_pairs]


def fused_edge_attention(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, scale: torch.Tensor,
                         values: torch.Tensor, parity: torch.Tensor, segments: List[int], idx_i: torch.Tensor,
                         idx_j: torch.Tensor, values_per_edge: bool, mirrored: bool, num_pairs: int) -> torch.Tensor:
    """The fused operator's edge pass (ops/edge_attention.cpp), one call per block. The receivers are
    q's rows: all atoms, or with num_pairs >= 0 (a LAMMPS rank, `pair_edges`) the first
    num_receivers, whose first num_pairs edges carry messages both ways and the rest i <- j only."""
    pairs = (idx_i.shape[0] if num_pairs < 0 else num_pairs) if mirrored else 0
    return torch.ops.so3krates.edge_attention_pairs(q, k, w, scale, values, parity, segments, idx_i, idx_j,
                                                    values_per_edge, pairs)


class EuclideanAttention(nn.Module):
    """One head per degree (Eqs. 21 and 26): ev_i,l += sum_j phi(r_ij) alpha_ij^(l) Y_l(u_ij) with
    alpha_ij^(l) = sum_d (W_q x_i)_ld w_ij,ld (W_k x_j)_ld / nu'.

    With `mirrored`, also j <- i, using Y_l(u_ji) = (-1)^l Y_l(u_ij) (`parity`). `fused`: as in
    InvariantAttention, with the edge's Y(u_ij) as the values of each degree's head."""

    __constants__ = ["fused"]   # a plain model's TorchScript code does not mention the operator

    def __init__(self, features: int, num_degrees: int, normalization: float, per_head: bool = True,
                 qk_silu: bool = False):
        super().__init__()
        self.num_degrees = num_degrees
        self.chunk = features // num_degrees
        self.query = HeadProjection(features, num_degrees, per_head)
        self.key = HeadProjection(features, num_degrees, per_head)
        self.qk_silu = qk_silu
        self.inv_norm = 1.0 / normalization
        self.fused = False

    def forward(self, x: torch.Tensor, w: torch.Tensor, phi: torch.Tensor, sh: torch.Tensor,
                expand: torch.Tensor, parity: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor,
                mirrored: bool, num_receivers: int = -1, num_pairs: int = -1) -> torch.Tensor:
        n, c = self.num_degrees, self.chunk
        q = self.query(x if num_pairs < 0 else x[:num_receivers])   # as in InvariantAttention
        k = self.key(x)
        if self.qk_silu:
            q, k = fn.silu(q), fn.silu(k)
        if self.fused:
            # Each degree's head writes its 2l + 1 columns of sh: offsets from expand (n_D, S).
            segments: List[int] = torch.cumsum(expand.sum(1), 0).to(torch.long).tolist()
            return fused_edge_attention(q, k, w, phi * self.inv_norm, sh, parity.to(sh.dtype), [0] + segments,
                                        idx_i, idx_j, True, mirrored, num_pairs)
        w = w.view(-1, n, c)
        scale = (phi * self.inv_norm).unsqueeze(-1)
        out = torch.zeros((q.shape[0], sh.shape[1]), dtype=sh.dtype, device=sh.device)
        alpha = (gather(q, idx_i).view(-1, n, c) * w * gather(k, idx_j).view(-1, n, c)).sum(-1) * scale
        out.index_add_(0, idx_i, (alpha @ expand) * sh)
        if mirrored:
            idx_i, idx_j, w, scale = pair_edges(num_pairs, idx_i, idx_j, w, scale)
            if num_pairs >= 0:
                sh = sh[:num_pairs]
            alpha = (gather(q, idx_j).view(-1, n, c) * w * gather(k, idx_i).view(-1, n, c)).sum(-1) * scale
            out.index_add_(0, idx_j, (alpha @ expand) * (sh * parity))
        return out


def set_fused(module: nn.Module, fused: bool) -> int:
    """Switch the attention blocks of `module` to the fused edge operator, and the filter nets to
    the fused table lookup (so3krates::hermite_lookup, used when the filters are tabulated), or
    back; returns how many attention blocks were switched. Inference only: the operators' backward
    has no second derivative, so training (forces in the loss) keeps the plain path."""
    if fused:
        from so3krates.fused import require
        require("the fused edge pass")
    for net in module.modules():
        if isinstance(net, FilterNet):
            net.fused = fused
    blocks = [m for m in module.modules() if isinstance(m, (InvariantAttention, EuclideanAttention))]
    for block in blocks:
        block.fused = fused
    return len(blocks)


class ExchangeBlock(nn.Module):
    """Eqs. 24-25: y = Lin([x_i, c(ev_i)]) split into (dx, b); x_i += dx, ev_i,l += b_l ev_i,l."""

    def __init__(self, features: int, num_degrees: int):
        super().__init__()
        self.features = features
        self.mix = nn.Linear(features + num_degrees, features + num_degrees)

    def forward(self, x: torch.Tensor, ev: torch.Tensor, contract: torch.Tensor, expand: torch.Tensor):
        y = self.mix(torch.cat([x, (ev * ev) @ contract], dim=-1))
        dx, b = y[:, : self.features], y[:, self.features:]
        return x + dx, ev + (b @ expand) * ev


class ResidualMLP(nn.Module):
    """x + Lin(silu(Lin(silu(x)))) (the reference's residual_mlp_1/2: Sequential(act, Linear, act, Linear))."""

    def __init__(self, features: int):
        super().__init__()
        self.lin1 = nn.Linear(features, features)
        self.lin2 = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lin2(fn.silu(self.lin1(fn.silu(x))))


class EuclideanTransformerLayer(nn.Module):
    """Filters -> invariant + Euclidean attention (in parallel) -> residual -> [layer_norm_1]
    -> [mlp_1] -> exchange -> [mlp_2] -> [layer_norm_2]: the order of So3krates-torch's
    EuclideanTransformer.forward (and mlff's)."""

    def __init__(self, features: int, degrees: List[int], num_heads: int, num_rbf: int,
                 inv_normalization: float, ev_normalization: float, *, per_head: bool = True,
                 qk_silu: bool = False, layer_normalization_1: bool = False,
                 layer_normalization_2: bool = False, residual_mlp_1: bool = False,
                 residual_mlp_2: bool = False, layer_norm_eps: float = 1e-6):
        super().__init__()
        nd = len(degrees)
        self.filter_inv = FilterNet(num_rbf, nd, features)
        self.filter_ev = FilterNet(num_rbf, nd, features)
        self.invariant_attention = InvariantAttention(features, num_heads, inv_normalization, per_head, qk_silu)
        self.euclidean_attention = EuclideanAttention(features, nd, ev_normalization, per_head, qk_silu)
        self.exchange = ExchangeBlock(features, nd)
        # Registered in the order of the modules they replace (norm_attention, norm_out, mlp), so
        # that the parameter order, and with it a saved optimizer state, stays that of old runs.
        self.layer_norm_1 = nn.LayerNorm(features, eps=layer_norm_eps) if layer_normalization_1 else nn.Identity()
        self.layer_norm_2 = nn.LayerNorm(features, eps=layer_norm_eps) if layer_normalization_2 else nn.Identity()
        self.mlp_2 = ResidualMLP(features) if residual_mlp_2 else nn.Identity()
        self.mlp_1 = ResidualMLP(features) if residual_mlp_1 else nn.Identity()
        contraction = DegreeContraction(degrees)
        parity = [float((-1) ** l) for l in degrees for _ in range(2 * l + 1)]
        self.register_buffer("contract", contraction.contract.clone(), persistent=False)   # (S, n_D)
        self.register_buffer("expand", contraction.expand.clone(), persistent=False)       # (n_D, S)
        self.register_buffer("parity", torch.tensor(parity, dtype=torch.float64), persistent=False)  # (S,)

    def forward(self, x: torch.Tensor, ev: torch.Tensor, geometry: EdgeGeometry, idx_i: torch.Tensor,
                idx_j: torch.Tensor, mirrored: bool, ev_is_zero: bool, num_receivers: int = -1,
                num_pairs: int = -1):
        """With `mirrored`, each edge is an undirected pair carrying messages both ways: the filters
        are symmetric in i and j (rbf depends on r_ij only, c(ev_j - ev_i) = c(ev_i - ev_j)), so the
        costly filter nets run once per pair. ev_is_zero in the first layer, where the filters'
        spherical branch is a constant. num_receivers >= 0: only the first num_receivers atoms are
        updated and returned (the atoms a LAMMPS rank owns; the rest are senders whose state is
        read, not computed). num_pairs >= 0 (with num_receivers >= 0 and `mirrored`): only the first
        num_pairs edges carry messages both ways, both of their ends among the receivers; the rest
        carry i <- j only (`pair_edges`)."""
        if ev_is_zero:
            delta = ev.new_zeros((0, 0))
        else:
            diff = gather(ev, idx_j) - gather(ev, idx_i)
            delta = (diff * diff) @ self.contract                                  # (E, n_D)
        # Eq. 20: the two filter nets
        w_inv = self.filter_inv(geometry.rbf, geometry.rows, geometry.weights, delta, ev_is_zero=ev_is_zero)
        w_ev = self.filter_ev(geometry.rbf, geometry.rows, geometry.weights, delta, ev_is_zero=ev_is_zero)
        # Eqs. 15, 21 and 26: both attention updates from the same x and ev
        dx = self.invariant_attention(x, w_inv, geometry.phi, idx_i, idx_j, mirrored=mirrored,
                                      num_receivers=num_receivers, num_pairs=num_pairs)
        dev = self.euclidean_attention(x, w_ev, geometry.phi, geometry.sh, self.expand, self.parity,
                                       idx_i, idx_j, mirrored=mirrored, num_receivers=num_receivers,
                                       num_pairs=num_pairs)
        if num_receivers >= 0:
            x, ev = x[:num_receivers], ev[:num_receivers]
            if num_pairs < 0:    # else dx and dev hold the receivers' rows only
                dx, dev = dx[:num_receivers], dev[:num_receivers]
        x = self.mlp_1(self.layer_norm_1(x + dx))
        ev = ev + dev
        # Eqs. 24-27: exchange block and its residual sums
        x, ev = self.exchange(x, ev, self.contract, self.expand)
        x = self.layer_norm_2(self.mlp_2(x))
        return x, ev
