"""MD through LAMMPS with pair_style so3krates: NVE energy conservation, agreement with the
reference ASE MD and across rank counts, NPT with a finite-difference pressure check, the CLI."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import units
from ase.build import molecule
from ase.io import read

from so3krates.ase import So3kratesCalculator
from so3krates.export import export_model
from so3krates.lammps_pair.runner import NKTV2P, parse_thermo, run_lammps, setup_commands
from so3krates.lammps_pair.system import lammps_system, write_data
from so3krates.md import MDSettings, initial_state, run
from so3krates.model import So3krates
from so3krates.model.config import preset
from so3krates.structures import water_box

# Random weights give energies of order 1 eV per atom; a tenth keeps the MD near room temperature.
ENERGY_SCALE = 0.1
NVE_DRIFT_BOUND_MEV_PER_ATOM_PER_PS = 0.05   # the float64 bound of docs/validation.md


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    # No ZBL: an untrained network does not balance its repulsion at bond lengths (see test_validation.py).
    net = So3krates(preset("tiny", elements=[1, 6, 8], dtype="float64", num_layers=2, zbl_repulsion=False))
    with torch.no_grad():
        net.energy_scale.mul_(ENERGY_SCALE)
    path = tmp_path_factory.mktemp("lammps_md") / "tiny_md.pt"
    export_model(net, path, "float64")
    return str(path)


def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.center(vacuum=6.0)
    atoms.pbc = False
    return initial_state(atoms, 300.0, seed=1)


def triclinic_water():
    atoms = water_box(8, seed=7)
    cell = atoms.cell.array.copy()
    cell[1, 0] += 1.0
    cell[2, 1] += 0.7
    atoms.set_cell(cell, scale_atoms=False)
    atoms.rotate(20, "y", rotate_cell=True)
    return initial_state(atoms, 300.0, seed=2)


def test_nve_two_picoseconds_conserves_energy(model_path):
    settings = MDSettings(ensemble="nve", timestep_fs=0.5, steps=4000, log_every=20, traj_every=0)
    result = run("lammps", model_path, ethanol(), settings, progress=False)
    assert result.step[-1] == 4000 and len(result.step) == 201
    total = result.total_eV
    drift = np.polyfit(result.time_fs / 1000.0, total, 1)[0] / result.num_atoms * 1000.0   # meV/atom/ps
    print(f"NVE 2 ps, ethanol, 0.5 fs: drift {drift:+.2e} meV/atom/ps, max |dE| "
          f"{np.abs(total - total[0]).max() * 1000 / result.num_atoms:.4f} meV/atom, "
          f"mean T {result.temperature_K.mean():.0f} K")
    assert abs(drift) < NVE_DRIFT_BOUND_MEV_PER_ATOM_PER_PS
    assert np.ptp(result.kinetic_eV) > 10 * np.ptp(total), "the kinetic energy should move, the total not"


@pytest.mark.parametrize("make", [ethanol, triclinic_water], ids=["molecule", "triclinic periodic"])
def test_lammps_md_follows_the_reference_md(model_path, make):
    atoms = make()
    settings = MDSettings(ensemble="nve", timestep_fs=0.5, steps=100, log_every=10, traj_every=50)
    ref = run("ase", model_path, atoms, settings, progress=False)
    got = run("lammps", model_path, atoms, settings, progress=False)
    assert got.step == ref.step and got.frame_steps == ref.frame_steps == [0, 50, 100]
    # LAMMPS' metal constants (mvv2e = 1.0364269e-4) differ from CODATA in the 8th digit.
    np.testing.assert_allclose(got.potential_eV, ref.potential_eV, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.kinetic_eV, ref.kinetic_eV, rtol=1e-6)
    for a, b in zip(got.frames, ref.frames):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
        np.testing.assert_allclose(a.get_velocities(), b.get_velocities(), atol=1e-6 * np.abs(b.get_velocities()).max())


@pytest.mark.parametrize("make, steps", [
    (ethanol, 200),
    # periodic and small: each rank holds ~20x its atoms as ghosts (2 layers = 8 A + skin), so few steps
    (lambda: initial_state(water_box(48, seed=3), 300.0, seed=3), 20),
], ids=["molecule", "periodic water"])
def test_two_rank_md_equals_one_rank(model_path, make, steps):
    atoms = make()
    settings = MDSettings(ensemble="nve", timestep_fs=0.5, steps=steps, log_every=10, traj_every=steps)
    one = run("lammps", model_path, atoms, settings, ranks=1, progress=False)
    two = run("lammps", model_path, atoms, settings, ranks=2, progress=False)
    assert two.engine == "lammps:2" and two.step == one.step
    np.testing.assert_allclose(two.potential_eV, one.potential_eV, rtol=1e-8)
    np.testing.assert_allclose(two.kinetic_eV, one.kinetic_eV, rtol=1e-8)
    np.testing.assert_allclose(two.frames[-1].positions, one.frames[-1].positions, atol=1e-8)


def test_npt_runs_and_step0_pressure_matches_finite_difference(model_path, tmp_path):
    atoms = water_box(48, seed=4)
    system = lammps_system(atoms)
    write_data(str(tmp_path / "data.lmp"), system)
    script = setup_commands(system, model_path, "data.lmp") + "\n".join([
        "velocity all create 300 4 dist gaussian",
        "timestep 0.0005",
        "compute virial all pressure NULL virial",
        "fix npt all npt temp 300 300 0.05 iso 1.0 1.0 0.5",
        "thermo_style custom step pe press c_virial vol temp",
        "thermo_modify format float %.17g",
        "thermo 50",
        "run 300",
        "",
    ])
    thermo = parse_thermo(run_lammps(script, tmp_path))
    assert thermo["Step"][-1] == 300 and np.isfinite(thermo["Press"]).all()
    assert thermo["Volume"][-1] != pytest.approx(thermo["Volume"][0], rel=1e-6), "the barostat should act"

    # Step 0: the virial pressure is -dE/dV, from the energies of slightly scaled boxes.
    calc = So3kratesCalculator(model_path)
    volume = atoms.get_volume()

    def energy(scale):
        scaled = atoms.copy()
        scaled.set_cell(atoms.cell * scale, scale_atoms=True)
        scaled.calc = calc
        return scaled.get_potential_energy()

    h = 1e-5
    dE_dV = (energy(1 + h) - energy(1 - h)) / (volume * ((1 + h) ** 3 - (1 - h) ** 3))
    virial_pressure = -dE_dV * NKTV2P["metal"]   # bar
    assert thermo["c_virial"][0] == pytest.approx(virial_pressure, rel=1e-6)
    # and the full pressure adds the kinetic part dof k T / (3 V) (LAMMPS' k_B differs from CODATA by 1e-6)
    dof = 3 * len(atoms) - 3
    kinetic = dof * units.kB * thermo["Temp"][0] / (3 * volume) * NKTV2P["metal"]
    assert thermo["Press"][0] - thermo["c_virial"][0] == pytest.approx(kinetic, rel=1e-5)


def test_md_cli_writes_log_and_trajectory(model_path, tmp_path):
    log, traj = tmp_path / "md.csv", tmp_path / "md.xyz"
    proc = subprocess.run([sys.executable, "-m", "so3krates.cli", "md", model_path, "ethanol", "--engine", "lammps",
                           "--steps", "40", "--log-every", "10", "--traj-every", "20", "--log", str(log),
                           "--traj", str(traj), "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(log.open()))
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30, 40]
    frames = read(str(traj), index=":")
    assert [f.info["step"] for f in frames] == [0, 20, 40] and frames[0].info["engine"] == "lammps"
    assert frames[-1].get_velocities().any()
