"""`so3krates md`: the same MD in any engine, with one trajectory and one log format.

Every engine module provides `run_md(model_path, atoms, settings, ranks=1, progress=True) ->
MDResult`. `atoms` carries the initial positions AND velocities (ASE units), so every engine
starts from the identical state.
"""
from __future__ import annotations

import csv
import importlib
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
from ase import Atoms, units

ENGINES = {
    "ase": "so3krates.validation.reference_md",
    "openmm": "so3krates.openmm_plugin.md",
    "lammps": "so3krates.lammps_pair.md",
}


@dataclass
class MDSettings:
    ensemble: str = "nve"            # nve | nvt (Langevin)
    temperature: float = 300.0       # K: initial velocities, and the thermostat for nvt
    timestep_fs: float = 0.5
    steps: int = 1000
    friction_per_ps: float = 1.0     # Langevin friction for nvt
    seed: int = 0
    log_every: int = 10              # steps between log rows
    traj_every: int = 100            # steps between trajectory frames (0: none)

    def validate(self) -> None:
        if self.ensemble not in ("nve", "nvt"):
            raise ValueError(f"ensemble {self.ensemble!r} is not supported; use 'nve' or 'nvt'")
        if self.timestep_fs <= 0 or self.steps < 0 or self.log_every < 1:
            raise ValueError("timestep must be > 0, steps >= 0 and log_every >= 1")


@dataclass
class MDResult:
    """Rows every settings.log_every steps, step 0 included; energies in eV."""
    engine: str
    step: List[int] = field(default_factory=list)
    potential_eV: List[float] = field(default_factory=list)
    kinetic_eV: List[float] = field(default_factory=list)
    frames: List[Atoms] = field(default_factory=list)   # positions (A) and velocities (ASE units)
    frame_steps: List[int] = field(default_factory=list)
    timestep_fs: float = 0.5
    num_atoms: int = 0
    wall_time_s: float = 0.0

    def add(self, step: int, epot: float, ekin: float) -> None:
        self.step.append(int(step))
        self.potential_eV.append(float(epot))
        self.kinetic_eV.append(float(ekin))

    @property
    def time_fs(self) -> np.ndarray:
        return np.asarray(self.step, dtype=float) * self.timestep_fs

    @property
    def total_eV(self) -> np.ndarray:
        return np.asarray(self.potential_eV) + np.asarray(self.kinetic_eV)

    @property
    def temperature_K(self) -> np.ndarray:
        dof = max(3 * self.num_atoms - 3, 1)
        return 2.0 * np.asarray(self.kinetic_eV) / (dof * units.kB)


def kinetic_energy(masses: np.ndarray, velocities: np.ndarray) -> float:
    """eV, for velocities in ASE units (A / ASE time unit) and masses in amu."""
    return 0.5 * float(np.sum(masses[:, None] * velocities ** 2))


def initial_state(atoms: Atoms, temperature: float, seed: int) -> Atoms:
    """A copy with Maxwell-Boltzmann velocities at `temperature` (zero total momentum) unless
    the structure already carries velocities."""
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    atoms = atoms.copy()
    if not np.any(atoms.get_velocities()):
        thermalize_momenta(atoms, temperature, rng=np.random.default_rng(seed))
        Stationary(atoms)
    return atoms


def engine_module(engine: str):
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {sorted(ENGINES)}")
    return importlib.import_module(ENGINES[engine])


def run(engine: str, model_path: str, atoms: Atoms, settings: MDSettings, ranks: int = 1,
        progress: bool = True) -> MDResult:
    settings.validate()
    kwargs = {"ranks": ranks} if engine == "lammps" else {}
    if ranks != 1 and engine != "lammps":
        raise ValueError(f"--ranks applies to the lammps engine only, not {engine}")
    return engine_module(engine).run_md(model_path, atoms, settings, progress=progress, **kwargs)


def write_log(path: str, result: MDResult) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "time_ps", "potential_eV", "kinetic_eV", "total_eV", "temperature_K"])
        for s, t, pe, ke, te, temp in zip(result.step, result.time_fs / 1000.0, result.potential_eV,
                                          result.kinetic_eV, result.total_eV, result.temperature_K):
            w.writerow([s, f"{t:.6f}", f"{pe:.10f}", f"{ke:.10f}", f"{te:.10f}", f"{temp:.4f}"])


def write_trajectory(path: str, result: MDResult) -> None:
    from ase.io import write
    frames = []
    for step, frame in zip(result.frame_steps, result.frames):
        frame = frame.copy()
        frame.info.update(step=step, time_fs=step * result.timestep_fs, engine=result.engine)
        frames.append(frame)
    write(path, frames, format="extxyz")


def read_structure(spec: str) -> Atoms:
    """A structure file, a bundled name, `water-box[:N]` or an ASE molecule name such as 'ethanol'."""
    from so3krates.structures import read_structure as read
    return read(spec)


def register(subparsers) -> None:
    p = subparsers.add_parser("md", help="run molecular dynamics with an exported model")
    p.add_argument("model", help="exported model file (so3krates export)")
    p.add_argument("structure", help="structure file or ASE molecule name")
    p.add_argument("--engine", choices=sorted(ENGINES), default="ase")
    p.add_argument("--ensemble", choices=["nve", "nvt"], default="nve")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps (nvt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--traj-every", type=int, default=100)
    p.add_argument("--ranks", type=int, default=1, help="MPI ranks (lammps engine)")
    p.add_argument("--traj", help="trajectory output (extended XYZ)")
    p.add_argument("--log", help="energy log output (CSV)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _main(args) -> int:
    settings = MDSettings(ensemble=args.ensemble, temperature=args.temperature, timestep_fs=args.timestep,
                          steps=args.steps, friction_per_ps=args.friction, seed=args.seed,
                          log_every=args.log_every, traj_every=args.traj_every)
    atoms = initial_state(read_structure(args.structure), args.temperature, args.seed)
    result = run(args.engine, args.model, atoms, settings, ranks=args.ranks, progress=not args.quiet)
    if args.log:
        write_log(args.log, result)
    if args.traj:
        write_trajectory(args.traj, result)
    etot = result.total_eV
    n = max(result.num_atoms, 1)
    print(f"{args.engine}: {args.steps} steps of {args.timestep} fs ({args.ensemble}) on {result.num_atoms} atoms "
          f"in {result.wall_time_s:.1f} s; total energy {etot[0]:.6f} -> {etot[-1]:.6f} eV "
          f"({(etot[-1] - etot[0]) / n * 1000:.4f} meV/atom)")
    return 0
