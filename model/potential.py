"""The potential: element mapping, neighbour search and the network, as one scriptable module.

This is exactly what `so3krates export` compiles to TorchScript. Energies in eV, lengths in
Angstrom. Forces and the virial come from the gradient of the energy with respect to the
edge vectors r_ij = R_j - R_i + shift_ij (pair forces), which gives both exactly and works the
same whether the neighbour pairs come from the built-in search or from the engine (LAMMPS).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .config import So3kratesConfig
from .neighbors import neighbor_list
from .layers import EdgeGeometry
from .network import So3krates


class Potential(nn.Module):
    __jit_ignored_attributes__ = ["config"]

    def __init__(self, network: So3krates):
        super().__init__()
        config: So3kratesConfig = network.config
        self.config = config
        self.network = network
        self.cutoff = float(config.cutoff)
        self.num_layers = int(config.num_layers)
        self.interaction_range = float(config.interaction_range)
        self.elements: List[int] = [int(z) for z in config.elements]
        # SO3LR: a second pair list up to long_range_cutoff (electrostatics, dispersion) and the
        # structure's total charge / multiplicity as inputs.
        self.long_range = bool(config.long_range)
        self.long_range_cutoff = float(config.long_range_cutoff) if config.long_range else 0.0
        self.charge_input = bool(config.charge_embedding or config.electrostatics)
        self.spin_input = bool(config.spin_embedding)
        # Per-atom state that layer t + 1 reads from its neighbours: x (num_features) and the
        # Euclidean variables ev (num_sh); what a domain decomposition exchanges for ghost atoms.
        self.num_features = int(network.features)
        self.num_sh = int(network.num_sh)
        table = torch.full((119,), -1, dtype=torch.long)
        for index, z in enumerate(config.elements):
            table[z] = index
        self.register_buffer("species_table", table)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the network computes in (its energy shifts and scales stay float64)."""
        return self.network.embedding.weight.dtype

    def edge_vectors(self, positions: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor,
                     shifts: Optional[torch.Tensor]) -> torch.Tensor:
        """r_ij = R_j - R_i + shift_ij, formed in float64 and then cast to the model dtype: a float32
        model far from the origin (R ~ 1e4 A) would otherwise lose the differences to round-off."""
        pos = positions.to(torch.float64)
        vectors = pos.index_select(0, idx_j) - pos.index_select(0, idx_i)
        if shifts is not None:
            vectors = vectors + shifts.to(torch.float64)
        check_distances(vectors, idx_i, idx_j)
        return vectors.to(self.dtype)

    @torch.jit.export
    def species_index(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers -> model element indices; an unknown element is an error."""
        z = atomic_numbers.to(torch.long)
        if z.numel() > 0:
            if bool((z < 0).any()) or bool((z > 118).any()):
                raise ValueError("atomic numbers must lie in 1..118")
            species = self.species_table.index_select(0, z)
            if bool((species < 0).any()):
                missing: List[int] = torch.unique(z[species < 0]).tolist()
                raise ValueError("element(s) with atomic number " + str(missing)
                                 + " not in this model; the model knows atomic numbers "
                                 + str(self.elements) + ": map your atoms onto these or retrain")
            return species
        return z

    @torch.jit.export
    def evaluate_edges(self, positions: torch.Tensor, species: torch.Tensor, idx_i: torch.Tensor,
                       idx_j: torch.Tensor, shifts: Optional[torch.Tensor] = None,
                       batch: Optional[torch.Tensor] = None, num_graphs: int = 1, num_local: int = -1,
                       compute_forces: bool = True, compute_virial: bool = False,
                       create_graph: bool = False, lr_i: Optional[torch.Tensor] = None,
                       lr_j: Optional[torch.Tensor] = None, lr_shifts: Optional[torch.Tensor] = None,
                       charge: float = 0.0, multiplicity: int = 1) -> Dict[str, torch.Tensor]:
        """Energy (per graph), per-atom energies, forces and virial from given pairs.

        positions (N, 3) A; species (N,) model indices; idx_i/idx_j (E,) receiver/sender;
        shifts (E, 3) Cartesian translations added to R_j - R_i; batch (N,) graph index of
        each atom; num_local >= 0 sums the energy over the first num_local atoms only (the
        atoms a LAMMPS rank owns; the rest are ghosts). A long-range model (SO3LR) also takes
        the long-range pairs lr_i/lr_j/lr_shifts (both directions, as idx_i/idx_j), the total
        charge (e) and the spin multiplicity 2S + 1 of the one structure given.
        """
        if multiplicity < 1:
            raise ValueError("multiplicity must be a positive integer (2S + 1: 1 singlet, 2 doublet, ...), got "
                             + str(multiplicity))
        pos = positions.to(self.dtype)
        idx_i, idx_j, shifts = half_pairs(idx_i, idx_j, shifts)
        vectors = self.edge_vectors(positions, idx_i, idx_j, shifts)
        need_grad = compute_forces or compute_virial
        if need_grad and not create_graph:
            vectors = vectors.detach()
        if need_grad:
            vectors.requires_grad_(True)
        lr_vectors: Optional[torch.Tensor] = None
        if self.long_range:
            if lr_i is None or lr_j is None:
                raise ValueError("this model has long-range terms (electrostatics, dispersion): it needs the "
                                 "pairs within its long-range cutoff of " + str(self.long_range_cutoff) + " A")
            if batch is not None and num_graphs > 1:
                raise ValueError("a long-range model evaluates one structure at a time (its total charge and "
                                 "charge conservation are per structure)")
            lr_i, lr_j, lr_shifts = half_pairs(lr_i, lr_j, lr_shifts)
            lr_vectors = self.edge_vectors(positions, lr_i, lr_j, lr_shifts)
            if need_grad and not create_graph:
                lr_vectors = lr_vectors.detach()
            if need_grad:
                lr_vectors.requires_grad_(True)
        energies = self.network(vectors, idx_i, idx_j, species, True, lr_vectors, lr_i, lr_j,
                                float(charge), float(multiplicity - 1))
        counted = energies
        if num_local >= 0:
            counted = energies[:num_local]
        if batch is None:
            energy = counted.sum().unsqueeze(0)
        else:
            b = batch if num_local < 0 else batch[:num_local]
            energy = torch.zeros(num_graphs, dtype=energies.dtype, device=energies.device).index_add_(0, b, counted)
        out: Dict[str, torch.Tensor] = {"energy": energy, "energies": energies}
        if need_grad:
            inputs = [vectors]
            if lr_vectors is not None:
                inputs.append(lr_vectors)
            grads = torch.autograd.grad([energy.sum()], inputs, create_graph=create_graph, allow_unused=True)
            g = grads[0]
            if g is None:
                g = torch.zeros_like(vectors)
            if lr_vectors is not None and lr_i is not None and lr_j is not None:
                # The long-range pairs' gradients join the short-range ones as extra edges.
                g_lr = grads[1]
                if g_lr is None:
                    g_lr = torch.zeros_like(lr_vectors)
                idx_i = torch.cat([idx_i, lr_i])
                idx_j = torch.cat([idx_j, lr_j])
                vectors = torch.cat([vectors, lr_vectors])
                g = torch.cat([g, g_lr])
            if compute_forces:
                out["forces"] = edge_forces(pos.shape[0], idx_i, idx_j, g)
            if compute_virial:
                out["virial"] = edge_virial(vectors, g, idx_i, batch, num_graphs)
        return out

    # ---- Stages, for engines that drive the layers themselves (the LAMMPS pair style: one rank
    # computes its owned atoms only and fills in the state of ghost atoms from their owners between
    # layers). stage_geometry -> stage_embed -> stage_layer(0 .. num_layers - 1) -> stage_readout is
    # exactly `forward`; see docs/model-format.md, "Stages". Edges i <- j are half-list pairs
    # (messages flow both ways; the mirrored message into an atom beyond num_receivers is dropped).

    @torch.jit.export
    def stage_geometry(self, vectors: torch.Tensor) -> List[torch.Tensor]:
        """[r, phi, sh, rbf, rows, weights] of the edges (E, 3) A, in the model dtype (a list of
        tensors: the contract with C++, which differentiates the floating-point ones)."""
        g = self.network.edge_geometry(vectors.to(self.dtype))
        return [g.r, g.phi, g.sh, g.rbf, g.rows, g.weights]

    @torch.jit.export
    def stage_embed(self, species: torch.Tensor, charge: float = 0.0, multiplicity: int = 1,
                    element_counts: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Initial [x (N, F), ev (N, S)] of atoms given by model element indices. A model with
        total-charge / spin embeddings (SO3LR) also takes the structure's charge (e), multiplicity
        and element_counts (num_elements,), its atoms per model element (all ranks together)."""
        x, ev = self.network.embed(species, float(charge), float(multiplicity - 1), element_counts)
        return [x, ev]

    @torch.jit.export
    def stage_layer(self, t: int, x: torch.Tensor, ev: torch.Tensor, geometry: List[torch.Tensor],
                    idx_i: torch.Tensor, idx_j: torch.Tensor, num_receivers: int,
                    num_pairs: int = -1) -> List[torch.Tensor]:
        """Layer t: state of all N atoms in, new [x, ev] of the first num_receivers out.
        num_pairs >= 0: edges [0, num_pairs) are pairs of two receivers (messages both ways), the
        rest carry i <- j only (a sender owned by another rank); -1: every edge is a pair (files
        before this argument was added have only that)."""
        x, ev = self.network.layer_step(t, x, ev, edge_geometry(geometry), idx_i, idx_j, True, num_receivers,
                                        num_pairs)
        return [x, ev]

    @torch.jit.export
    def stage_readout(self, x: torch.Tensor, species: torch.Tensor, geometry: List[torch.Tensor],
                      idx_i: torch.Tensor, idx_j: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (n,) eV, float64, of the n atoms whose final x is given; species (N,)
        of all atoms (the pair terms read the senders' elements too)."""
        return self.network.atomic_energies(x, species, edge_geometry(geometry), idx_i, idx_j, True)

    @torch.jit.export
    def stage_atom_properties(self, x: torch.Tensor, species: torch.Tensor) -> List[torch.Tensor]:
        """Long-range models (SO3LR), after stage_readout: [raw partial charges q~ (n,), Hirshfeld
        ratios (n,)] of the n atoms whose final x is given (species (n,)); empty for a term the model
        lacks. The charges are conserved by the engine: q_i = q~_i + (Q - sum_all q~) / N_all."""
        charges, ratios = self.network.atom_properties(x, species)
        return [charges, ratios]

    @torch.jit.export
    def stage_long_range(self, charges: torch.Tensor, ratios: torch.Tensor, species: torch.Tensor,
                         vectors: torch.Tensor, lr_i: torch.Tensor, lr_j: torch.Tensor, num_receivers: int,
                         num_pairs: int = -1) -> torch.Tensor:
        """Long-range models: electrostatics + dispersion energies (num_receivers,), eV, float64, of
        the first num_receivers rows, from the conserved charges, ratios and species of all N rows and
        the long-range pairs i <- j (vectors (P, 3) A, within long_range_cutoff). Edge contract as
        stage_layer: pairs [0, num_pairs) give half their energy to each end, the rest to i only."""
        r = torch.linalg.norm(vectors.to(self.dtype), dim=-1)
        return self.network.long_range_energies(charges.to(self.dtype), ratios.to(self.dtype), species, r, lr_i,
                                                lr_j, num_receivers, num_pairs)

    @torch.jit.export
    def neighbors(self, positions: torch.Tensor, cell: Optional[torch.Tensor] = None,
                  pbc: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """The built-in neighbour search: [idx_i, idx_j, shifts]."""
        # In float64 whatever the model dtype: which pairs lie within the cutoff must not depend on
        # how far the structure is from the origin.
        cell64: Optional[torch.Tensor] = None
        if cell is not None:
            cell64 = cell.to(torch.float64)
        idx_i, idx_j, shifts = neighbor_list(positions.to(torch.float64), self.cutoff, cell64, pbc)
        return [idx_i, idx_j, shifts]

    @torch.jit.export
    def long_range_neighbors(self, positions: torch.Tensor, cell: Optional[torch.Tensor] = None,
                             pbc: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """The built-in search up to the long-range cutoff, and its short-range subset:
        [idx_i, idx_j, shifts, lr_i, lr_j, lr_shifts] (one search, as the reference does)."""
        cell64: Optional[torch.Tensor] = None
        if cell is not None:
            cell64 = cell.to(torch.float64)
        pos = positions.to(torch.float64)
        lr_i, lr_j, lr_shifts = neighbor_list(pos, self.long_range_cutoff, cell64, pbc)
        d = pos.index_select(0, lr_j) - pos.index_select(0, lr_i) + lr_shifts
        short = (d * d).sum(-1) < self.cutoff * self.cutoff
        return [lr_i[short], lr_j[short], lr_shifts[short], lr_i, lr_j, lr_shifts]

    @torch.jit.export
    def compute(self, positions: torch.Tensor, atomic_numbers: torch.Tensor,
                cell: Optional[torch.Tensor] = None, pbc: Optional[torch.Tensor] = None,
                edge_index: Optional[torch.Tensor] = None, shifts: Optional[torch.Tensor] = None,
                num_local: int = -1, compute_forces: bool = True,
                compute_virial: bool = False, charge: float = 0.0, multiplicity: int = 1,
                lr_edge_index: Optional[torch.Tensor] = None,
                lr_shifts: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """One structure: energy (1,), energies (N,), forces (N, 3), virial (1, 3, 3).

        Without edge_index the built-in neighbour search is used (periodic along pbc when a
        cell is given); with edge_index (2, E) = (i, j) the caller's pairs and Cartesian
        shifts (E, 3) are used as they are. A long-range model (SO3LR) takes its long-range
        pairs as lr_edge_index/lr_shifts (or finds both lists itself when neither is given), the
        total charge (e) and the spin multiplicity; other models ignore those.
        """
        check_positions(positions, atomic_numbers)
        species = self.species_index(atomic_numbers)
        lr_i: Optional[torch.Tensor] = None
        lr_j: Optional[torch.Tensor] = None
        if edge_index is None and self.long_range:
            pairs = self.long_range_neighbors(positions, cell, pbc)
            idx_i, idx_j, shifts = pairs[0], pairs[1], pairs[2]
            lr_i, lr_j, lr_shifts = pairs[3], pairs[4], pairs[5]
        elif edge_index is None:
            pairs = self.neighbors(positions, cell, pbc)
            idx_i, idx_j, shifts = pairs[0], pairs[1], pairs[2]
        else:
            idx_i, idx_j = edge_index[0], edge_index[1]
            if lr_edge_index is not None:
                lr_i, lr_j = lr_edge_index[0], lr_edge_index[1]
        return self.evaluate_edges(positions, species, idx_i, idx_j, shifts, None, 1, num_local,
                                   compute_forces, compute_virial, False, lr_i, lr_j, lr_shifts,
                                   charge, multiplicity)

    def forward(self, positions: torch.Tensor, atomic_numbers: torch.Tensor,
                cell: Optional[torch.Tensor] = None, pbc: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Total energy (eV, scalar), differentiable with respect to positions."""
        check_positions(positions, atomic_numbers)
        species = self.species_index(atomic_numbers)
        if self.long_range:
            pairs = self.long_range_neighbors(positions, cell, pbc)
        else:
            pairs = self.neighbors(positions, cell, pbc)
        idx_i, idx_j, shifts = half_pairs(pairs[0], pairs[1], pairs[2])
        vectors = self.edge_vectors(positions, idx_i, idx_j, shifts)
        lr_vectors: Optional[torch.Tensor] = None
        lr_i: Optional[torch.Tensor] = None
        lr_j: Optional[torch.Tensor] = None
        if self.long_range:
            lr_i, lr_j, lr_shifts = half_pairs(pairs[3], pairs[4], pairs[5])
            lr_vectors = self.edge_vectors(positions, lr_i, lr_j, lr_shifts)
        return self.network(vectors, idx_i, idx_j, species, True, lr_vectors, lr_i, lr_j).sum()


def edge_forces(num_atoms: int, idx_i: torch.Tensor, idx_j: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Forces (N, 3) from dE/dr_e of the pair vectors r_e = R_j - R_i (+ shift)."""
    return torch.zeros((num_atoms, 3), dtype=g.dtype, device=g.device).index_add_(0, idx_i, g).index_add_(0, idx_j, -g)


def edge_virial(vectors: torch.Tensor, g: torch.Tensor, idx_i: torch.Tensor, batch: Optional[torch.Tensor] = None,
                num_graphs: int = 1) -> torch.Tensor:
    """Virial (graphs, 3, 3) in eV, symmetrised: W = -sum_e r_e (x) dE/dr_e (LAMMPS sign convention:
    W = V * pressure tensor)."""
    outer = -(vectors.unsqueeze(-1) * g.unsqueeze(-2))
    if batch is None:
        virial = outer.sum(0).unsqueeze(0)
    else:
        edge_graph = batch.index_select(0, idx_i)
        virial = torch.zeros((num_graphs, 3, 3), dtype=g.dtype, device=g.device).index_add_(0, edge_graph, outer)
    return 0.5 * (virial + virial.transpose(1, 2))


def edge_geometry(geometry: List[torch.Tensor]) -> EdgeGeometry:
    """The stage methods' list [r, phi, sh, rbf, rows, weights] as the layers' EdgeGeometry."""
    return EdgeGeometry(r=geometry[0], rbf=geometry[3], rows=geometry[4], weights=geometry[5], phi=geometry[1],
                        sh=geometry[2])


def half_pairs(idx_i: torch.Tensor, idx_j: torch.Tensor, shifts: Optional[torch.Tensor]
               ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """One edge per pair from a full (symmetric) list: keep i < j, and for an atom and its own
    periodic image (i == j) the shift whose first non-zero component is positive."""
    keep = idx_i < idx_j
    if shifts is not None:
        s = shifts
        first = torch.where(s[:, 0] != 0, s[:, 0], torch.where(s[:, 1] != 0, s[:, 1], s[:, 2]))
        keep = keep | ((idx_i == idx_j) & (first > 0))
    kept = int(keep.sum())
    if 2 * kept != idx_i.shape[0]:
        raise ValueError("the neighbour list is not symmetric (" + str(idx_i.shape[0]) + " directed edges, "
                         + str(kept) + " pairs): pass both directions i<-j and j<-i of every pair, "
                         "with opposite shifts")
    if shifts is not None:
        return idx_i[keep], idx_j[keep], shifts[keep]
    return idx_i[keep], idx_j[keep], shifts


# Two atoms closer than this are an error: the edge direction is undefined at 0 and no physical
# structure comes near it (the ZBL repulsion of two H atoms at 0.01 A is ~1400 eV).
MIN_DISTANCE_A = 0.01


def check_distances(vectors: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor,
                    min_distance: float = 0.01) -> None:
    """Coincident atoms (closer than min_distance = MIN_DISTANCE_A) -> an error naming the closest
    such pair (atom indices in the order given to the model)."""
    if vectors.shape[0] > 0:
        d2 = (vectors * vectors).sum(-1)
        if bool((d2 < min_distance * min_distance).any()):
            e = int(torch.argmin(d2))
            raise ValueError("atoms " + str(int(idx_i[e])) + " and " + str(int(idx_j[e])) + " are closer than "
                             + str(min_distance) + " A: two atoms at the same position; remove the "
                             "duplicated atom from the structure (or, in MD, shorten the time step)")


def check_positions(positions: torch.Tensor, atomic_numbers: torch.Tensor) -> None:
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError("positions must have shape (N, 3), got " + str(positions.shape))
    if atomic_numbers.dim() != 1 or atomic_numbers.shape[0] != positions.shape[0]:
        raise ValueError("atomic_numbers has shape " + str(atomic_numbers.shape) + " but positions has "
                         + str(positions.shape[0]) + " atoms: give exactly one atomic number per atom")
    if not bool(torch.isfinite(positions).all()):
        raise ValueError("positions contain NaN or infinite values: the structure (or the MD run "
                         "that produced it) has blown up; check the input coordinates and time step")
