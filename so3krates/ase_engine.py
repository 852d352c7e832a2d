"""The ASE engine: the ASE calculator with ASE's own integrators. It is the reference MD of
`so3krates validate`: velocity Verlet (NVE) or Langevin (NVT), in ASE's units; NPT with ASE's
isotropic MTK barostat (Nose-Hoover chains, `ase.md.nose_hoover_chain.IsotropicMTKNPT`)."""
from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np
from ase import Atoms, units

from so3krates.ase import So3kratesCalculator
from so3krates.engines import MDResult, MDSettings


class AseEngine:
    name = "ase"
    parallel = False
    needs_exported_file = False

    def single_point(self, model_path: str, atoms: Atoms, ranks: int = 1) -> Dict[str, Optional[np.ndarray]]:
        atoms = atoms.copy()
        atoms.calc = So3kratesCalculator(model_path)
        out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "virial": None}
        if atoms.pbc.all():
            out["virial"] = -atoms.get_stress(voigt=False) * atoms.get_volume()
        return out

    def run_md(self, model_path, atoms: Atoms, settings: MDSettings, ranks: int = 1,
               progress: bool = True, observer=None) -> MDResult:
        from ase.md.langevin import Langevin
        from ase.md.verlet import VelocityVerlet
        from tqdm import tqdm

        atoms = atoms.copy()
        atoms.calc = So3kratesCalculator(model_path, device=settings.device, compile=settings.compile)
        dt = settings.timestep_fs * units.fs
        if settings.ensemble == "nve":
            dyn = VelocityVerlet(atoms, timestep=dt)
        elif settings.ensemble == "npt":
            dyn = npt_dynamics(atoms, settings)
        else:
            # fixcm=False: no centre-of-mass constraint, as in the other engines' Langevin integrators
            # (ASE's fixcm=True is deprecated since 3.28: it does not sample NVT exactly)
            dyn = Langevin(atoms, timestep=dt, temperature_K=settings.temperature,
                           friction=settings.friction_per_ps / (1000.0 * units.fs), fixcm=False,
                           rng=np.random.default_rng(settings.seed))
        result = MDResult(engine="ase", timestep_fs=settings.timestep_fs, num_atoms=len(atoms), observer=observer)
        bar = tqdm(total=settings.steps, desc="ase md", unit="step", disable=not progress, leave=False)

        def record(step: int) -> None:
            if step % settings.log_every == 0:
                result.add(step, atoms.get_potential_energy(), atoms.get_kinetic_energy(),
                           atoms.get_volume() if settings.ensemble == "npt" else None)
            if settings.traj_every and step % settings.traj_every == 0:
                frame = atoms.copy()
                frame.calc = None
                result.add_frame(step, frame)

        start = time.perf_counter()
        try:
            record(0)
            for step in range(1, settings.steps + 1):
                dyn.run(1)
                record(step)
                bar.update(1)
        finally:
            bar.close()
        result.wall_time_s = time.perf_counter() - start
        return result


def npt_dynamics(atoms: Atoms, settings: MDSettings):
    """ASE's isotropic MTK NPT (ASE >= 3.25): thermostat time 1/friction, barostat time
    settings.barostat_period_fs, pressure settings.pressure_bar."""
    try:
        from ase.md.nose_hoover_chain import IsotropicMTKNPT
    except ImportError:
        import ase
        raise ValueError(f"--ensemble npt with the ase engine needs ASE >= 3.25 (IsotropicMTKNPT); this is ASE "
                         f"{ase.__version__}: upgrade ASE or use --engine openmm or lammps") from None
    return IsotropicMTKNPT(atoms, timestep=settings.timestep_fs * units.fs, temperature_K=settings.temperature,
                           pressure_au=settings.pressure_bar * units.bar,
                           tdamp=1000.0 * units.fs / settings.friction_per_ps,
                           pdamp=settings.barostat_period_fs * units.fs)


ENGINE = AseEngine()
