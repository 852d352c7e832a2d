"""`so3krates md --engine lammps [--ranks N]`: the same MD as the other engines, run by LAMMPS.

NVE: fix nve (velocity Verlet). NVT: fix langevin + fix nve. NPT: fix npt (Nose-Hoover
thermostat and isotropic barostat, damping 1/friction and the barostat period). Units metal; positions and
velocities start from `atoms` exactly (velocities converted to A/ps), energies come from the
thermo log (pe, ke in eV) and frames from a dump (unwrapped positions, velocities, sorted by id),
converted back to the ASE frame and units.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from ase import Atoms

from so3krates.engines import MDResult, MDSettings

from .runner import THERMO_PRECISION, DumpTail, ThermoTail, run_folder, run_lammps, setup_commands
from .system import lammps_system, write_data
from .units import ase_time_per_lammps_time

PS_PER_FS = 1e-3
PROGRESS_CHUNKS = 50   # in-process runs are split into this many `run` commands for the progress bar


def md_script(system, model_path: str, settings: MDSettings) -> str:
    lines = [setup_commands(system, model_path, "data.lmp", device=settings.device),
             f"timestep {settings.timestep_fs * PS_PER_FS:.17g}"]
    damp_ps = 1.0 / settings.friction_per_ps
    if settings.ensemble == "nvt":
        seed = settings.seed + 1  # LAMMPS seeds must be positive
        lines.append(f"fix thermostat all langevin {settings.temperature} {settings.temperature} {damp_ps} {seed}")
    if settings.ensemble == "npt":   # units metal: pressure in bar, times in ps
        t, p = settings.temperature, settings.pressure_bar
        lines.append(f"fix integrate all npt temp {t} {t} {damp_ps} iso {p} {p} "
                     f"{settings.barostat_period_fs * PS_PER_FS:.17g}")
    else:
        lines.append("fix integrate all nve")
    lines += ["thermo_style custom step pe ke etotal" + (" vol" if settings.ensemble == "npt" else ""),
              THERMO_PRECISION,
              "thermo_modify flush yes",   # the log is read while LAMMPS runs
              f"thermo {settings.log_every}"]
    if settings.traj_every:
        lines += [f"dump traj all custom {settings.traj_every} traj.dump id xu yu zu vx vy vz",
                  "dump_modify traj sort id format float %.17g"]
    return "\n".join(lines) + "\n"


def run_chunks(steps: int, log_every: int) -> list:
    """`run` commands covering `steps` (chunk ends on log steps); only the first one sets up."""
    if steps == 0:
        return ["run 0"]
    chunk = max(log_every, steps // PROGRESS_CHUNKS // log_every * log_every)
    runs = []
    for done in range(0, steps, chunk):
        runs.append(f"run {min(chunk, steps - done)} pre {'no' if runs else 'yes'} post no")
    return runs


def run_md(model_path, atoms: Atoms, settings: MDSettings, ranks: int = 1, progress: bool = True,
           observer=None) -> MDResult:
    """The rows and frames are read from the LAMMPS log and dump while LAMMPS runs (after each
    chunk in-process, every few seconds under mpiexec) and handed to `observer` at once. If LAMMPS
    fails, its folder (input, data, log, dump) is kept and its path is in the error message."""
    settings.validate()
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    from so3krates.export import read_metadata
    read_metadata(model_path)   # a missing, foreign or damaged model file is refused before LAMMPS starts
    system = lammps_system(atoms)
    result = MDResult(engine="lammps" if ranks == 1 else f"lammps:{ranks}", timestep_fs=settings.timestep_fs,
                      num_atoms=len(atoms), observer=observer)
    with run_folder("so3krates-lammps-md-", "its input, log and dump") as tmp:
        write_data(str(tmp / "data.lmp"), system, velocities=True)
        _run_and_collect(tmp, system, atoms, str(model_path), settings, ranks, progress, result)
    return result


def _run_and_collect(tmp: Path, system, atoms: Atoms, model_path: str, settings: MDSettings, ranks: int,
                     progress: bool, result: MDResult) -> None:
    from tqdm import tqdm
    script = md_script(system, model_path, settings)
    runs = run_chunks(settings.steps, settings.log_every) if ranks == 1 else [f"run {settings.steps}"]
    bar = tqdm(total=settings.steps, desc=f"lammps md ({ranks} rank{'s' if ranks > 1 else ''})", unit="step",
               disable=not progress or ranks > 1, leave=False)
    chunk_steps = [int(r.split()[1]) for r in runs]
    thermo, dump = ThermoTail(tmp / "log.lammps"), DumpTail(tmp / "traj.dump")
    velocity_unit = ase_time_per_lammps_time("metal")
    volumes = {}   # npt: step -> volume (A^3) from the thermo rows

    def collect() -> None:
        for row in thermo.feed():
            step = int(row["Step"])
            if "Volume" in row:
                volumes[step] = row["Volume"]
            if step % settings.log_every == 0 and (not result.step or step > result.step[-1]):
                result.add(step, row["PotEng"], row["KinEng"], row.get("Volume"))
        if not settings.traj_every:
            return
        for step, columns, values in dump.feed():
            if step % settings.traj_every or step in result.frame_steps:
                continue  # consecutive runs may repeat their boundary step
            col = {name: k for k, name in enumerate(columns)}
            values = values[np.argsort(values[:, col["id"]])]
            frame = atoms.copy()
            frame.calc = None
            if volumes:   # npt (isotropic): the cell scaled to the volume of the last thermo row so far
                last = max((s for s in volumes if s <= step), default=min(volumes))
                frame.set_cell(atoms.cell.array * (volumes[last] / atoms.get_volume()) ** (1.0 / 3.0))
            frame.positions = system.to_ase(values[:, [col["xu"], col["yu"], col["zu"]]])
            frame.set_velocities(system.to_ase(values[:, [col["vx"], col["vy"], col["vz"]]]) / velocity_unit)
            result.add_frame(step, frame)

    def after_run(k: int) -> None:
        bar.update(chunk_steps[k])
        collect()

    start = time.perf_counter()
    try:
        run_lammps(script, tmp, ranks, runs, after_run=after_run, poll=collect)
        collect()
    finally:
        bar.close()
    result.wall_time_s = time.perf_counter() - start
