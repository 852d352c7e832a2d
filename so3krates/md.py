"""`so3krates md`: the same MD in any engine, with one trajectory and one log format.

The engines come from the registry (so3krates/engines.py); `atoms` carries the initial positions
AND velocities (ASE units), so every engine starts from the identical state.
"""
from __future__ import annotations

import csv

from ase import Atoms

from so3krates import engines
from so3krates.engines import EngineSpec, MDResult, MDSettings, initial_state
from so3krates.structures import read_structure


def run(engine: str, model_path: str, atoms: Atoms, settings: MDSettings, ranks: int = 1,
        progress: bool = True) -> MDResult:
    """MD of `atoms` (positions and velocities) with `model_path` in the named engine."""
    return engines.run_md(EngineSpec(engine, ranks), model_path, atoms, settings, progress=progress)


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
