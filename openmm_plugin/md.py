"""`so3krates md --engine openmm`: the same MD as the reference engine, in an OpenMM Context.

NVE uses VerletIntegrator, which is leapfrog: it keeps velocities half a step behind the
positions. Handing it v(-dt/2) = v(0) - a(0) dt/2 makes its positions follow velocity Verlet (the
ASE reference) exactly; OpenMM reports the kinetic energy at full steps, and the frame velocities
are shifted forward by half a step the same way. NVT uses LangevinMiddleIntegrator; NPT adds
OpenMM's MonteCarloBarostat (isotropic, a volume move every BAROSTAT_FREQUENCY steps).
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
from ase import Atoms

from so3krates.engines import MDResult, MDSettings

from .system import build_system, platform_for
from .units import ANGSTROM_PER_NM, KJ_PER_MOL_PER_EV, NM_PER_PS_PER_ASE_VELOCITY

PS_PER_FS = 1e-3
BAROSTAT_FREQUENCY = 25   # steps between Monte Carlo volume moves (OpenMM's default)


def add_barostat(system, settings: MDSettings) -> None:
    """npt: an isotropic Monte Carlo barostat at settings.pressure_bar and the thermostat's temperature."""
    import openmm
    if settings.ensemble == "npt":
        barostat = openmm.MonteCarloBarostat(settings.pressure_bar, settings.temperature, BAROSTAT_FREQUENCY)
        barostat.setRandomNumberSeed(settings.seed)
        system.addForce(barostat)


def start_context(system, frame, atoms: Atoms, settings: MDSettings, platform, properties=None):
    """A Context at the positions and velocities of `atoms` (velocity Verlet's v(0) handed to the
    leapfrog VerletIntegrator as v(-dt/2), see above); returns (context, integrator)."""
    import openmm
    from openmm import unit
    dt_ps = settings.timestep_fs * PS_PER_FS
    if settings.ensemble == "nve":
        integrator = openmm.VerletIntegrator(dt_ps)
    else:
        integrator = openmm.LangevinMiddleIntegrator(settings.temperature, settings.friction_per_ps, dt_ps)
        integrator.setRandomNumberSeed(settings.seed)
    if isinstance(platform, str):
        platform = openmm.Platform.getPlatformByName(platform)
    context = openmm.Context(system, integrator, platform, properties or {})
    if frame.box_nm is not None:
        context.setPeriodicBoxVectors(*frame.box_nm)
    context.setPositions(frame.positions_nm)
    velocities = atoms.get_velocities() @ frame.rotation.T * NM_PER_PS_PER_ASE_VELOCITY
    if settings.ensemble == "nve":
        forces = context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(
            unit.kilojoule_per_mole / unit.nanometer)
        velocities = velocities - 0.5 * dt_ps * forces / atoms.get_masses()[:, None]   # kJ/mol/nm/amu = nm/ps^2
    context.setVelocities(velocities)
    return context, integrator


def run_md(model_path, atoms: Atoms, settings: MDSettings, progress: bool = True,
           platform: Optional[str] = None, observer=None) -> MDResult:
    import openmm
    from openmm import unit
    from tqdm import tqdm

    system, frame = build_system(str(model_path), atoms, settings.device)
    add_barostat(system, settings)
    dt_ps = settings.timestep_fs * PS_PER_FS
    context, integrator = start_context(system, frame, atoms, settings,
                                        *platform_for(str(model_path), platform, settings.device))
    masses = atoms.get_masses()[:, None]                                   # amu = g/mol
    half_step = settings.ensemble == "nve"

    result = MDResult(engine="openmm", timestep_fs=settings.timestep_fs, num_atoms=len(atoms), observer=observer)

    def record(step: int) -> None:
        want_frame = bool(settings.traj_every) and step % settings.traj_every == 0
        state = context.getState(getEnergy=True, getPositions=want_frame, getVelocities=want_frame,
                                 getForces=want_frame and half_step)
        volume = None
        if settings.ensemble == "npt":
            volume = state.getPeriodicBoxVolume().value_in_unit(unit.nanometer ** 3) * ANGSTROM_PER_NM ** 3
        if step % settings.log_every == 0:
            result.add(step, state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV,
                       state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV, volume)
        if want_frame:
            pos = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer) * ANGSTROM_PER_NM
            vel = state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
            if half_step:
                f = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
                vel = vel + 0.5 * dt_ps * f / masses
            snapshot = atoms.copy()
            snapshot.calc = None
            if settings.ensemble == "npt":   # the barostat changed the box: its vectors, back in the ASE frame
                box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer) * ANGSTROM_PER_NM
                snapshot.set_cell(frame.to_ase(np.asarray(box)))
            snapshot.positions = frame.to_ase(np.asarray(pos))
            snapshot.set_velocities(frame.to_ase(np.asarray(vel)) / NM_PER_PS_PER_ASE_VELOCITY)
            result.add_frame(step, snapshot)

    # Advance in chunks up to the next step that needs a log row or a frame.
    marks = {0, settings.steps}
    marks.update(range(0, settings.steps + 1, settings.log_every))
    if settings.traj_every:
        marks.update(range(0, settings.steps + 1, settings.traj_every))
    marks = sorted(m for m in marks if m <= settings.steps)
    bar = tqdm(total=settings.steps, desc="openmm md", unit="step", disable=not progress, leave=False)
    start = time.perf_counter()
    try:
        record(0)
        for previous, step in zip(marks, marks[1:]):
            try:
                integrator.step(step - previous)
            except openmm.OpenMMException as exc:   # e.g. "Particle coordinate is NaN": the run blew up
                raise RuntimeError(f"OpenMM stopped between steps {previous} and {step}: "
                                   f"{' '.join(str(exc).split())}") from None
            record(step)
            bar.update(step - previous)
    finally:
        bar.close()
    result.wall_time_s = time.perf_counter() - start
    return result
