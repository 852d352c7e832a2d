"""ASE Atoms -> a LAMMPS data file and back.

LAMMPS wants a lower-triangular cell (a along x, b in the xy plane); an arbitrary ASE cell is
rotated into that frame: r_lammps = r_ase @ rotation, and results come back with rotation.T.
Molecules (no periodicity) go into a shrink-wrapped non-periodic box (`boundary s s s`), which
is exactly the isolated molecule of the ASE calculator; slabs and wires (mixed periodicity, in an
axis-aligned orthorhombic cell) get `f` boundaries along their non-periodic axes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, chemical_symbols

from so3krates.model.frames import lower_triangular_frame

TILT_ZERO = 1e-12        # relative: rotation round-off below this is not a tilt
MOLECULE_PADDING_A = 1.0  # initial box around a molecule; `s` boundaries shrink-wrap anyway


@dataclass
class LammpsSystem:
    atoms: Atoms
    rotation: np.ndarray          # (3, 3): r_lammps = r_ase @ rotation
    boundary: str                 # "p p p" or "s s s"
    type_numbers: List[int]       # atomic number of LAMMPS type 1, 2, ...
    lo: np.ndarray                # box origin (LAMMPS frame)
    lengths: np.ndarray           # xprd yprd zprd
    tilts: np.ndarray             # xy xz yz

    @property
    def type_symbols(self) -> List[str]:
        return [chemical_symbols[z] for z in self.type_numbers]

    @property
    def types(self) -> np.ndarray:
        return np.searchsorted(np.asarray(self.type_numbers), self.atoms.numbers) + 1

    def to_lammps(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors) @ self.rotation

    def to_ase(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors) @ self.rotation.T

    def tensor_to_ase(self, tensor: np.ndarray) -> np.ndarray:
        return self.rotation @ tensor @ self.rotation.T


def lammps_system(atoms: Atoms) -> LammpsSystem:
    pbc = np.asarray(atoms.pbc, dtype=bool)
    type_numbers = sorted(set(int(z) for z in atoms.numbers))
    if pbc.all():
        cell = np.asarray(atoms.cell.array, dtype=float)
        q, lower = lower_triangular_frame(cell)
        if np.linalg.det(cell) < 0:
            raise ValueError("the cell is left-handed; LAMMPS needs a right-handed cell: swap two lattice "
                             "vectors (and the matching coordinates)")
        lengths = np.diag(lower).copy()
        tilts = np.array([lower[1, 0], lower[2, 0], lower[2, 1]])
        tilts[np.abs(tilts) < TILT_ZERO * lengths.max()] = 0.0
        return LammpsSystem(atoms, q, "p p p", type_numbers, np.zeros(3), lengths, tilts)
    if pbc.any():
        return mixed_periodicity_system(atoms, pbc, type_numbers)
    pos = np.asarray(atoms.positions, dtype=float)
    lo = pos.min(axis=0) - MOLECULE_PADDING_A
    hi = pos.max(axis=0) + MOLECULE_PADDING_A
    return LammpsSystem(atoms, np.eye(3), "s s s", type_numbers, lo, hi - lo, np.zeros(3))


def mixed_periodicity_system(atoms: Atoms, pbc: np.ndarray, type_numbers: List[int]) -> LammpsSystem:
    """A slab or wire (e.g. pbc = [True, True, False]) in an axis-aligned orthorhombic cell: boundary
    `p` along the periodic axes, `f` along the others, whose box is the cell's extent, widened to
    the atoms plus MOLECULE_PADDING_A if they stick out (an `f` box must hold every atom)."""
    cell = np.asarray(atoms.cell.array, dtype=float)
    if np.any(np.abs(cell - np.diag(np.diag(cell))) > TILT_ZERO * np.abs(cell).max()) or np.any(np.diag(cell) <= 0):
        raise ValueError(f"mixed periodicity {pbc.tolist()} needs an axis-aligned orthorhombic cell (a along x, b "
                         "along y, c along z) for the lammps engine; rotate the structure or use a periodic cell")
    pos = np.asarray(atoms.positions, dtype=float)
    lo, hi = np.zeros(3), np.diag(cell).copy()
    for axis in np.flatnonzero(~pbc):
        lo[axis] = min(0.0, pos[:, axis].min() - MOLECULE_PADDING_A)
        hi[axis] = max(hi[axis], pos[:, axis].max() + MOLECULE_PADDING_A)
    boundary = " ".join("p" if p else "f" for p in pbc)
    return LammpsSystem(atoms, np.eye(3), boundary, type_numbers, lo, hi - lo, np.zeros(3))


def write_data(path: str, system: LammpsSystem, velocities: bool = False) -> None:
    """A LAMMPS data file, atom_style atomic; masses from ASE; velocities in A/ps (metal)."""
    from .units import ase_time_per_lammps_time
    atoms = system.atoms
    masses = atoms.get_masses()
    numbers = atoms.numbers
    lines = ["LAMMPS data file written by so3krates", "",
             f"{len(atoms)} atoms", f"{len(system.type_numbers)} atom types", ""]
    for axis, lo, length in zip("xyz", system.lo, system.lengths):
        lines.append(f"{lo:.17g} {lo + length:.17g} {axis}lo {axis}hi")
    if np.any(system.tilts != 0.0):
        lines.append("{:.17g} {:.17g} {:.17g} xy xz yz".format(*system.tilts))
    lines += ["", "Masses", ""]
    for t, z in enumerate(system.type_numbers, start=1):
        of_type = masses[numbers == z]
        mass = float(of_type[0]) if len(of_type) else float(atomic_masses[z])
        lines.append(f"{t} {mass:.17g}  # {chemical_symbols[z]}")
    lines += ["", "Atoms # atomic", ""]
    positions = system.to_lammps(atoms.positions)
    for i, (t, p) in enumerate(zip(system.types, positions), start=1):
        lines.append(f"{i} {t} {p[0]:.17g} {p[1]:.17g} {p[2]:.17g}")
    if velocities:
        v = system.to_lammps(atoms.get_velocities()) * ase_time_per_lammps_time("metal")
        lines += ["", "Velocities", ""]
        for i, vi in enumerate(v, start=1):
            lines.append(f"{i} {vi[0]:.17g} {vi[1]:.17g} {vi[2]:.17g}")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
