"""Test and benchmark structures built with ASE."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule

WATER_MOLECULES_PER_A3 = 0.03343  # liquid water at 1 g/cm^3


def water_box(num_molecules: int, seed: int = 0, density_scale: float = 1.0) -> Atoms:
    """A periodic cubic box of liquid-density water: molecules on a cubic grid, random orientations,
    slightly jittered. Not equilibrated, but free of overlaps."""
    rng = np.random.default_rng(seed)
    per_side = math.ceil(num_molecules ** (1.0 / 3.0))
    length = (num_molecules / (WATER_MOLECULES_PER_A3 * density_scale)) ** (1.0 / 3.0)
    spacing = length / per_side
    sites = np.array([(i, j, k) for i in range(per_side) for j in range(per_side) for k in range(per_side)], float)
    sites = sites[rng.permutation(len(sites))[:num_molecules]]
    h2o = molecule("H2O")
    h2o.positions -= h2o.get_center_of_mass()
    positions, numbers = [], []
    for site in sites:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        centre = (site + 0.5) * spacing + rng.uniform(-0.1, 0.1, 3)
        positions.extend(h2o.positions @ q.T + centre)
        numbers.extend(h2o.numbers)
    return Atoms(numbers=numbers, positions=positions, cell=[length] * 3, pbc=True)


BUNDLED = {"alanine-dipeptide": "alanine_dipeptide.xyz"}
MOLECULE_ALIASES = {"ethanol": "CH3CH2OH", "water": "H2O"}


def read_structure(spec: str) -> Atoms:
    """A structure file (any ASE format), a bundled name (alanine-dipeptide), `water-box[:N]`
    (periodic, N molecules) or an ASE molecule name (ethanol; centred in a non-periodic box)."""
    from ase.io import read
    if os.path.exists(spec):
        return read(spec)
    if spec in BUNDLED:
        import so3krates.model
        atoms = read(Path(so3krates.model.__file__).parent / "structures" / BUNDLED[spec])
        atoms.info.pop("comment", None)
        return atoms
    if spec.startswith("water-box"):
        count = spec.partition(":")[2]
        if count and not count.isdigit():
            raise ValueError(f"{spec!r}: write water-box:N with N the number of molecules, e.g. water-box:8")
        return water_box(int(count or 8), seed=0)
    from ase.build import molecule
    from ase.collections import g2
    name = MOLECULE_ALIASES.get(spec, spec)
    if name in g2.names:
        atoms = molecule(name)
        atoms.center(vacuum=6.0)
        atoms.pbc = False
        return atoms
    raise FileNotFoundError(f"structure {spec!r} is neither a file, a bundled structure ({', '.join(BUNDLED)}), "
                            f"water-box[:N], nor an ASE molecule name (e.g. ethanol)")
