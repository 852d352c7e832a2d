"""Energy, forces and (for periodic cells) virial of one structure, through each engine's own path."""
from __future__ import annotations

from typing import Dict

import numpy as np
from ase import Atoms


def ase_single_point(model_path: str, atoms: Atoms) -> Dict[str, np.ndarray]:
    from so3krates.ase import So3kratesCalculator
    atoms = atoms.copy()
    atoms.calc = So3kratesCalculator(model_path)
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "virial": None}
    if atoms.pbc.all():
        out["virial"] = -atoms.get_stress(voigt=False) * atoms.get_volume()
    return out


def single_point(engine: str, model_path: str, atoms: Atoms, ranks: int = 1) -> Dict[str, np.ndarray]:
    """{'energy': eV, 'forces': (N, 3) eV/A, 'virial': (3, 3) eV or None}."""
    if engine == "ase":
        return ase_single_point(model_path, atoms)
    if engine == "openmm":
        from so3krates.openmm_plugin.single_point import single_point as openmm_single_point
        return openmm_single_point(model_path, atoms)
    if engine == "lammps":
        from so3krates.lammps_pair.single_point import single_point as lammps_single_point
        return lammps_single_point(model_path, atoms, ranks=ranks)
    raise ValueError(f"unknown engine {engine!r}")
