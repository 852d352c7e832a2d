"""ASE calculator: energies in eV, forces in eV/A, stress in eV/A^3 (ASE conventions)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from so3krates.model.checkpoint import network_from_checkpoint
from so3krates.model.potential import Potential


def load_potential(model, device: str = "cpu"):
    """An exported file, a checkpoint file, a Potential or a ScriptModule -> (module, metadata)."""
    if isinstance(model, (Potential, torch.jit.ScriptModule)):
        return model.to(device), {}
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    import zipfile
    from so3krates.export import load_exported
    if zipfile.is_zipfile(path) and any(n.endswith("/constants.pkl") or n.endswith("/code/__torch__.py")
                                        for n in zipfile.ZipFile(path).namelist()):
        module, meta = load_exported(path, device)
        return module, meta
    network, payload = network_from_checkpoint(path)
    return Potential(network).to(device), payload.get("metadata", {})


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
        super().__init__(**kwargs)
        self.model, self.metadata = load_potential(model, device)
        self.device = device
        self.cutoff = float(self.model.cutoff)
        self.elements = list(self.model.elements)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        positions = np.asarray(atoms.positions, dtype=np.float64)
        if not np.isfinite(positions).all():
            raise ValueError("atoms.positions contain NaN or infinite values")
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        i, j, shifts = self._pairs(positions, cell, pbc)
        dev = self.device
        # TorchScript's graph-executor optimisation (autodiff subgraphs) makes compute(), which
        # differentiates inside the graph, about 1.4x slower than the plain interpreter.
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
        if pbc.any() and not pbc.all():
            # Mixed periodicity: vesin takes one flag for all directions; use the model's search.
            idx = self.model.neighbors(torch.from_numpy(positions), torch.from_numpy(cell), torch.from_numpy(pbc))
            return idx[0].numpy(), idx[1].numpy(), idx[2].double().numpy()
        import vesin
        periodic = bool(pbc.all())
        box = cell if periodic else np.zeros((3, 3))
        nl = vesin.NeighborList(cutoff=self.cutoff, full_list=True)
        i, j, s = nl.compute(points=positions, box=box, periodic=periodic, quantities="ijS")
        return i.astype(np.int64), j.astype(np.int64), (s.astype(np.float64) @ cell if periodic else np.zeros((len(i), 3)))
