"""The training step's model evaluation compiled with torch.compile (`so3krates train --compile`).

Force training needs the second derivative (the loss holds dE/dr, and its gradient with respect to
the weights goes through that derivative again). torch.compile cannot differentiate a graph built
by torch.autograd.grad, so here the forces are a torch.func.grad *inside* the compiled function:
the first derivative becomes ordinary operations of the traced graph, and AOTAutograd derives the
weight gradient of the whole (energies, dE/dr) graph as usual. Inductor then fuses the many small
per-edge operations of a step into a few C++ loops (docs/benchmarks.md: 2.5-4x the structures per
second of the eager step on one CPU thread).

Shapes are static: every batch is padded to the most atoms and pairs any batch of the training set
can hold, so there is one compilation per run (a few minutes on a CPU, counted in --max-time). The
padding is one extra atom (weight 0 in the energy sum) with self-pairs 1 A beyond the cutoff: the
cutoff function is 0 there, so they carry no message (inside the cutoff, hundreds of identical
messages into one atom overflow float32 within three layers, and 0 x inf poisons the weight
gradient), and the atom has no link to a real one, so the real atoms' energies, forces and weight
gradients are those of the eager step to round-off (tests/test_compiled_step.py).
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence, Tuple

import torch

from so3krates.model.potential import Potential, half_pairs


def _skip_inductor_loop_split() -> None:
    """PyTorch 2.9's CPU code generator fails an internal assertion when it tries to split the loops of
    the fused (pairs, heads, features) kernels of this model ("expected_var_ranges ==
    extra_indexing_ranges"); the split is an optional loop transformation, so it is turned off (for
    the whole process: torch.compile has no per-call switch for it)."""
    try:
        from torch._inductor.codegen.cpp import CppScheduling
    except ImportError:   # another PyTorch: nothing to work around
        return
    if hasattr(CppScheduling, "try_loop_split"):
        CppScheduling.try_loop_split = lambda self, nodes: nodes


def compile_function(function, **options):
    """torch.compile of a function of fixed shapes, on this model's kernels (fullgraph, static shapes)."""
    _skip_inductor_loop_split()
    # Inductor's C++ build asks torch.utils.cpp_extension, which warns on every CPU-only machine that
    # it found no CUDA runtime: noise in a training log.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(function, fullgraph=True, dynamic=False, **options)


def padded_inputs(vectors: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor, species: torch.Tensor,
                  max_atoms: int, max_pairs: int, pad_length: float):
    """The edges and atoms padded to the compiled shapes: the last atom is the padding atom (weight 0),
    the extra pairs its self-pairs at pad_length (beyond the cutoff). -> vectors, idx_i, idx_j, species,
    weight (float64, 1 for the real atoms)."""
    n, e, device = species.shape[0], vectors.shape[0], vectors.device
    padded_vectors = vectors.new_zeros((max_pairs, 3))
    padded_vectors[:e] = vectors
    padded_vectors[e:, 0] = pad_length
    pad_index = torch.full((max_pairs - e,), max_atoms - 1, dtype=torch.long, device=device)
    padded_species = torch.zeros(max_atoms, dtype=torch.long, device=device)
    padded_species[:n] = species
    weight = torch.zeros(max_atoms, dtype=torch.float64, device=device)
    weight[:n] = 1.0
    return padded_vectors, torch.cat([idx_i, pad_index]), torch.cat([idx_j, pad_index]), padded_species, weight


def largest_batch(graphs: Sequence, batch_size: int) -> Tuple[int, int]:
    """(atoms, half pairs) of the largest batch the graphs can form: the compiled shape."""
    atoms = sorted(len(g.species) for g in graphs)
    pairs = sorted(len(g.idx_i) // 2 for g in graphs)
    return sum(atoms[-batch_size:]), sum(pairs[-batch_size:])


class CompileError(RuntimeError):
    """torch.compile failed on the first call (no C++ compiler, an unsupported PyTorch, ...)."""


class CompiledForces:
    """energy (per graph), forces and (optionally) virial of a collated batch, as Potential.evaluate_edges
    with create_graph=True, from one compiled function of fixed shape."""

    def __init__(self, potential: Potential, graphs: Sequence, batch_size: int):
        if potential.long_range:
            raise ValueError("--compile covers short-range models; this model has long-range terms")
        self.potential = potential
        self.network = potential.network
        atoms, self.max_pairs = largest_batch(graphs, batch_size)
        self.max_atoms = atoms + 1        # + the padding atom, always present
        self.pad_length = float(self.network.config.cutoff) + 1.0
        # Not cpp_wrapper (as compiled_inference.py has): a few % faster steps, but its backward loses a
        # reference to None on every step in PyTorch 2.9, and a long run dies at exit (none_dealloc).
        self.function = compile_function(self._energies_and_gradient)
        self.compiled_once = False
        # The same tensors for the whole run (the optimizer updates them in place): gathered once.
        self.params = dict(self.network.named_parameters())
        self.buffers = dict(self.network.named_buffers())

    def _energies_and_gradient(self, params: Dict[str, torch.Tensor], buffers: Dict[str, torch.Tensor],
                               vectors: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor,
                               species: torch.Tensor, weight: torch.Tensor):
        def total(v):
            e = torch.func.functional_call(self.network, (params, buffers), (v, idx_i, idx_j, species, True))
            return (e * weight).sum(), e
        gradient, energies = torch.func.grad(total, has_aux=True)(vectors)
        return energies, gradient

    def evaluate(self, batch: Dict, compute_virial: bool = False) -> Dict[str, torch.Tensor]:
        positions, n = batch["positions"], batch["positions"].shape[0]
        idx_i, idx_j, shifts = half_pairs(batch["idx_i"], batch["idx_j"], batch["shifts"])
        vectors = self.potential.edge_vectors(positions, idx_i, idx_j, shifts)
        e = vectors.shape[0]
        if n >= self.max_atoms or e > self.max_pairs:
            raise ValueError(f"a batch of {n} atoms and {e} pairs is larger than the compiled step's "
                             f"{self.max_atoms - 1} atoms and {self.max_pairs} pairs")
        device = positions.device
        padded = padded_inputs(vectors, idx_i, idx_j, batch["species"], self.max_atoms, self.max_pairs,
                               self.pad_length)
        try:
            energies, gradient = self.function(self.params, self.buffers, *padded)
        except Exception as e:   # noqa: BLE001 - torch.compile's failures have no common type
            if self.compiled_once:
                raise
            raise CompileError(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}") from e
        self.compiled_once = True
        energies, g = energies[:n], gradient[:e]
        graphs = batch["num_graphs"]
        energy = torch.zeros(graphs, dtype=energies.dtype, device=device).index_add(0, batch["batch"], energies)
        forces = torch.zeros((n, 3), dtype=g.dtype, device=device).index_add(0, idx_i, g).index_add(0, idx_j, -g)
        out = {"energy": energy, "energies": energies, "forces": forces}
        if compute_virial:
            outer = -(vectors.detach().unsqueeze(-1) * g.unsqueeze(-2))
            edge_graph = batch["batch"].index_select(0, idx_i)
            virial = torch.zeros((graphs, 3, 3), dtype=g.dtype, device=device).index_add(0, edge_graph, outer)
            out["virial"] = 0.5 * (virial + virial.transpose(1, 2))
        return out


# `so3krates train` without --compile / --no-compile decides by the run's length. Compilation takes 1.5-2.5
# minutes on a shared CPU core, then a step is 1.8-2.5x faster (docs/benchmarks.md, "A compiled step"): it
# gave 24 % (ethanol) and 10 % (3BPA) lower force errors in 20 minutes, and 22 % on ethanol in 10 (side by
# side, 2026-12-04: 15.8 against 20.3 meV/A).
AUTO_MIN_SECONDS = 600.0
# Runs given by --epochs alone: an eager step of a small molecule takes ~0.05-0.3 s on one core, so
# 10,000 steps are 10 to 50 minutes.
AUTO_MIN_STEPS = 10_000
# Every batch is padded to the largest one: when the padded pairs exceed the mean batch's by more than
# this factor (data of very different sizes), the padding costs what the fused kernels gain.
AUTO_MAX_PADDING = 1.5


def automatic_choice(device: torch.device, seconds_left: Optional[float], steps_left: Optional[int], graphs: Sequence,
                     batch_size: int) -> Tuple[bool, str]:
    """Whether to compile the step of a run that asked neither --compile nor --no-compile, and why."""
    if device.type != "cpu":
        return False, "the compiled step is measured on CPUs only"
    long_enough = []
    if seconds_left is not None:
        long_enough.append(seconds_left >= AUTO_MIN_SECONDS)
    if steps_left is not None:
        long_enough.append(steps_left >= AUTO_MIN_STEPS)
    if not all(long_enough):
        return False, (f"a run shorter than {AUTO_MIN_SECONDS / 60:.0f} minutes of --max-time or "
                       f"{AUTO_MIN_STEPS:,} steps of --epochs does not repay the minutes of compilation")
    padded = largest_batch(graphs, batch_size)[1]
    mean = batch_size * sum(len(g.idx_i) // 2 for g in graphs) / max(len(graphs), 1)
    if padded > AUTO_MAX_PADDING * mean:
        return False, (f"structures of very different sizes: every batch would be padded to {padded} pairs, "
                       f"{padded / mean:.1f}x the mean batch")
    return True, "a long run"


def compiled_forces(potential: Potential, graphs: Sequence, batch_size: int) -> Tuple[Optional[CompiledForces], str]:
    """(CompiledForces or None, a line for the start-up summary that says which and why)."""
    try:
        compiled = CompiledForces(potential, graphs, batch_size)
    except ValueError as e:
        return None, f"uncompiled ({e})"
    return compiled, (f"compiled with torch.compile, every batch padded to {compiled.max_atoms} atoms and "
                      f"{compiled.max_pairs} pairs; the first step compiles it (minutes, counted in the budget)")
