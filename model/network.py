"""SO3krates: embedding -> T Euclidean transformer layers -> per-atom energy head."""
from __future__ import annotations

import copy
import math
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as fn

from .config import So3kratesConfig
from .layers import DegreeContraction, EdgeGeometry, EuclideanTransformerLayer
from .radial import CutoffFunction, RadialBasis
from .radial_table import DEFAULT_POINTS, grid, hermite_table, hermite_weights
from .spherical_harmonics import SphericalHarmonics
from .zbl import ZBLRepulsion
from .charge_spin import ChargeSpinEmbedding
from .dispersion import Dispersion
from .electrostatics import Electrostatics
from .heads import HirshfeldRatioHead, PartialChargeHead

# Buffers and parameters that stay float64 whatever dtype the network computes in: the
# per-element energy scale and shift (~ -1000 eV; float32 would round them by ~1e-4 eV).
FLOAT64_TENSORS = ("energy_scale", "energy_shift")


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
        self.contraction = DegreeContraction(degrees)   # its buffers are in every saved state dict
        self.layers = nn.ModuleList([
            EuclideanTransformerLayer(
                f, degrees, config.num_heads, config.num_rbf, nu_inv, nu_ev,
                per_head=config.qkv_projections == "per_head", qk_silu=config.qk_non_linearity == "silu",
                layer_normalization_1=config.layer_normalization_1,
                layer_normalization_2=config.layer_normalization_2,
                residual_mlp_1=config.residual_mlp_1, residual_mlp_2=config.residual_mlp_2,
                layer_norm_eps=config.layer_norm_eps)
            for _ in range(config.num_layers)])
        width = config.energy_head_width or f
        self.energy_hidden = nn.Linear(f, width)
        self.energy_out = nn.Linear(width, 1)
        # E_i = s_Z e_i + mu_Z; mu fitted by least squares (or isolated atoms) at training time,
        # both learnable when the config says so (SO3LR). Always float64 (see _apply).
        num_elements = len(config.elements)
        for name, init, learn in (("energy_scale", 1.0, config.energy_learn_atomic_type_scales),
                                  ("energy_shift", 0.0, config.energy_learn_atomic_type_shifts)):
            value = torch.full((num_elements,), init, dtype=torch.float64)
            if learn:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)
        self.zbl = ZBLRepulsion(list(config.elements), config.zbl_switch_radius) if config.zbl_repulsion else None
        # SO3LR: global inputs (total charge, unpaired electrons) and the long-range terms.
        self.charge_embedding = ChargeSpinEmbedding(num_elements, f) if config.charge_embedding else None
        self.spin_embedding = ChargeSpinEmbedding(num_elements, f) if config.spin_embedding else None
        self.embedding_scale = math.sqrt(1 + int(config.charge_embedding) + int(config.spin_embedding))
        self.charge_head = PartialChargeHead(num_elements, f, width) if config.electrostatics else None
        self.electrostatics = (Electrostatics(config.long_range_cutoff, config.electrostatics_sigma)
                               if config.electrostatics else None)
        self.hirshfeld_head = HirshfeldRatioHead(num_elements, f, width) if config.dispersion else None
        self.dispersion = (Dispersion(list(config.elements), config.long_range_cutoff, config.dispersion_damping,
                                      config.dispersion_scale) if config.dispersion else None)
        self.long_range = bool(config.long_range)
        self.long_range_cutoff = float(config.long_range_cutoff)
        self.tabulated = False
        self.table_points = 0
        self.to(getattr(torch, config.dtype))

    def _apply(self, fn, recurse=True):
        """As nn.Module._apply (`.to`, `.double()`, ...), but energy_scale and energy_shift keep
        float64: only their device follows."""
        kept = {name: getattr(self, name) for name in FLOAT64_TENSORS}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            device = fn(torch.zeros(1, dtype=torch.float64, device=old.device)).device
            moved = old.data.to(device=device, dtype=torch.float64)
            if isinstance(old, nn.Parameter):
                old.data = moved
            else:
                self._buffers[name] = moved
        return self

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
    # (through Potential's stage_* methods) so that it can exchange the per-atom state of ghost
    # atoms between layers (docs/model-format.md, "Stages"). Everything per edge is in `geometry`;
    # everything per atom is (x, ev).

    def edge_geometry(self, vectors: torch.Tensor) -> EdgeGeometry:
        """Everything the layers and the pair terms need of each edge, from its vector r_ij (E, 3)."""
        r = torch.linalg.norm(vectors, dim=-1)
        u = vectors / r.unsqueeze(-1)
        if self.tabulated:
            rows, weights = hermite_weights(r, self.cutoff, self.table_points)
            rbf = r.new_zeros((0, 0))
        else:
            rbf = self.radial_basis(r)
            rows, weights = torch.zeros((0, 4), dtype=torch.long, device=r.device), r.new_zeros((0, 4))
        return EdgeGeometry(r=r, rbf=rbf, rows=rows, weights=weights, phi=self.cutoff_function(r),
                            sh=self.spherical_harmonics(u))

    def embed(self, species: torch.Tensor, charge: float = 0.0, unpaired: float = 0.0,
              element_counts: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Eq. 10: x_i = W_emb[Z_i]; the Euclidean variables start at zero (as in all released code).
        SO3LR adds the total-charge and spin embeddings and divides the sum by sqrt(number of
        embeddings) (as its code does); charge in e, unpaired = multiplicity - 1. element_counts
        (num_elements,): the whole structure's atoms per element when `species` are only some of
        them (the embeddings' attention sums over all atoms)."""
        x = self.embedding(species)
        if self.charge_embedding is not None:
            x = x + self.charge_embedding(species, charge, element_counts)
        if self.spin_embedding is not None:
            x = x + self.spin_embedding(species, unpaired, element_counts)
        if self.embedding_scale != 1.0:
            x = x / self.embedding_scale
        return x, torch.zeros((species.shape[0], self.num_sh), dtype=x.dtype, device=x.device)

    def layer_step(self, t: int, x: torch.Tensor, ev: torch.Tensor, geometry: EdgeGeometry,
                   idx_i: torch.Tensor, idx_j: torch.Tensor, half_list: bool,
                   num_receivers: int = -1, num_pairs: int = -1) -> Tuple[torch.Tensor, torch.Tensor]:
        """Layer t on the state (x, ev) of N atoms -> the new state of the first num_receivers
        atoms (all when -1). Edges must have their receivers among those; senders may be any of
        the N (with half_list, a mirrored message into an atom beyond num_receivers is dropped).
        num_pairs >= 0 (with half_list and num_receivers): only the first num_pairs edges are
        pairs, between two receivers; the rest carry i <- j only (layers.pair_edges)."""
        for k, layer in enumerate(self.layers):   # TorchScript indexes a ModuleList by constants only
            if k == t:
                x, ev = layer(x, ev, geometry, idx_i, idx_j, mirrored=half_list, ev_is_zero=k == 0,
                              num_receivers=num_receivers, num_pairs=num_pairs)
        return x, ev

    def atomic_energies(self, x: torch.Tensor, species: torch.Tensor, geometry: EdgeGeometry,
                        idx_i: torch.Tensor, idx_j: torch.Tensor, half_list: bool) -> torch.Tensor:
        """Per-atom energies (n,) eV, float64, of the first n = x.shape[0] atoms of `species` (N,):
        E_i = s_Z e_i + mu_Z with e_i = Lin(silu(Lin(x_i))), plus the ZBL pair energy (half of each
        pair to each of its atoms within the first n). Float64: the element shifts (~ -1000 eV) would
        otherwise cost ~1e-4 eV of round-off per atom in every sum."""
        n = x.shape[0]
        own = species[:n]
        e = self.energy_out(fn.silu(self.energy_hidden(x))).squeeze(-1).to(torch.float64)
        energies = self.energy_scale.index_select(0, own) * e + self.energy_shift.index_select(0, own)
        if self.zbl is not None:
            pair = self.zbl(geometry.r, geometry.phi, species, idx_i, idx_j, mirrored=half_list)
            energies = energies + pair[:n].to(torch.float64)
        return energies

    def long_range_terms(self, x: torch.Tensor, species: torch.Tensor, r_lr: torch.Tensor, lr_i: torch.Tensor,
                         lr_j: torch.Tensor, charge: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SO3LR's electrostatics and dispersion over the long-range pairs (each pair once, distances
        r_lr): (per-atom energies (N,) float64, partial charges (N,), Hirshfeld ratios (N,))."""
        charges = x.new_zeros((0,))
        ratios = x.new_zeros((0,))
        if self.charge_head is not None:
            charges = self.charge_head(x, species, charge)
        if self.hirshfeld_head is not None:
            ratios = self.hirshfeld_head(x, species)
        return self.long_range_energies(charges, ratios, species, r_lr, lr_i, lr_j), charges, ratios

    def atom_properties(self, x: torch.Tensor, species: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom inputs of the long-range terms from the final x: the partial charges q~ BEFORE the
        charge conservation (PartialChargeHead.raw; the engine adds (Q - sum_all q~) / N_all) and the
        Hirshfeld ratios; empty tensors for a term the model lacks."""
        charges = x.new_zeros((0,))
        ratios = x.new_zeros((0,))
        if self.charge_head is not None:
            charges = self.charge_head.raw(x, species)
        if self.hirshfeld_head is not None:
            ratios = self.hirshfeld_head(x, species)
        return charges, ratios

    def long_range_energies(self, charges: torch.Tensor, ratios: torch.Tensor, species: torch.Tensor,
                            r_lr: torch.Tensor, lr_i: torch.Tensor, lr_j: torch.Tensor, num_receivers: int = -1,
                            num_pairs: int = -1) -> torch.Tensor:
        """Per-atom electrostatics + dispersion energies, float64, half of each pair energy to each end.
        charges, ratios, species: of all N atoms the pairs i <- j (distances r_lr) refer to. As in the
        stages' edge contract: num_pairs >= 0 means that only the first num_pairs pairs give half to j
        too (the rest, j computed elsewhere, give half to i only); num_receivers >= 0 returns the first
        num_receivers atoms only."""
        pair = torch.zeros(r_lr.shape[0], dtype=torch.float64, device=r_lr.device)
        if self.electrostatics is not None:
            pair = pair + self.electrostatics(r_lr, charges, lr_i, lr_j).to(torch.float64)
        if self.dispersion is not None:
            pair = pair + self.dispersion(r_lr, ratios, species, lr_i, lr_j).to(torch.float64)
        half = 0.5 * pair
        out = torch.zeros(species.shape[0], dtype=torch.float64, device=r_lr.device).index_add_(0, lr_i, half)
        if num_pairs < 0:
            out = out.index_add_(0, lr_j, half)
        else:
            out = out.index_add_(0, lr_j[:num_pairs], half[:num_pairs])
        if num_receivers >= 0:
            out = out[:num_receivers]
        return out

    def forward(self, vectors: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor,
                species: torch.Tensor, half_list: bool = False, lr_vectors: Optional[torch.Tensor] = None,
                lr_i: Optional[torch.Tensor] = None, lr_j: Optional[torch.Tensor] = None,
                charge: float = 0.0, unpaired: float = 0.0) -> torch.Tensor:
        """vectors (E, 3), idx_i/idx_j (E,) receiver/sender, species (N,) model indices -> (N,) eV,
        always float64.

        With half_list, each edge stands for both directions of its pair (r_ji = -r_ij), and the
        costly filter nets run once per pair instead of once per direction. A long-range model
        (SO3LR) also needs the long-range pairs, each once (lr_vectors (P, 3), lr_i, lr_j), and
        takes the total charge and the number of unpaired electrons.
        """
        geometry = self.edge_geometry(vectors)
        x, ev = self.embed(species, charge, unpaired)
        for t in range(len(self.layers)):
            x, ev = self.layer_step(t, x, ev, geometry, idx_i, idx_j, half_list)
        energies = self.atomic_energies(x, species, geometry, idx_i, idx_j, half_list)
        if self.long_range:
            if lr_vectors is None or lr_i is None or lr_j is None:
                raise ValueError("this model has long-range terms (electrostatics/dispersion): pass its "
                                 "long-range pairs (within long_range_cutoff)")
            r_lr = torch.linalg.norm(lr_vectors, dim=-1)
            energies = energies + self.long_range_terms(x, species, r_lr, lr_i, lr_j, charge)[0]
        return energies
