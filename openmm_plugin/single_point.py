"""Energy and forces of one structure through an OpenMM Context."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
from ase import Atoms

from .system import build_system, platform_for
from .units import ANGSTROM_PER_NM, KJ_PER_MOL_PER_EV


def single_point(model_path: str, atoms: Atoms, platform: Optional[str] = None,
                 device: Optional[str] = None) -> Dict[str, np.ndarray]:
    """{'energy': eV, 'forces': (N, 3) eV/A in the frame of `atoms`, 'virial': None}."""
    import openmm
    from openmm import unit

    system, frame = build_system(model_path, atoms, device)
    context = openmm.Context(system, openmm.VerletIntegrator(0.0005), *platform_for(model_path, platform, device))
    context.setPositions(frame.positions_nm)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    forces = forces / (KJ_PER_MOL_PER_EV * ANGSTROM_PER_NM)
    return {"energy": float(energy), "forces": frame.to_ase(np.asarray(forces)), "virial": None}
