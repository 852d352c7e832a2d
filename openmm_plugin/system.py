"""An OpenMM System for an ASE structure modelled entirely by so3krates (MD, single points)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from ase import Atoms

from so3krates.model.frames import lower_triangular_frame

from .units import ANGSTROM_PER_NM


@dataclass
class OpenMMFrame:
    """The structure in OpenMM's frame: a periodic cell in OpenMM's reduced triclinic form
    (a along x, b in the xy plane) needs a rotation of the whole system."""
    positions_nm: np.ndarray
    box_nm: Optional[np.ndarray]
    rotation: np.ndarray  # ASE frame -> OpenMM frame: x_openmm = x_ase @ rotation.T

    def to_ase(self, vectors: np.ndarray) -> np.ndarray:
        return vectors @ self.rotation


def openmm_frame(atoms: Atoms) -> OpenMMFrame:
    if atoms.pbc.any() and not atoms.pbc.all():
        raise ValueError("OpenMM supports fully periodic or non-periodic systems only; got pbc="
                         f"{atoms.pbc.tolist()}")
    if not atoms.pbc.all():
        return OpenMMFrame(atoms.positions / ANGSTROM_PER_NM, None, np.eye(3))
    rotation_in, box = lower_triangular_frame(atoms.cell.array)
    rotation = rotation_in.T
    # OpenMM's reduced form: |b_x| <= a_x/2, |c_x| <= a_x/2, |c_y| <= b_y/2 (same lattice).
    box[2] -= box[1] * np.round(box[2, 1] / box[1, 1])
    box[2] -= box[0] * np.round(box[2, 0] / box[0, 0])
    box[1] -= box[0] * np.round(box[1, 0] / box[0, 0])
    return OpenMMFrame(atoms.positions @ rotation.T / ANGSTROM_PER_NM, box / ANGSTROM_PER_NM, rotation)


def build_system(model_path: str, atoms: Atoms, device: Optional[str] = None):
    """(System, OpenMMFrame) with ASE's masses and the so3krates force on every atom."""
    import openmm
    from openmm import Vec3

    from .force import create_force

    frame = openmm_frame(atoms)
    system = openmm.System()
    for mass in atoms.get_masses():
        system.addParticle(float(mass))
    periodic = frame.box_nm is not None
    if periodic:
        system.setDefaultPeriodicBoxVectors(*(Vec3(*row) for row in frame.box_nm))
    force = create_force(model_path, atomic_numbers=atoms.numbers, periodic=periodic, device=device,
                         **structure_inputs(model_path, atoms))
    if periodic:
        from openmm import unit
        from .force import check_box
        from so3krates.export import read_metadata
        check_box([Vec3(*row) * unit.nanometer for row in frame.box_nm], read_metadata(model_path))
    system.addForce(force)
    return system, frame


def structure_inputs(model_path: str, atoms: Atoms) -> dict:
    from so3krates.ase import structure_inputs as inputs   # shared with the LAMMPS engine
    return inputs(model_path, atoms)


def default_platform(model_path: str) -> str:
    """Reference (double precision everywhere) for float64 models, CPU otherwise."""
    from so3krates.export import read_metadata
    return "Reference" if read_metadata(model_path)["dtype"] == "float64" else "CPU"


def platform_for(model_path: str, platform: Optional[str] = None, device: Optional[str] = None):
    """(openmm.Platform, properties) for a Context: `platform` if given; for device 'cuda[:N]' the
    CUDA platform on that GPU (openmm-torch runs the model where the platform runs); else
    default_platform."""
    import openmm

    from so3krates.devices import torch_device
    dev = torch_device(device)
    properties = {}
    if dev.type == "cuda":
        platform = platform or "CUDA"
        if platform == "CUDA":
            properties["DeviceIndex"] = str(dev.index or 0)
    name = platform or default_platform(model_path)
    try:
        return openmm.Platform.getPlatformByName(name), properties
    except openmm.OpenMMException:
        known = [openmm.Platform.getPlatform(k).getName() for k in range(openmm.Platform.getNumPlatforms())]
        raise ValueError(f"OpenMM platform {name!r} is not available here (this OpenMM has {', '.join(known)}); "
                         f"use device 'cpu'") from None
