"""The engine protocol and its registry: one place that knows which engines exist.

An engine runs an exported model on an ASE structure: a single point (energy, forces, virial) and
an MD run, with the same settings and the same result format whatever the engine. Each engine
lives in its own folder as one module that defines `ENGINE` (see `Engine`):

    ase      so3krates/ase_engine.py            the ASE calculator, ASE's integrators (reference MD)
    openmm   so3krates/openmm_plugin/engine.py  an openmm-torch TorchForce in an OpenMM Context
    lammps   so3krates/lammps_pair/engine.py    the LAMMPS plugin pair style, 1 or N MPI ranks

An MD run reports each log row and trajectory frame, as it is made, to an optional observer
(`MDObserver`, passed as `run_md(..., observer=)`): `so3krates md` writes them to its files as
they come, so that Ctrl-C or a crash keeps everything done so far.

Adding an engine means adding such a module and its line in `REGISTRY`; `so3krates md`,
`so3krates validate` and the demo then offer it. Engines are imported only when asked for, so
that choosing ASE never loads OpenMM or MPI.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol

import numpy as np
from ase import Atoms, units

REGISTRY: Dict[str, str] = {
    "ase": "so3krates.ase_engine",
    "openmm": "so3krates.openmm_plugin.engine",
    "lammps": "so3krates.lammps_pair.engine",
}


ENSEMBLES = ("nve", "nvt", "npt")


@dataclass
class MDSettings:
    ensemble: str = "nve"            # nve | nvt (Langevin) | npt (thermostat + isotropic barostat)
    temperature: float = 300.0       # K: initial velocities, and the thermostat for nvt and npt
    timestep_fs: float = 0.5
    steps: int = 1000
    friction_per_ps: float = 1.0     # Langevin friction for nvt; npt: thermostat time 1/friction
    seed: int = 0
    log_every: int = 10              # steps between log rows
    traj_every: int = 100            # steps between trajectory frames (0: none)
    device: str = "cpu"              # where the model runs: cpu, cuda, cuda:N
    pressure_bar: float = 1.01325    # npt: the barostat's target pressure
    barostat_period_fs: float = 500.0  # npt: relaxation time of the volume (LAMMPS Pdamp, ASE pdamp)
    compile: bool = False            # ase engine: the model through torch.compile (model/compiled_inference.py)

    def validate(self) -> None:
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble {self.ensemble!r} is not supported; use one of {', '.join(ENSEMBLES)}")
        if not self.timestep_fs > 0 or self.steps < 0 or self.log_every < 1 or self.traj_every < 0:
            raise ValueError(f"--timestep must be > 0 (got {self.timestep_fs:g}), --steps >= 0 (got {self.steps}), "
                             f"--log-every >= 1 (got {self.log_every}) and --traj-every >= 0 (got {self.traj_every})")
        if not self.temperature >= 0:
            raise ValueError(f"--temperature must be >= 0 K, got {self.temperature:g}")
        if self.ensemble in ("nvt", "npt") and not self.friction_per_ps > 0:
            raise ValueError(f"--friction must be > 0 for {self.ensemble}, got {self.friction_per_ps:g}")
        if self.ensemble == "npt" and not (np.isfinite(self.pressure_bar) and self.barostat_period_fs > 0):
            raise ValueError(f"npt needs a finite --pressure (got {self.pressure_bar:g} bar) and a barostat period "
                             f"> 0 (got {self.barostat_period_fs:g} fs)")

    def check_periodic(self, atoms: Atoms) -> None:
        """npt changes the volume of a periodic cell: a structure without one is an error."""
        if self.ensemble == "npt" and not atoms.pbc.all():
            raise ValueError("--ensemble npt needs a fully periodic cell (the barostat scales the box); this "
                             "structure is not periodic in all three directions: use nvt, or give a periodic box")


class MDObserver(Protocol):
    """Told of each log row and trajectory frame as the engine makes them (energies in eV; the
    frame's positions in A and velocities in ASE units, in the frame of the input structure).
    An exception it raises stops the run and reaches the caller of run_md."""

    def row(self, step: int, potential_eV: float, kinetic_eV: float) -> None:
        """In npt runs also called with the keyword volume_A3 (the cell volume, A^3)."""

    def frame(self, step: int, atoms: Atoms) -> None:
        ...


@dataclass
class MDResult:
    """Rows every settings.log_every steps, step 0 included; energies in eV."""
    engine: str
    step: List[int] = field(default_factory=list)
    potential_eV: List[float] = field(default_factory=list)
    kinetic_eV: List[float] = field(default_factory=list)
    frames: List[Atoms] = field(default_factory=list)   # positions (A) and velocities (ASE units)
    frame_steps: List[int] = field(default_factory=list)
    volume_A3: List[float] = field(default_factory=list)   # per row, npt runs only
    timestep_fs: float = 0.5
    num_atoms: int = 0
    wall_time_s: float = 0.0
    observer: Optional[Any] = field(default=None, repr=False, compare=False)   # an MDObserver

    def add(self, step: int, epot: float, ekin: float, volume_A3: Optional[float] = None) -> None:
        if volume_A3 is not None:
            self.volume_A3.append(float(volume_A3))
        self.step.append(int(step))
        self.potential_eV.append(float(epot))
        self.kinetic_eV.append(float(ekin))
        if self.observer is not None:
            if volume_A3 is None:
                self.observer.row(int(step), float(epot), float(ekin))
            else:   # npt: observers that log the volume take it as a keyword
                self.observer.row(int(step), float(epot), float(ekin), volume_A3=float(volume_A3))

    def add_frame(self, step: int, atoms: Atoms) -> None:
        self.frames.append(atoms)
        self.frame_steps.append(int(step))
        if self.observer is not None:
            self.observer.frame(int(step), atoms)

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


class Engine(Protocol):
    """What every engine provides. Inputs and outputs are in ASE's frame and units (eV, Angstrom,
    ASE velocities); each engine converts at its own boundary (its `units` module)."""

    name: str
    parallel: bool               # takes MPI ranks (ranks > 1)
    needs_exported_file: bool    # False: also runs a training checkpoint directly

    def single_point(self, model_path: str, atoms: Atoms, ranks: int = 1) -> Dict[str, Optional[np.ndarray]]:
        """{'energy': eV, 'forces': (N, 3) eV/A, 'virial': (3, 3) eV or None}."""

    def run_md(self, model_path: str, atoms: Atoms, settings: MDSettings, ranks: int = 1,
               progress: bool = True, observer: Optional[MDObserver] = None) -> MDResult:
        """MD from the positions AND velocities of `atoms` (ASE units), so that every engine starts
        from the identical state. Each row and frame goes to `observer` as soon as it is made
        (through MDResult.add / add_frame); no time limit."""


def names() -> List[str]:
    return sorted(REGISTRY)


def get(name: str) -> Engine:
    if name not in REGISTRY:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(names())}")
    return importlib.import_module(REGISTRY[name]).ENGINE


@dataclass
class EngineSpec:
    """`ENGINE[:RANKS][@MODEL]`, e.g. `openmm`, `lammps:2`, `openmm@model_f32.pt`."""
    engine: str
    ranks: int = 1
    model: Optional[str] = None

    @property
    def label(self) -> str:
        text = self.engine + (f":{self.ranks}" if self.ranks != 1 else "")
        return text + (f"@{self.model}" if self.model else "")

    @classmethod
    def parse(cls, text: str) -> "EngineSpec":
        model = None
        if "@" in text:
            text, model = text.split("@", 1)
        engine, _, ranks = text.partition(":")
        if engine not in REGISTRY:
            raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(names())} (lammps:N for N MPI ranks)")
        if ranks and not get(engine).parallel:
            raise ValueError(f"{text}: only lammps takes a rank count (lammps:2)")
        if ranks and not (ranks.isdigit() and int(ranks) >= 1):
            raise ValueError(f"{text}: the rank count must be a positive integer, e.g. lammps:2")
        return cls(engine, int(ranks) if ranks else 1, model)

    @classmethod
    def parse_list(cls, text: str) -> List["EngineSpec"]:
        specs = [cls.parse(part.strip()) for part in text.split(",") if part.strip()]
        if not specs:
            raise ValueError(f"no engine in {text!r}; give a comma-separated list such as ase,openmm,lammps:2")
        return specs


def single_point(spec: EngineSpec, model_path: str, atoms: Atoms) -> Dict[str, Optional[np.ndarray]]:
    return get(spec.engine).single_point(spec.model or model_path, atoms, ranks=spec.ranks)


def run_md(spec: EngineSpec, model_path: str, atoms: Atoms, settings: MDSettings,
           progress: bool = True, observer: Optional[MDObserver] = None) -> MDResult:
    settings.validate()
    settings.check_periodic(atoms)
    engine = get(spec.engine)
    check_compile(spec, settings.compile)
    if spec.ranks != 1 and not engine.parallel:
        raise ValueError(f"--ranks applies to the lammps engine only, not {spec.engine}")
    if spec.ranks < 1:
        raise ValueError(f"--ranks must be >= 1, got {spec.ranks}")
    return engine.run_md(spec.model or model_path, atoms, settings, ranks=spec.ranks, progress=progress,
                         observer=observer)


def check_compile(spec: EngineSpec, compile: bool) -> None:
    if compile and spec.engine != "ase":
        raise ValueError(f"--compile applies to the ase engine (torch.compile in this Python process); {spec.engine} "
                         f"runs the exported TorchScript file: leave --compile out or use --engine ase")


def initial_state(atoms: Atoms, temperature: float, seed: int) -> Atoms:
    """A copy with Maxwell-Boltzmann velocities at `temperature` (zero total momentum) unless
    the structure already carries velocities."""
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    atoms = atoms.copy()
    if not np.any(atoms.get_velocities()):
        thermalize_momenta(atoms, temperature, rng=np.random.default_rng(seed))
        Stationary(atoms)
    return atoms
