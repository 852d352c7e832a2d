"""ASE calculator: energies in eV, forces in eV/A, stress in eV/A^3 (ASE conventions)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from so3krates.export import load_model
from so3krates.model.neighbors import find_pairs


def model_error_message(exc: Exception) -> str:
    """The message an exported model raised (the last `builtins.XxxError: ...` line of a torch.jit.Error)."""
    lines = [line for line in str(exc).splitlines() if line.startswith("builtins.")]
    return lines[-1].split(": ", 1)[-1] if lines else str(exc)


class So3kratesCalculator(Calculator):
    """SO3krates as an ASE calculator, from a checkpoint (`best.ckpt`) or an exported model file.

    Neighbour pairs come from vesin; the model evaluates them. Periodic along any subset of
    directions; stress only for fully periodic cells. compile=True runs the model through
    torch.compile instead of TorchScript (model/compiled_inference.py: 2-3x faster than the exported
    file for small molecules on a CPU, after 1-3 minutes of compilation at the first evaluation;
    short-range models).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, model, device: str = "cpu", *, charge: Optional[float] = None,
                 multiplicity: Optional[int] = None, compile: bool = False, **kwargs):
        """model: a checkpoint or exported file; device: 'cpu', 'cuda' or 'cuda:N' (a clear error
        when CUDA is not available). charge (e) and multiplicity (2S + 1) of the structure, for
        models with those inputs (SO3LR); without them, atoms.info["charge"] and atoms.info["spin"]
        (the multiplicity, as fairchem uses it; also atoms.info["multiplicity"]) are read, default
        0 and 1."""
        from so3krates.devices import torch_device
        super().__init__(**kwargs)
        device = str(torch_device(device))
        self.model, self.metadata = load_model(model, device)
        self.device = device
        self.cutoff = float(self.model.cutoff)
        self.elements = list(self.model.elements)
        self.inputs = model_inputs(self.model)
        check_global_inputs(self.inputs, charge, multiplicity, "So3kratesCalculator")
        self.charge, self.multiplicity = charge, multiplicity
        self.compiled = None
        if compile:
            if device != "cpu":
                raise ValueError(f"compile=True runs on the CPU only; got device {device!r}: leave compile out")
            from so3krates.model.compiled_inference import CompiledPotential, eager_potential
            potential, _ = eager_potential(model)
            self.compiled = CompiledPotential(potential)

    def check_state(self, atoms, tol=1e-15):
        """ASE's changes, plus a changed atoms.info charge/spin for models that read them."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and (self.inputs["charge"] or self.inputs["multiplicity"]):
            keys = ("charge", "spin", "multiplicity")
            if any(self.atoms.info.get(k) != atoms.info.get(k) for k in keys):
                changes.append("info")
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        positions = np.asarray(atoms.positions, dtype=np.float64)
        if not np.isfinite(positions).all():
            raise ValueError("atoms.positions contain NaN or infinite values")
        unknown = sorted(set(atoms.numbers.tolist()) - set(self.elements))
        if unknown:
            from ase.data import chemical_symbols
            raise ValueError(f"the structure contains {', '.join(chemical_symbols[z] for z in unknown)}, which the "
                             f"model does not know (its elements: "
                             f"{' '.join(chemical_symbols[z] for z in self.elements)}); use a model trained on "
                             f"these elements")
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        dev = self.device
        extra = ()
        if self.inputs["long_range_cutoff"] > 0 or self.inputs["charge"] or self.inputs["multiplicity"]:
            # One search up to the long-range cutoff; the short-range pairs are its subset.
            lr_i, lr_j, lr_shifts = self._pairs(positions, cell, pbc, max(self.inputs["long_range_cutoff"], self.cutoff))
            d = positions[lr_j] - positions[lr_i] + lr_shifts
            short = (d * d).sum(-1) < self.cutoff * self.cutoff
            i, j, shifts = lr_i[short], lr_j[short], lr_shifts[short]
            charge, multiplicity = structure_charge_and_multiplicity(atoms, self.charge, self.multiplicity)
            extra = (float(charge), int(multiplicity),
                     torch.stack([torch.from_numpy(lr_i), torch.from_numpy(lr_j)]).to(dev),
                     torch.from_numpy(lr_shifts).to(dev))
        else:
            i, j, shifts = self._pairs(positions, cell, pbc)
        if self.compiled is not None:
            species = self.compiled.potential.species_index(torch.from_numpy(atoms.numbers.astype(np.int64)))
            out = self.compiled.evaluate(torch.from_numpy(positions), species, torch.from_numpy(i),
                                         torch.from_numpy(j), torch.from_numpy(shifts), bool(pbc.any()),
                                         bool(pbc.all()))
            self._store(out, atoms, pbc)
            return
        # TorchScript's graph-executor optimisation (autodiff subgraphs) makes compute(), which
        # differentiates inside the graph, slower than the plain interpreter (docs/benchmarks.md).
        with torch.jit.optimized_execution(False):
            try:
                out = self.model.compute(
                    torch.from_numpy(positions).to(dev), torch.from_numpy(atoms.numbers.astype(np.int64)).to(dev),
                    None, None, torch.stack([torch.from_numpy(i), torch.from_numpy(j)]).to(dev),
                    torch.from_numpy(shifts).to(dev), -1, True, bool(pbc.all()), *extra)
            except torch.jit.Error as exc:   # an exported model's error: its message, without the TorchScript trace
                raise ValueError(model_error_message(exc)) from None
        self._store(out, atoms, pbc)

    def _store(self, out, atoms, pbc) -> None:
        energy = float(out["energy"].detach().sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out["energies"].detach().cpu().double().numpy(),
            "forces": out["forces"].detach().cpu().double().numpy(),
        }
        if pbc.all():
            virial = out["virial"].detach().cpu().double().numpy()[0]
            stress = -virial / atoms.get_volume()
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]]

    def _pairs(self, positions, cell, pbc, cutoff: Optional[float] = None):
        return find_pairs(positions, cell, pbc, self.cutoff if cutoff is None else cutoff)


def model_inputs(model) -> dict:
    """What a loaded model takes besides positions and elements (files exported before SO3LR
    support have none of these attributes)."""
    return {"long_range_cutoff": float(getattr(model, "long_range_cutoff", 0.0)),
            "charge": bool(getattr(model, "charge_input", False)),
            "multiplicity": bool(getattr(model, "spin_input", False))}


def check_global_inputs(inputs: dict, charge, multiplicity, where: str) -> None:
    """Giving a total charge or multiplicity to a model without those inputs is an error."""
    for name, value in (("charge", charge), ("multiplicity", multiplicity)):
        if value is not None and not inputs[name]:
            raise ValueError(f"{where}: {name}={value!r} given, but this model has no {name} input (only SO3LR-like "
                             f"models with charge/spin embeddings take it); leave {name} out")
    if multiplicity is not None and (int(multiplicity) != multiplicity or multiplicity < 1):
        raise ValueError(f"{where}: multiplicity must be a positive integer (2S+1: 1 singlet, 2 doublet, "
                         f"3 triplet), got {multiplicity!r}")
    if charge is not None and int(charge) != charge:
        raise ValueError(f"{where}: charge must be a whole number of elementary charges, got {charge!r}")


def structure_charge_and_multiplicity(atoms, charge, multiplicity):
    """The calculator's values, else atoms.info["charge"] and atoms.info["spin"] /
    atoms.info["multiplicity"] (the multiplicity 2S+1), else 0 and 1."""
    if charge is None:
        charge = atoms.info.get("charge", 0)
    if multiplicity is None:
        multiplicity = atoms.info.get("multiplicity", atoms.info.get("spin", 1))
    check_global_inputs({"charge": True, "multiplicity": True}, charge, multiplicity, "atoms.info")
    return charge, multiplicity


def structure_inputs(model_path, atoms) -> dict:
    """charge / multiplicity from atoms.info (as the ASE calculator reads them) for models that take
    them (SO3LR), so that every engine of `so3krates md` / `validate` sees the same structure."""
    from so3krates.export import read_metadata
    inputs = read_metadata(model_path).get("global_inputs", [])
    if not inputs:
        return {}
    charge, multiplicity = structure_charge_and_multiplicity(atoms, None, None)
    return {k: v for k, v in (("charge", charge), ("multiplicity", multiplicity)) if k in inputs}
