"""Total-charge and spin embeddings (SO3LR; SpookyNet's electronic embedding, Unke et al.,
Nat. Commun. 12, 7273 (2021), Eqs. 11-13; So3krates-torch blocks/embedding.py ChargeSpinEmbedding).

For a global quantity psi of the structure (the total charge Q, or the number of unpaired
electrons 2S = multiplicity - 1), every atom i gets

    q_i = W_q[Z_i],   k = W_k[psi < 0],   v = W_v[psi < 0]
    a_i = psi softplus(q_i . k / sqrt(F)) / (sum_j softplus(q_j . k / sqrt(F)) + 1e-6)
    e_i = a_i v + MLP(a_i v),   MLP = Lin(silu(Lin(silu(.)))) without biases

which is exactly zero for psi = 0. The sum over j runs over all atoms of the structure: this
embedding is global (one engine process must see every atom).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as fn


class ChargeSpinEmbedding(nn.Module):
    def __init__(self, num_elements: int, features: int):
        super().__init__()
        self.query = nn.Embedding(num_elements, features)          # W_q, one row per model element
        self.key = nn.Parameter(torch.zeros(2, features))           # W_k: row 0 for psi >= 0, row 1 for psi < 0
        self.value = nn.Parameter(torch.zeros(2, features))         # W_v
        self.mlp_1 = nn.Linear(features, features, bias=False)
        self.mlp_2 = nn.Linear(features, features, bias=False)
        self.inv_sqrt_features = 1.0 / math.sqrt(features)

    def forward(self, species: torch.Tensor, psi: float,
                element_counts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """species (N,) model element indices, psi the global value -> (N, F). element_counts
        (num_elements,): how many atoms of each element the whole structure has, when `species` are
        only some of its atoms (a LAMMPS rank's); the sum over j is then taken per element."""
        sign = 1 if psi < 0 else 0
        q = self.query(species)
        k, v = self.key[sign], self.value[sign]
        y = fn.softplus((q * k).sum(-1) * self.inv_sqrt_features)
        if element_counts is None:
            total = y.sum()
        else:   # y depends on the element only: sum_j y_j = sum_Z count_Z y(Z)
            y_element = fn.softplus((self.query.weight * k).sum(-1) * self.inv_sqrt_features)
            total = (element_counts.to(y_element.dtype) * y_element).sum()
        attention = psi * y / (total + 1e-6)
        v_att = attention.unsqueeze(-1) * v
        return v_att + self.mlp_2(fn.silu(self.mlp_1(fn.silu(v_att))))
