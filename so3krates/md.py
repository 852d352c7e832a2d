"""`so3krates md`: the same MD in any engine, with one trajectory and one log format.

The engines come from the registry (so3krates/engines.py); `atoms` carries the initial positions
AND velocities (ASE units), so every engine starts from the identical state. The log and the
trajectory are written row by row and frame by frame as the engine reports them (`MDWriter`, the
engine's observer), so Ctrl-C or a crash keeps everything done so far; the same observer stops a
run that blows up (`BlowUpCheck`).
"""
from __future__ import annotations

import csv
import math
from typing import List, Optional

import numpy as np
from ase import Atoms, units

from so3krates import engines
from so3krates.engines import EngineSpec, MDResult, MDSettings, initial_state
from so3krates.structures import read_structure


def run(engine: str, model_path: str, atoms: Atoms, settings: MDSettings, ranks: int = 1,
        progress: bool = True) -> MDResult:
    """MD of `atoms` (positions and velocities) with `model_path` in the named engine."""
    return engines.run_md(EngineSpec(engine, ranks), model_path, atoms, settings, progress=progress)


LOG_COLUMNS = ["step", "time_ps", "potential_eV", "kinetic_eV", "total_eV", "temperature_K"]
# A run has blown up when (NVE) the total energy moves by more than this many times the thermal
# energy 3/2 N kB T, or (NVT) the kinetic energy exceeds this many times it; T is the run's
# temperature but at least 100 K (a run from 0 K still has a scale).
NVE_JUMP_THERMAL = 10.0
NVT_KINETIC_THERMAL = 20.0
MIN_SCALE_TEMPERATURE = 100.0


class BlowUp(RuntimeError):
    """The run blew up: non-finite energies or positions, or an energy far beyond the thermal scale."""


class BlowUpCheck:
    """Checks each row and frame of a run; raises BlowUp at the first sign of a blown-up run."""

    def __init__(self, settings: MDSettings, num_atoms: int):
        self.settings = settings
        self.temperature = max(settings.temperature, MIN_SCALE_TEMPERATURE)
        self.thermal_eV = 1.5 * num_atoms * units.kB * self.temperature
        self.num_atoms = num_atoms
        self.first_total: Optional[float] = None
        self.last_good_step: Optional[int] = None

    def _advice(self) -> str:
        return (f"lower --timestep (now {self.settings.timestep_fs:g} fs) or check the structure and the model "
                f"(so3krates validate)")

    def row(self, step: int, epot: float, ekin: float) -> None:
        if not (math.isfinite(epot) and math.isfinite(ekin)):
            raise BlowUp(f"the run blew up at step {step}: the energy is not finite (potential {epot}, kinetic "
                         f"{ekin} eV); {self._advice()}")
        total = epot + ekin
        if self.first_total is None:
            self.first_total = total
        limit = NVE_JUMP_THERMAL * self.thermal_eV
        if self.settings.ensemble == "nve" and abs(total - self.first_total) > limit:
            raise BlowUp(f"the run blew up at step {step}: the total energy went from {self.first_total:.6g} to "
                         f"{total:.6g} eV, a change of more than {NVE_JUMP_THERMAL:g} times the thermal energy "
                         f"({self.thermal_eV:.3g} eV for {self.num_atoms} atoms at {self.temperature:g} K) in NVE; "
                         f"{self._advice()}")
        if self.settings.ensemble in ("nvt", "npt") and ekin > NVT_KINETIC_THERMAL * self.thermal_eV:
            kinetic_temperature = ekin / (1.5 * self.num_atoms * units.kB)
            raise BlowUp(f"the run blew up at step {step}: the kinetic energy reached {ekin:.6g} eV (about "
                         f"{kinetic_temperature:.3g} K, thermostat at {self.settings.temperature:g} K); "
                         f"{self._advice()}")
        self.last_good_step = step

    def frame(self, step: int, atoms: Atoms) -> None:
        if not np.isfinite(atoms.positions).all() or not np.isfinite(atoms.get_velocities()).all():
            raise BlowUp(f"the run blew up at step {step}: positions or velocities are not finite; "
                         f"{self._advice()}")


class MDWriter:
    """The observer of `so3krates md`: checks each row and frame (BlowUpCheck), then appends it
    to the CSV log and the extended XYZ trajectory and flushes, so that the files always hold the
    run so far."""

    def __init__(self, settings: MDSettings, num_atoms: int, engine: str, log_path: Optional[str] = None,
                 traj_path: Optional[str] = None, check=None):
        self.check = check or BlowUpCheck(settings, num_atoms)   # check: another observer (`so3krates stability`)
        self.settings, self.num_atoms, self.engine = settings, num_atoms, engine
        self.log_path, self.traj_path = log_path, traj_path
        self.rows = self.frames = 0
        self.last_row_step: Optional[int] = None
        self.last_frame_step: Optional[int] = None
        self._log = self._traj = None   # opened at the first row / frame (the paths were checked before)

    def row(self, step: int, epot: float, ekin: float, volume_A3: Optional[float] = None) -> None:
        from so3krates.model.outputs import whole
        self.check.row(step, epot, ekin)
        npt = self.settings.ensemble == "npt"
        with whole():
            if self.log_path and self._log is None:
                self._log = open(self.log_path, "w", newline="")
                self._csv = csv.writer(self._log)
                self._csv.writerow(LOG_COLUMNS + (["volume_A3"] if npt else []))
            if self._log:
                dof = max(3 * self.num_atoms - 3, 1)
                temp = 2.0 * ekin / (dof * units.kB)
                self._csv.writerow([step, f"{step * self.settings.timestep_fs / 1000.0:.6f}", f"{epot:.10f}",
                                    f"{ekin:.10f}", f"{epot + ekin:.10f}", f"{temp:.4f}"]
                                   + ([f"{volume_A3:.6f}" if volume_A3 is not None else ""] if npt else []))
                self._log.flush()
            self.rows += 1
            self.last_row_step = step

    def frame(self, step: int, atoms: Atoms) -> None:
        from ase.io import write

        from so3krates.model.outputs import whole
        self.check.frame(step, atoms)
        frame = atoms.copy()
        frame.calc = None
        frame.info.update(step=step, time_fs=step * self.settings.timestep_fs, engine=self.engine)
        with whole():
            if self.traj_path and self._traj is None:
                self._traj = open(self.traj_path, "w")
            if self._traj:
                write(self._traj, frame, format="extxyz")
                self._traj.flush()
            self.frames += 1
            self.last_frame_step = step

    def close(self) -> None:
        for fh in (self._log, self._traj):
            if fh:
                fh.close()

    def saved(self) -> str:
        """What the files hold, in words."""
        parts: List[str] = []
        if self.log_path:
            parts.append(f"{self.log_path} holds {self.rows} log row(s)"
                         + (f" up to step {self.last_row_step}" if self.rows else ""))
        if self.traj_path:
            parts.append(f"{self.traj_path} holds {self.frames} frame(s)"
                         + (f" up to step {self.last_frame_step}" if self.frames else ""))
        return "; ".join(parts) if parts else "no --log or --traj was given, nothing was saved"


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


def register(subparsers) -> None:
    p = subparsers.add_parser("md", help="run molecular dynamics with an exported model")
    p.add_argument("model", help="exported model file (so3krates export)")
    p.add_argument("structure", help="structure file or ASE molecule name")
    p.add_argument("--engine", choices=engines.names(), default="ase")
    p.add_argument("--ensemble", choices=list(engines.ENSEMBLES), default="nve",
                   help="nve; nvt (Langevin); npt (thermostat + isotropic barostat: OpenMM MonteCarloBarostat, "
                        "LAMMPS fix npt, ASE IsotropicMTKNPT; periodic cells only)")
    p.add_argument("--pressure", type=float, default=1.01325, help="bar, the barostat's pressure (npt)")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--friction", type=float, default=1.0,
                   help="Langevin friction, 1/ps (nvt); npt: the thermostat time is 1/friction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--traj-every", type=int, default=100)
    p.add_argument("--ranks", type=int, default=1, help="MPI ranks (lammps engine)")
    p.add_argument("--traj", help="trajectory output (extended XYZ)")
    p.add_argument("--log", help="energy log output (CSV)")
    p.add_argument("--compile", action="store_true",
                   help="ase engine: run the model through torch.compile (about twice the steps per second for "
                        "small molecules on a CPU, after 1-3 minutes of compilation; short-range models)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from so3krates.model.outputs import Interrupted, check_output_file, plain_interrupts
    settings = MDSettings(ensemble=args.ensemble, temperature=args.temperature, timestep_fs=args.timestep,
                          steps=args.steps, friction_per_ps=args.friction, seed=args.seed,
                          log_every=args.log_every, traj_every=args.traj_every, device=args.device,
                          pressure_bar=args.pressure, compile=args.compile)
    settings.validate()
    from so3krates.devices import torch_device
    torch_device(args.device)   # asking for a GPU on a machine without one: a clear error before anything runs
    if args.ranks < 1:
        raise ValueError(f"--ranks must be >= 1, got {args.ranks}")
    check_output_file(args.log, "--log")
    check_output_file(args.traj, "--traj")
    if args.traj and not args.traj_every:
        raise ValueError("--traj needs frames: give --traj-every N (N >= 1)")
    atoms = initial_state(read_structure(args.structure), args.temperature, args.seed)
    settings.check_periodic(atoms)
    spec = EngineSpec(args.engine, args.ranks)
    engines.check_compile(spec, args.compile)
    writer = MDWriter(settings, len(atoms), spec.label, args.log, args.traj)
    try:
        with plain_interrupts():
            result = engines.run_md(spec, args.model, atoms, settings, progress=not args.quiet, observer=writer)
    except KeyboardInterrupt:
        raise Interrupted(writer.saved()) from None
    except BlowUp as exc:
        raise BlowUp(f"{exc}. {writer.saved()}") from None
    except (ValueError, OSError, RuntimeError) as exc:
        if writer.rows or writer.frames:
            from so3krates.cli import one_line
            raise RuntimeError(f"{one_line(exc)}. {writer.saved()}") from None
        raise
    finally:
        writer.close()
    etot = result.total_eV
    n = max(result.num_atoms, 1)
    engine = args.engine + (" (compiled)" if args.compile else "")
    print(f"{engine}: {args.steps} steps of {args.timestep} fs ({args.ensemble}) on {result.num_atoms} atoms "
          f"in {result.wall_time_s:.1f} s; total energy {etot[0]:.6f} -> {etot[-1]:.6f} eV "
          f"({(etot[-1] - etot[0]) / n * 1000:.4f} meV/atom)")
    return 0
