"""Energy and forces of one structure from a torch.compile'd model (`so3krates md --compile`, the ASE
calculator's `compile=True`).

For a small molecule the TorchScript export spends its time between operations, not in them: a
9-atom ethanol runs ~3,000 small operators per energy + forces, 10-20 ms on one CPU thread. Compiled,
Inductor fuses the per-edge work into a few C++ loops: an MD step of ethanol takes ~3.5-5 ms, about
twice the steps per second of OpenMM with the exported file (docs/benchmarks.md, "MD speed of a small molecule").

As for training (compiled_step.py), the forces are a torch.func.grad inside the compiled function and
the shapes are static: one padding atom and pairs padded with self-pairs of that atom beyond the cutoff
(no message, no link to a real atom). The pair count is rounded up to a bucket with headroom, so MD
recompiles only when a structure gains many more pairs than it started with (a free molecule never:
its bucket is capped at every pair of its atoms). Compiling takes 1-3 minutes on a CPU, once per
process (PyTorch caches the C++ kernels on disk, so a second process with the same shapes is quicker).
Long-range models (SO3LR) are not covered.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

from so3krates.model.compiled_step import compile_function, padded_inputs
from so3krates.model.layers import set_fused
from so3krates.model.network import So3krates
from so3krates.model.potential import Potential, edge_forces, edge_virial, half_pairs

HEADROOM = 1.15     # pairs compiled for, relative to the first structure's
BUCKET = 32         # ... rounded up to a multiple of this


def pair_bucket(pairs: int, num_atoms: int, periodic: bool) -> int:
    """The number of pairs to compile for when a structure has `pairs` (half-list) pairs."""
    size = max(BUCKET, int(math.ceil(pairs * HEADROOM / BUCKET)) * BUCKET)
    if not periodic:   # a free molecule has at most N (N - 1) / 2 pairs
        size = min(size, max(num_atoms * (num_atoms - 1) // 2, 1))
    return max(size, pairs)


class CompiledPotential:
    """Potential.evaluate_edges for one short-range structure, from a compiled function of fixed shape."""

    def __init__(self, potential: Potential):
        if potential.long_range:
            raise ValueError("the compiled path covers short-range models; this model has long-range terms "
                             "(electrostatics, dispersion): run it without compile")
        network = potential.network
        set_fused(network, False)   # the fused C++ operators have no compiled (Inductor) form
        for p in network.parameters():   # weights are constants here: an inference-only graph
            p.requires_grad_(False)
        self.potential = potential.eval()
        self.network = network
        self.pad_length = float(network.config.cutoff) + 1.0
        self.max_pairs = 0
        self.num_atoms = -1
        self.compilations = 0
        # cpp_wrapper: the generated code calls its kernels from C++ rather than Python, 20-35 % less
        # time per evaluation of a small molecule (compiling takes longer).
        self.function = compile_function(self._energies_and_gradient, options={"cpp_wrapper": True})

    def _energies_and_gradient(self, vectors: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor,
                               species: torch.Tensor, weight: torch.Tensor):
        def total(v):
            e = self.network(v, idx_i, idx_j, species, True)
            return (e * weight).sum(), e
        gradient, energies = torch.func.grad(total, has_aux=True)(vectors)
        return energies, gradient

    def evaluate(self, positions: torch.Tensor, species: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor,
                 shifts: Optional[torch.Tensor], periodic: bool = False,
                 compute_virial: bool = False) -> Dict[str, torch.Tensor]:
        """positions (N, 3) A, species (N,) model indices, pairs i <- j (both directions or one) with shifts
        (E, 3) A -> energy (1,), energies (N,), forces (N, 3) and, if asked, virial (1, 3, 3) (eV)."""
        n = positions.shape[0]
        idx_i, idx_j, shifts = half_pairs(idx_i, idx_j, shifts)
        vectors = self.potential.edge_vectors(positions, idx_i, idx_j, shifts)
        e = vectors.shape[0]
        if n != self.num_atoms or e > self.max_pairs:
            self.num_atoms, self.max_pairs = n, pair_bucket(e, n, periodic)
            self.compilations += 1
        energies, gradient = self.function(*padded_inputs(vectors, idx_i, idx_j, species, n + 1, self.max_pairs,
                                                          self.pad_length))
        energies, g = energies[:n], gradient[:e]
        out = {"energy": energies.sum().unsqueeze(0), "energies": energies, "forces": edge_forces(n, idx_i, idx_j, g)}
        if compute_virial:
            out["virial"] = edge_virial(vectors, g, idx_i)
        return out


def eager_potential(model) -> Tuple[Potential, Dict]:
    """The plain PyTorch Potential of a checkpoint or an exported file (the exported file's own weights,
    dtype and radial table), for torch.compile, which cannot compile TorchScript."""
    from pathlib import Path

    from so3krates.export.exporter import load_exported
    from so3krates.export.loading import is_exported_file, load_model
    if isinstance(model, Potential):
        return model, {}
    if not (isinstance(model, (str, Path)) and is_exported_file(model)):
        module, metadata = load_model(model)
        if not isinstance(module, Potential):
            raise ValueError("compile needs a checkpoint or an exported file, not a TorchScript module in memory")
        return module, metadata
    scripted, metadata = load_exported(model)
    if "config" not in metadata:
        raise ValueError(f"{model} has no model configuration in its metadata (exported before it was added): "
                         f"export it again from its checkpoint, or run without compile")
    from so3krates.model.config import So3kratesConfig
    config = So3kratesConfig.from_dict(metadata["config"])
    network = So3krates(config).to(getattr(torch, metadata["dtype"]))
    radial = metadata.get("radial_filters", {})
    if radial.get("kind") == "cubic Hermite table":
        network.tabulate_radial_filters(int(radial["points"]))   # creates the tables, filled below
    # Every tensor of the file, non-persistent buffers (tables, constants) included, into the network.
    own = dict(network.named_parameters())
    own.update(dict(network.named_buffers()))
    state = {k[len("network."):]: v for k, v in scripted.state_dict().items() if k.startswith("network.")}
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(f"{model} lacks {', '.join(missing[:3])} that this version's network has: run it "
                         f"without compile")
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[name])
    return Potential(network).eval(), metadata
