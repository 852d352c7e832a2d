"""The reference Python MD: ASE's velocity Verlet (NVE) or Langevin (NVT) with the ASE calculator."""
from __future__ import annotations

import time

from ase import Atoms, units

from so3krates.ase import So3kratesCalculator
from so3krates.md import MDResult, MDSettings


def run_md(model_path, atoms: Atoms, settings: MDSettings, progress: bool = True) -> MDResult:
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet
    from tqdm import tqdm

    atoms = atoms.copy()
    atoms.calc = So3kratesCalculator(model_path)
    dt = settings.timestep_fs * units.fs
    if settings.ensemble == "nve":
        dyn = VelocityVerlet(atoms, timestep=dt)
    else:
        dyn = Langevin(atoms, timestep=dt, temperature_K=settings.temperature,
                       friction=settings.friction_per_ps / (1000.0 * units.fs), rng=__import__("numpy").random.default_rng(settings.seed))
    result = MDResult(engine="ase", timestep_fs=settings.timestep_fs, num_atoms=len(atoms))
    bar = tqdm(total=settings.steps, desc="ase md", unit="step", disable=not progress, leave=False)

    def record(step: int) -> None:
        if step % settings.log_every == 0:
            result.add(step, atoms.get_potential_energy(), atoms.get_kinetic_energy())
        if settings.traj_every and step % settings.traj_every == 0:
            frame = atoms.copy()
            frame.calc = None
            result.frames.append(frame)
            result.frame_steps.append(step)

    start = time.perf_counter()
    record(0)
    for step in range(1, settings.steps + 1):
        dyn.run(1)
        record(step)
        bar.update(1)
    bar.close()
    result.wall_time_s = time.perf_counter() - start
    return result
