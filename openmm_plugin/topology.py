"""ASE atoms -> an OpenMM Topology, for openmm-ml's `MLPotential.createSystem(topology)`.

Going through a PDB file loses atoms: ASE's PDB writer names every atom by its element and puts all
of them in one residue, and OpenMM's PDB reader then merges atoms of the same name in a residue (a
9-atom ethanol comes back as 3 atoms). Here every molecule (a group of atoms bonded by ASE's
natural covalent radii) is one residue, each atom has its element and a name unique in its
residue (C1, C2, H1 ...), the bonds are kept, and a periodic cell becomes the box vectors in
OpenMM's reduced triclinic frame; `openmm_positions` gives the positions in that same frame.
"""
from __future__ import annotations

from collections import Counter
from typing import List

import numpy as np
from ase import Atoms

from .system import openmm_frame


def molecules(atoms: Atoms) -> List[List[int]]:
    """Indices of each molecule: the connected groups under ASE's natural cutoffs (periodic images
    included), in order of their first atom."""
    from ase.neighborlist import NeighborList, natural_cutoffs
    from scipy.sparse.csgraph import connected_components

    neighbors = NeighborList(natural_cutoffs(atoms), self_interaction=False, bothways=True)
    neighbors.update(atoms)
    count, labels = connected_components(neighbors.get_connectivity_matrix(sparse=True), directed=False)
    groups: dict = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    return sorted(groups.values(), key=lambda group: group[0])


def residue_name(symbols: List[str]) -> str:
    return "HOH" if sorted(symbols) == ["H", "H", "O"] else "MOL"


def ase_topology(atoms: Atoms, bonds: bool = True):
    """An openmm.app.Topology: one chain, one residue per molecule, atoms in the order of `atoms`
    (a molecule whose atoms are not consecutive is split into consecutive residues, so that the
    indices of `atoms` and of the Topology agree), unique atom names, elements, bonds (`bonds`),
    and periodic box vectors for a fully periodic cell."""
    from openmm import Vec3, unit
    from openmm.app import Element, Topology

    topology = Topology()
    chain = topology.addChain()
    symbols = atoms.get_chemical_symbols()
    molecule_of = np.empty(len(atoms), dtype=int)
    groups = molecules(atoms)
    for k, group in enumerate(groups):
        molecule_of[group] = k
    members = {k: [symbols[i] for i in group] for k, group in enumerate(groups)}
    openmm_atoms = []
    residue, previous, names = None, None, Counter()
    for index, symbol in enumerate(symbols):
        if molecule_of[index] != previous:
            previous = molecule_of[index]
            residue = topology.addResidue(residue_name(members[previous]), chain)
            names = Counter()
        names[symbol] += 1
        openmm_atoms.append(topology.addAtom(f"{symbol}{names[symbol]}",
                                             Element.getByAtomicNumber(int(atoms.numbers[index])), residue))
    if bonds:
        from ase.neighborlist import NeighborList, natural_cutoffs
        neighbors = NeighborList(natural_cutoffs(atoms), self_interaction=False, bothways=False)
        neighbors.update(atoms)
        for i in range(len(atoms)):
            for j in sorted(set(neighbors.get_neighbors(i)[0].tolist()) - {i}):
                topology.addBond(openmm_atoms[i], openmm_atoms[j])
    frame = openmm_frame(atoms)
    if frame.box_nm is not None:
        topology.setPeriodicBoxVectors([Vec3(*row) for row in frame.box_nm] * unit.nanometer)
    return topology


def openmm_positions(atoms: Atoms):
    """The positions of `atoms` in the frame of `ase_topology(atoms)` (rotated for a periodic cell), in nm."""
    from openmm import Vec3, unit
    return [Vec3(*row) for row in openmm_frame(atoms).positions_nm] * unit.nanometer
