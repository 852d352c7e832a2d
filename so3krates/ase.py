"""ASE calculator: energies in eV, forces in eV/A, stress in eV/A^3 (ASE conventions)."""
from __future__ import annotations

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
    directions; stress only for fully periodic cells.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, model, device: str = "cpu", **kwargs):
        """model: a checkpoint or exported file; device: 'cpu', 'cuda' or 'cuda:N' (a clear error
        when CUDA is not available)."""
        from so3krates.devices import torch_device
        super().__init__(**kwargs)
        device = str(torch_device(device))
        self.model, self.metadata = load_model(model, device)
        self.device = device
        self.cutoff = float(self.model.cutoff)
        self.elements = list(self.model.elements)

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
        i, j, shifts = self._pairs(positions, cell, pbc)
        dev = self.device
        # TorchScript's graph-executor optimisation (autodiff subgraphs) makes compute(), which
        # differentiates inside the graph, slower than the plain interpreter (docs/benchmarks.md).
        with torch.jit.optimized_execution(False):
            try:
                out = self.model.compute(
                    torch.from_numpy(positions).to(dev), torch.from_numpy(atoms.numbers.astype(np.int64)).to(dev),
                    None, None, torch.stack([torch.from_numpy(i), torch.from_numpy(j)]).to(dev),
                    torch.from_numpy(shifts).to(dev), -1, True, bool(pbc.all()))
            except torch.jit.Error as exc:   # an exported model's error: its message, without the TorchScript trace
                raise ValueError(model_error_message(exc)) from None
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

    def _pairs(self, positions, cell, pbc):
        return find_pairs(positions, cell, pbc, self.cutoff)
