"""Reference data from nothing: Langevin MD with GFN2-xTB (tblite), labelled frames as extended XYZ."""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
from ase import Atoms, units

METHODS = {"gfn2-xtb": "GFN2-xTB", "gfn1-xtb": "GFN1-xTB"}


@dataclass
class SampleSettings:
    method: str = "gfn2-xtb"
    temperature: float = 500.0      # K, Langevin bath and initial velocities
    frames: int = 1000              # labelled frames to write
    stride: int = 10                # MD steps between frames
    timestep_fs: float = 0.5
    friction_per_ps: float = 10.0   # strong coupling: decorrelates frames quickly
    equilibration: int = 100        # MD steps before the first frame
    seed: int = 0

    def validate(self) -> None:
        if self.method.lower() not in METHODS:
            raise ValueError(f"method {self.method!r} is not supported; choose one of {sorted(METHODS)}")
        if self.frames < 1 or self.stride < 1 or self.equilibration < 0:
            raise ValueError("--frames and --stride must be >= 1 and --equilibration >= 0")
        if self.temperature <= 0 or self.timestep_fs <= 0 or self.friction_per_ps <= 0:
            raise ValueError("temperature, timestep and friction must be positive")


def resolve_structure(spec: str) -> Atoms:
    """A structure file, a bundled name (alanine-dipeptide), `water-box[:N]` (periodic, N molecules)
    or an ASE molecule name (ethanol)."""
    from so3krates.structures import read_structure
    return read_structure(spec)


def make_calculator(method: str):
    """tblite's ASE calculator, silent (tblite prints every SCF otherwise)."""
    from tblite.ase import TBLite
    name = METHODS.get(method.lower())
    if name is None:
        raise ValueError(f"method {method!r} is not supported; choose one of {sorted(METHODS)}")
    return TBLite(method=name, verbosity=0)


def level_of_theory(method: str) -> str:
    try:
        program = f"tblite {version('tblite')}"
    except PackageNotFoundError:
        program = "tblite"
    return f"{METHODS[method.lower()]} ({program})"


def sample(atoms: Atoms, settings: SampleSettings, progress: bool = True,
           on_frame: Optional[Callable[[Atoms], None]] = None) -> List[Atoms]:
    """Langevin MD; every `stride` steps a copy of the atoms with the energy (eV), forces (eV/A) and, for
    a periodic cell, stress (eV/A^3, ASE's sign and Voigt order; tblite's analytic strain derivative)
    of that configuration, and its step, time and the level of theory in atoms.info. Each frame
    goes to on_frame(frame) as soon as it is labelled."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    settings.validate()
    atoms = atoms.copy()
    atoms.calc = make_calculator(settings.method)
    rng = np.random.default_rng(settings.seed)
    thermalize_momenta(atoms, settings.temperature, rng=rng)
    Stationary(atoms)
    atoms.set_constraint(FixCom())  # no drift of the centre of mass (ASE's recommended form)
    dyn = Langevin(atoms, timestep=settings.timestep_fs * units.fs, temperature_K=settings.temperature,
                   friction=settings.friction_per_ps / (1000.0 * units.fs), fixcm=False, rng=rng)
    theory = level_of_theory(settings.method)
    if settings.equilibration:
        dyn.run(settings.equilibration)
    frames: List[Atoms] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=settings.frames, desc=f"{theory} MD", unit="frame")
    step = settings.equilibration
    try:
        while len(frames) < settings.frames:
            if frames:
                dyn.run(settings.stride)
                step += settings.stride
            frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(apply_constraint=False)}
            if atoms.pbc.all():   # computed with the forces in the same tblite call
                labels["stress"] = atoms.get_stress(apply_constraint=False)
            frame.calc = SinglePointCalculator(frame, **labels)
            frame.info.update(level_of_theory=theory, temperature_K=settings.temperature, step=step,
                              time_fs=step * settings.timestep_fs, seed=settings.seed)
            frames.append(frame)
            if on_frame is not None:
                on_frame(frame)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return frames


def write_frames(path: str | os.PathLike, frames: List[Atoms]) -> None:
    from ase.io import write

    from .checkpoint import atomic_write
    atomic_write(path, lambda tmp: write(tmp, frames, format="extxyz"))


class FrameFile:
    """An extended XYZ file written frame by frame, flushed after each, with normal permissions:
    it always holds every frame labelled so far."""

    def __init__(self, path: str | os.PathLike):
        self.path, self.count, self._fh = Path(path), 0, None

    def write(self, frame: Atoms) -> None:
        from ase.io import write

        from .outputs import whole
        with whole():
            if self._fh is None:
                self._fh = open(self.path, "w")
            write(self._fh, frame, format="extxyz")
            self._fh.flush()
            self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def sample_to_file(structure: str, output: str | os.PathLike, settings: Optional[SampleSettings] = None,
                   progress: bool = True, out: Optional[FrameFile] = None) -> List[Atoms]:
    """Sample and write each frame to `output` as it is made (Ctrl-C keeps the frames so far)."""
    from .outputs import check_output_file
    settings = settings or SampleSettings()
    settings.validate()
    check_output_file(output, "-o")
    atoms = resolve_structure(structure)
    out = out or FrameFile(output)
    try:
        return sample(atoms, settings, progress=progress, on_frame=out.write)
    finally:
        out.close()
