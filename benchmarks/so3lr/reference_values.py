"""Reference energies and forces of SO3LR from So3krates-torch's SO3LRCalculator (float64, its
defaults: long-range cutoff 12 A, dispersion damping 2 A), written once to the fixture
tests/data/so3lr_reference.json that tests/test_so3lr.py compares our exported SO3LR against
(so `make test` does not need So3krates-torch).

Run in the peers' environment (benchmarks/peers/setup.sh), from the repository root:

    benchmarks/peers/.venv/bin/python benchmarks/so3lr/reference_values.py

Structures (stored in the fixture with the values): molecules that together hold all eight SO3LR
elements (acetamide H C N O, PF3, dimethyl sulfide S, chloromethane Cl), rattled with a fixed
seed; acetamide also as a cation doublet and a neutral triplet (charge and spin embeddings); and
a periodic box of 64 water molecules (192 atoms, 12.42 A).
"""
from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule

COMMAND = "benchmarks/peers/.venv/bin/python benchmarks/so3lr/reference_values.py"
OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "so3lr_reference.json"


def rattled(name: str, seed: int) -> Atoms:
    atoms = molecule(name)
    atoms.rattle(0.05, seed=seed)
    return atoms


def water_box(n_side: int = 4, spacing: float = 3.105, seed: int = 0) -> Atoms:
    """n_side^3 water molecules on a grid, each randomly rotated and displaced (density ~1 g/cm3)."""
    rng = np.random.default_rng(seed)
    water = molecule("H2O")
    positions, numbers = [], []
    for ix in range(n_side):
        for iy in range(n_side):
            for iz in range(n_side):
                w = water.copy()
                w.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COM")
                w.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COM")
                w.translate(np.array([ix, iy, iz]) * spacing - w.get_center_of_mass() + rng.normal(0, 0.1, 3))
                positions.extend(w.positions)
                numbers.extend(w.numbers)
    length = n_side * spacing
    atoms = Atoms(numbers=numbers, positions=positions, cell=[length] * 3, pbc=True)
    atoms.wrap()
    return atoms


def cases():
    yield "acetamide", rattled("CH3CONH2", 1), 0, 1
    yield "PF3", rattled("PF3", 2), 0, 1
    yield "dimethyl_sulfide", rattled("CH3SCH3", 3), 0, 1
    yield "chloromethane", rattled("CH3Cl", 4), 0, 1
    yield "acetamide_cation_doublet", rattled("CH3CONH2", 1), 1, 2
    yield "acetamide_triplet", rattled("CH3CONH2", 1), 0, 3
    yield "water_box_192", water_box(), 0, 1


def main() -> int:
    from so3krates_torch.calculator.so3 import SO3LRCalculator
    calc = SO3LRCalculator(default_dtype="float64")
    out = {"command": COMMAND,
           "reference": f"so3krates-torch {importlib.metadata.version('so3krates-torch')} SO3LRCalculator, "
                        f"default_dtype='float64', its defaults (r_max_lr 12 A, dispersion damping 2 A)",
           "torch": importlib.metadata.version("torch"), "cases": []}
    for name, atoms, charge, multiplicity in cases():
        atoms = atoms.copy()
        atoms.info["charge"] = charge
        atoms.info["total_spin"] = (multiplicity - 1) / 2   # So3krates-torch takes S; 2S unpaired electrons
        calc.reset()   # ASE would reuse the last results for equal positions with another charge/spin
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        out["cases"].append({
            "name": name, "numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
            "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist(), "charge": charge,
            "multiplicity": multiplicity, "energy": energy, "forces": forces.tolist(),
            "partial_charges": calc.results["partial_charges"].tolist(),
            "hirshfeld_ratios": calc.results["hirshfeld_ratios"].tolist()})
        print(f"{name:26s} {len(atoms):4d} atoms  E = {energy:.8f} eV  max|F| = {np.abs(forces).max():.4f} eV/A")
    OUT.write_text(json.dumps(out) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
