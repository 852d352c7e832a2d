"""create_force: an openmm-torch TorchForce that runs an exported so3krates model."""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from so3krates.export import load_exported, read_metadata
from so3krates.model.neighbors import cell_heights

from .units import ANGSTROM_PER_NM, KJ_PER_MOL_PER_EV


class So3kratesOpenMMModule(nn.Module):
    """What openmm-torch calls: positions (nm) [and box vectors (nm)] -> (energy kJ/mol, forces kJ/mol/nm).

    The model computes in its own dtype whatever the platform's positions dtype; the forces are
    returned in the positions' dtype. Only the atoms in `indices` (the ML region) are evaluated;
    the other atoms get zero force from this module.
    """

    def __init__(self, model: torch.jit.ScriptModule, atomic_numbers: List[int], indices: Optional[List[int]],
                 periodic: bool, scaled: bool = False):
        super().__init__()
        self.model = model
        self.register_buffer("atomic_numbers", torch.tensor(atomic_numbers, dtype=torch.long))
        self.subset = indices is not None
        self.register_buffer("indices", torch.tensor(indices if indices is not None else [], dtype=torch.long))
        self.periodic = periodic
        self.scaled = scaled  # energy and forces times a global parameter (lambda_interpolate)
        self.register_buffer("pbc", torch.tensor([periodic, periodic, periodic]))
        self.angstrom_per_nm = ANGSTROM_PER_NM
        self.kj_per_mol_per_ev = KJ_PER_MOL_PER_EV

    def forward(self, positions: torch.Tensor, extra1: Optional[torch.Tensor] = None,
                extra2: Optional[torch.Tensor] = None):
        # openmm-torch passes the box vectors only for periodic forces, then the global parameters.
        boxvectors = extra1 if self.periodic else None
        scale = extra2 if self.periodic else extra1
        # openmm-torch hands positions that require grad; the model returns its forces itself
        # (pair gradients), so no autograd graph back to the positions is needed.
        pos = positions.detach()
        if self.subset:
            pos = pos.index_select(0, self.indices)
        elif positions.shape[0] != self.atomic_numbers.shape[0]:
            raise ValueError("the System has " + str(positions.shape[0]) + " particles but the so3krates force "
                             "was created with " + str(self.atomic_numbers.shape[0]) + " atomic numbers: give "
                             "create_force one atomic number per particle (or atoms=[...] for an ML region)")
        pos = pos.to(torch.float64) * self.angstrom_per_nm
        cell: Optional[torch.Tensor] = None
        pbc: Optional[torch.Tensor] = None
        if self.periodic:
            if boxvectors is None:
                raise ValueError("the so3krates force is periodic but OpenMM passed no box vectors")
            cell = boxvectors.detach().to(torch.float64) * self.angstrom_per_nm
            pbc = self.pbc
        out = self.evaluate(pos, cell, pbc)
        # Sum the per-atom energies in float64: with per-element shifts of ~1e3 eV a float32 sum
        # over thousands of atoms would lose ~0.1 eV.
        energy = out["energies"].to(torch.float64).sum() * self.kj_per_mol_per_ev
        # eV/A -> kJ/mol/nm
        forces = out["forces"].to(torch.float64) * (self.kj_per_mol_per_ev * self.angstrom_per_nm)
        if self.scaled and scale is not None:
            energy = energy * scale.to(torch.float64)
            forces = forces * scale.to(torch.float64)
        if self.subset:
            forces = torch.zeros((positions.shape[0], 3), dtype=torch.float64,
                                 device=positions.device).index_copy(0, self.indices, forces)
        return energy, forces.to(positions.dtype)

    def evaluate(self, pos: torch.Tensor, cell: Optional[torch.Tensor], pbc: Optional[torch.Tensor]):
        return self.model.compute(pos, self.atomic_numbers, cell, pbc)


class So3kratesOpenMMChargedModule(So3kratesOpenMMModule):
    """As So3kratesOpenMMModule, for models with a total charge / multiplicity input (SO3LR): the
    structure's charge and multiplicity are fixed when the force is created. (A separate class:
    files exported before these inputs existed have a compute() without them.)"""

    def __init__(self, model: torch.jit.ScriptModule, atomic_numbers: List[int], indices: Optional[List[int]],
                 periodic: bool, scaled: bool, charge: float, multiplicity: int):
        super().__init__(model, atomic_numbers, indices, periodic, scaled)
        self.charge = float(charge)
        self.multiplicity = int(multiplicity)

    def evaluate(self, pos: torch.Tensor, cell: Optional[torch.Tensor], pbc: Optional[torch.Tensor]):
        return self.model.compute(pos, self.atomic_numbers, cell, pbc, None, None, -1, True, False,
                                  self.charge, self.multiplicity)


def _topology_numbers(topology) -> List[int]:
    numbers = []
    for atom in topology.atoms():
        if atom.element is None:
            raise ValueError(f"topology atom {atom.index} ({atom.name} in residue {atom.residue.name}) has no element; "
                             "so3krates needs the element of every ML atom")
        numbers.append(atom.element.atomic_number)
    return numbers


# openmm-ml's precision words (MACE, FeNNix: 'single', 'double') and dtype names -> the model dtype
PRECISION_DTYPES = {"single": "float32", "double": "float64", "float32": "float32", "float64": "float64"}


def model_dtype_for_precision(precision: Optional[str], metadata, model_path) -> None:
    """Check that `precision` (None: whatever the model has) names the dtype the model was exported
    with: a TorchScript export computes in one dtype only."""
    if precision is None:
        return
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision={precision!r} is not understood; use 'single' or 'double' (openmm-ml's "
                         f"words), 'float32' or 'float64', or None for the dtype the model was exported with")
    wanted = PRECISION_DTYPES[precision]
    if wanted != metadata["dtype"]:
        raise ValueError(f"precision={precision!r}: the model {model_path} computes in {metadata['dtype']}, the "
                         f"dtype it was exported with; export the checkpoint again in {wanted} with "
                         f"`so3krates export best.ckpt -o model_{wanted}.pt --dtype {wanted}`, or leave precision "
                         f"unset")


def create_force(model_path, topology=None, atoms: Optional[Sequence[int]] = None, precision: Optional[str] = None,
                 atomic_numbers: Optional[Sequence[int]] = None, periodic: Optional[bool] = None,
                 scale_parameter: Optional[str] = None, *, device: Optional[str] = None,
                 charge: Optional[float] = None, multiplicity: Optional[int] = None):
    """An openmm-torch TorchForce for the exported model at `model_path`.

    topology: an openmm.app.Topology (elements, and whether the system is periodic); or
    atomic_numbers: one per particle of the System, when there is no topology.
    atoms: indices of the atoms modelled by so3krates (the ML region); default: all.
    precision: None (the dtype the model was exported with), or that dtype as openmm-ml's
        'single'/'double' or 'float32'/'float64'; the model always computes in its exported dtype,
        whatever the platform's precision, so another value is an error.
    periodic: default: whether the topology has periodic box vectors.
    scale_parameter: name of a global parameter (default value 1) that multiplies the energy, as
        openmm-ml's "lambda_interpolate".
    device: 'cpu', 'cuda' or 'cuda:N' (None: 'cpu'), checked here; openmm-torch runs the model on the
        device of the Context's platform (CPU and Reference: the CPU; CUDA: that GPU).
    charge, multiplicity: total charge (e) and spin multiplicity 2S+1 of the ML region, for models
        with those inputs (SO3LR; default 0 and 1); an error for models without them.
    """
    from ase.data import chemical_symbols

    from so3krates.devices import torch_device

    torch_device(device)   # a GPU asked for on a machine without one: a clear error
    metadata = read_metadata(model_path)  # refuses files that are not so3krates models
    model_dtype_for_precision(precision, metadata, model_path)
    if metadata.get("length_unit") != "A" or metadata.get("energy_unit") != "eV":
        raise ValueError(f"{model_path} declares units {metadata.get('length_unit')}/{metadata.get('energy_unit')}; "
                         "this adapter converts from A/eV only")
    if topology is not None:
        numbers = _topology_numbers(topology)
        if periodic is None:
            periodic = topology.getPeriodicBoxVectors() is not None
    elif atomic_numbers is not None:
        numbers = [int(z) for z in atomic_numbers]
    else:
        raise ValueError("create_force needs a topology or atomic_numbers to know the element of each atom")
    periodic = bool(periodic)
    indices = None if atoms is None else [int(i) for i in atoms]
    if indices is not None:
        if len(set(indices)) != len(indices) or min(indices) < 0 or max(indices) >= len(numbers):
            raise ValueError(f"atoms must be distinct indices in 0..{len(numbers) - 1}")
    ml_numbers = [numbers[i] for i in indices] if indices is not None else numbers
    known = set(metadata["elements"])
    missing = sorted({z for z in ml_numbers if z not in known})
    if missing:
        first = next(i for i, z in enumerate(ml_numbers) if z in missing)
        atom_index = indices[first] if indices is not None else first
        raise ValueError(
            f"element(s) {', '.join(chemical_symbols[z] for z in missing)} (atom {atom_index} and possibly others) "
            f"are not in the model {model_path}, which knows {', '.join(chemical_symbols[z] for z in metadata['elements'])}; "
            f"model those atoms with a classical force field (pass atoms=[...] or use createMixedSystem) or retrain")
    inputs = metadata.get("global_inputs", [])
    from so3krates.ase import check_global_inputs
    check_global_inputs({"charge": "charge" in inputs, "multiplicity": "multiplicity" in inputs}, charge,
                        multiplicity, "create_force")
    if periodic and topology is not None and topology.getPeriodicBoxVectors() is not None:
        check_box(topology.getPeriodicBoxVectors(), metadata)

    model, _ = load_exported(model_path)
    scaled = scale_parameter is not None
    if inputs:
        module = torch.jit.script(So3kratesOpenMMChargedModule(
            model, ml_numbers, indices, periodic, scaled, 0.0 if charge is None else charge,
            1 if multiplicity is None else multiplicity))
    else:
        module = torch.jit.script(So3kratesOpenMMModule(model, ml_numbers, indices, periodic, scaled))
    force = _new_force(module, periodic)
    if scale_parameter is not None:
        force.addGlobalParameter(scale_parameter, 1.0)
    return force


def _new_force(module, periodic: bool):
    from .runtime import ensure_torch_plugin
    ensure_torch_plugin()   # libnvrtc, openmm-torch's kernels, TorchForce copies (runtime.py); once
    import openmmtorch
    force = openmmtorch.TorchForce(module)
    force.setOutputsForces(True)
    force.setUsesPeriodicBoundaryConditions(periodic)
    force.setName("so3krates")
    return force


def check_box(box_vectors, metadata) -> None:
    """The built-in neighbour search needs every periodic cell height >= the cutoff."""
    from openmm import unit
    cell = np.array([[v.value_in_unit(unit.nanometer) for v in vec] for vec in box_vectors]) * ANGSTROM_PER_NM
    heights = cell_heights(torch.tensor(cell)).numpy()
    long_range = metadata.get("long_range_cutoff_A")
    if long_range and heights.min() < long_range:
        # The built-in search includes every periodic image within the long-range cutoff (as the
        # reference, So3krates-torch with matscipy, does) when each cell height is at least r_lr.
        raise ValueError(
            f"periodic box too small for the model's long-range terms: its smallest height is "
            f"{heights.min() / ANGSTROM_PER_NM:.4f} nm ({heights.min():.3f} A) but the long-range cutoff "
            f"(electrostatics, dispersion) is {long_range} A; use a box at least {long_range / ANGSTROM_PER_NM:.2f} nm "
            f"across in every direction (more solvent)")
    if heights.min() < metadata["cutoff_A"]:
        raise ValueError(
            f"periodic box too small for the model: its smallest height is {heights.min() / ANGSTROM_PER_NM:.4f} nm "
            f"({heights.min():.3f} A) but the model cutoff is {metadata['cutoff_A']} A (interaction range "
            f"{metadata['interaction_range_A']} A over {metadata['num_layers']} layers); use a box at least "
            f"{metadata['cutoff_A'] / ANGSTROM_PER_NM:.3f} nm across in every direction")
