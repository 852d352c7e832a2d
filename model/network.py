"""SO3krates: embedding -> T Euclidean transformer layers -> per-atom energy head."""
from __future__ import annotations

import copy
import math
from typing import List

import torch
from torch import nn
from torch.nn import functional as fn

from .config import So3kratesConfig
from .layers import DegreeContraction, EuclideanTransformerLayer
from .radial import CutoffFunction, RadialBasis
from .radial_table import DEFAULT_POINTS, grid, hermite_table, hermite_weights
from .spherical_harmonics import SphericalHarmonics


class So3krates(nn.Module):
    __jit_ignored_attributes__ = ["config"]

    """Atomic energies (eV) from directed edge vectors r_ij = R_j - R_i (Angstrom).

    Euclidean variables start at zero (as in all released SO3krates code); they are
    filled by the Euclidean attention of the first layer.
    """

    def __init__(self, config: So3kratesConfig):
        super().__init__()
        config.validate()
        self.config = config
        f, degrees = config.features, list(config.degrees)
        self.features = f
        self.num_sh = sum(2 * l + 1 for l in degrees)
        self.cutoff = float(config.cutoff)
        if config.message_normalization == "avg_neighbors":
            if not config.avg_num_neighbors:
                raise ValueError("message_normalization='avg_neighbors' needs avg_num_neighbors "
                                 "(computed from the training data by `so3krates train`)")
            nu_inv = nu_ev = float(config.avg_num_neighbors)
        else:
            nu_inv, nu_ev = math.sqrt(f // config.num_heads), math.sqrt(f // len(degrees))

        self.embedding = nn.Embedding(len(config.elements), f)
        self.radial_basis = RadialBasis(config.radial_basis, config.num_rbf, config.cutoff, config.bernstein_gamma)
        self.cutoff_function = CutoffFunction(config.cutoff_function, config.cutoff)
        self.spherical_harmonics = SphericalHarmonics(degrees)
        self.contraction = DegreeContraction(degrees)
        parity = [float((-1) ** l) for l in degrees for _ in range(2 * l + 1)]
        self.register_buffer("parity", torch.tensor(parity, dtype=torch.float64), persistent=False)
        self.layers = nn.ModuleList([
            EuclideanTransformerLayer(f, degrees, config.num_heads, config.num_rbf, nu_inv, nu_ev,
                                      config.layer_norm, config.residual_mlp)
            for _ in range(config.num_layers)])
        width = config.energy_head_width or f
        self.energy_hidden = nn.Linear(f, width)
        self.energy_out = nn.Linear(width, 1)
        # E_i = s_Z e_i + mu_Z; mu fitted by least squares (or isolated atoms) at training time.
        self.register_buffer("energy_scale", torch.ones(len(config.elements), dtype=torch.float64))
        self.register_buffer("energy_shift", torch.zeros(len(config.elements), dtype=torch.float64))
        self.tabulated = False
        self.table_points = 0
        self.to(getattr(torch, config.dtype))

    @torch.jit.ignore
    def tabulate_radial_filters(self, num_points: int = DEFAULT_POINTS) -> None:
        """Replace the distance-only part of every filter net (FilterNet.distance_part: the radial
        branch with the output biases; in the first layer the whole filter) by a cubic Hermite
        table on num_points distances over [0, r_c], built in float64 from the current weights. For export only:
        training would no longer reach the radial weights, and checkpoints do not store tables."""
        if num_points < 16:
            raise ValueError(f"a radial table needs at least 16 points, got {num_points}")
        exact = copy.deepcopy(self).double()
        r = grid(self.cutoff, num_points)
        with torch.no_grad():
            for t, (layer, reference) in enumerate(zip(self.layers, exact.layers)):
                for target, source in ((layer.filter_inv, reference.filter_inv),
                                       (layer.filter_ev, reference.filter_ev)):
                    table = hermite_table(lambda d: source.distance_part(exact.radial_basis(d), t == 0), r)
                    target.table = table.to(target.radial_out.weight.dtype)
                    target.tabulated = True
        self.tabulated = True
        self.table_points = num_points

    # ---- Stages. `forward` is built from these, and the LAMMPS pair style calls them one by one
    # (through Potential) so that it can exchange the per-atom state of ghost atoms between layers
    # (docs/model-format.md, "Stages"). Everything per edge is in `geometry`; everything per atom
    # is (x, ev).

    def edge_geometry(self, vectors: torch.Tensor) -> List[torch.Tensor]:
        """Per-edge tensors from the edge vectors (E, 3): [r (E,), phi (E,), sh (E, S), rbf (E, K),
        rows (E, 4) long, weights (E, 4)]. A tabulated model has an empty rbf and reads table rows
        (rows, weights); an exact one has empty rows and weights."""
        r = torch.linalg.norm(vectors, dim=-1)
        u = vectors / r.unsqueeze(-1)
        if self.tabulated:
            rows, weights = hermite_weights(r, self.cutoff, self.table_points)
            rbf = r.new_zeros((0, 0))
        else:
            rbf = self.radial_basis(r)
            rows, weights = torch.zeros((0, 4), dtype=torch.long, device=r.device), r.new_zeros((0, 4))
        return [r, self.cutoff_function(r), self.spherical_harmonics(u), rbf, rows, weights]

    def embed(self, species: torch.Tensor) -> List[torch.Tensor]:
        """Initial state [x (N, F), ev (N, S) = 0] of atoms with model element indices `species`."""
        x = self.embedding(species)
        return [x, torch.zeros((species.shape[0], self.num_sh), dtype=x.dtype, device=x.device)]

    def layer_step(self, t: int, x: torch.Tensor, ev: torch.Tensor, geometry: List[torch.Tensor],
                   idx_i: torch.Tensor, idx_j: torch.Tensor, half_list: bool,
                   num_receivers: int = -1) -> List[torch.Tensor]:
        """Layer t on the state (x, ev) of N atoms -> the new state of the first num_receivers
        atoms (all when -1). Edges must have their receivers among those; senders may be any of
        the N (with half_list, a mirrored message into an atom beyond num_receivers is dropped)."""
        phi, sh, rbf, rows, weights = geometry[1], geometry[2], geometry[3], geometry[4], geometry[5]
        for k, layer in enumerate(self.layers):   # TorchScript indexes a ModuleList by constants only
            if k == t:
                x, ev = layer(x, ev, rbf, rows, weights, phi, sh, idx_i, idx_j, self.contraction.contract,
                              self.contraction.expand, self.parity, half_list, k == 0, num_receivers)
        return [x, ev]

    def atomic_energies(self, x: torch.Tensor, species: torch.Tensor, geometry: List[torch.Tensor],
                        idx_i: torch.Tensor, idx_j: torch.Tensor, half_list: bool) -> torch.Tensor:
        """Per-atom energies (n,) eV, float64, of the n atoms whose final x (n, F) is given.
        `geometry` and the edges (receivers among the n) are passed so that a per-edge pair energy
        can be added here: half of it to the receiver of each directed edge (with half_list, half to
        each end, dropping an end beyond n)."""
        e = self.energy_out(fn.silu(self.energy_hidden(x))).squeeze(-1)
        # Atomic energies are accumulated in float64 even for float32 models: the element shifts
        # (~ -1000 eV) would otherwise cost ~1e-4 eV of round-off per atom in every sum.
        scaled = (self.energy_scale.index_select(0, species) * e).to(torch.float64)
        return scaled + self.energy_shift.index_select(0, species).to(torch.float64)

    def forward(self, vectors: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor,
                species: torch.Tensor, half_list: bool = False) -> torch.Tensor:
        """vectors (E, 3), idx_i/idx_j (E,) receiver/sender, species (N,) model indices -> (N,) eV,
        always float64.

        With half_list, each edge stands for both directions of its pair (r_ji = -r_ij), and the
        costly filter nets run once per pair instead of once per direction.
        """
        geometry = self.edge_geometry(vectors)
        state = self.embed(species)
        x, ev = state[0], state[1]
        for t in range(len(self.layers)):
            state = self.layer_step(t, x, ev, geometry, idx_i, idx_j, half_list)
            x, ev = state[0], state[1]
        return self.atomic_energies(x, species, geometry, idx_i, idx_j, half_list)
