"""`so3krates validate` and `so3krates md` through the CLI, with real engines."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.io import read

from so3krates.export import export_model
from so3krates.model import So3krates
from so3krates.model.config import preset

CLI = [sys.executable, "-m", "so3krates.cli"]


def make_model(path, energy_factor=1.0, dtype="float64"):
    torch.manual_seed(0)
    # No ZBL: an untrained network does not balance it, and its unbalanced repulsion at bond lengths
    # (several eV/A) drives NVE fluctuations past the documented bounds at 0.5 fs (0.29 meV/atom on
    # ethanol, falling as dt^2: an integration error, not a force error). ZBL itself: test_fidelity.py,
    # and in every engine test_numerics.py and test_lammps_accuracy.py.
    net = So3krates(preset("tiny", elements=[1, 6, 8], dtype=dtype, zbl_repulsion=False))
    with torch.no_grad():
        net.energy_scale.fill_(0.3 * energy_factor)
        net.energy_shift.copy_(torch.tensor([-13.6, -1029.0, -2041.0]) * energy_factor)
    export_model(net, path, dtype=dtype)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    # "wrong": the same network with energies in kcal/mol exported as if they were eV.
    return {"good": make_model(folder / "good.pt"), "wrong_unit": make_model(folder / "wrong.pt", 23.0605)}


def test_md_cli_writes_consistent_log_and_trajectory(models, tmp_path):
    log, traj = tmp_path / "md.csv", tmp_path / "md.xyz"
    subprocess.run(CLI + ["md", str(models["good"]), "ethanol", "--engine", "ase", "--steps", "40",
                          "--log-every", "10", "--traj-every", "20", "--log", str(log), "--traj", str(traj),
                          "--quiet"], check=True, capture_output=True)
    rows = list(csv.DictReader(log.open()))
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30, 40]
    for r in rows:
        assert float(r["total_eV"]) == pytest.approx(float(r["potential_eV"]) + float(r["kinetic_eV"]), abs=1e-8)
    frames = read(traj, ":")
    assert [f.info["step"] for f in frames] == [0, 20, 40]
    assert not np.allclose(frames[0].positions, frames[-1].positions), "atoms did not move"
    from so3krates.ase import So3kratesCalculator
    frames[1].calc = So3kratesCalculator(str(models["good"]))
    assert frames[1].get_potential_energy() == pytest.approx(float(rows[2]["potential_eV"]), abs=1e-8)


def run_validate(model, engines, tmp_path, *extra, steps=200):
    report = tmp_path / "report.json"
    proc = subprocess.run(CLI + ["validate", str(model), "ethanol", "--engines", engines, "--steps", str(steps),
                                 "--json", str(report), "--quiet", *extra], capture_output=True, text=True)
    return proc, json.loads(report.read_text())


def test_validate_reports_the_documented_keys_and_passes(models, tmp_path):
    proc, report = run_validate(models["good"], "ase", tmp_path, "--plot", str(tmp_path / "report.png"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED" in proc.stdout
    assert report["engines"] == ["ase"] and report["passed"] is True
    assert set(report["step0"]["ase"]) >= {"max_abs_dE_meV", "max_abs_dF_meV_per_A"}
    assert set(report["nve"]["ase"]) >= {"drift_meV_per_atom_per_ps", "fluctuation_meV_per_atom"}
    assert "time_to_0.01A_fs" in report["trajectory"]["ase"]
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_validate_fails_when_an_engine_runs_a_wrongly_converted_model(models, tmp_path):
    proc, report = run_validate(models["good"], f"ase,ase@{models['wrong_unit']}", tmp_path)
    assert proc.returncode == 1
    assert report["passed"] is False
    assert any("step-0 energy differs" in f for f in report["failures"])
    assert "FAILED" in proc.stdout and "step-0 energy differs" in proc.stdout


def test_validate_passes_across_all_engines_and_ranks(models, tmp_path):
    proc, report = run_validate(models["good"], "ase,openmm,lammps,lammps:2", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["engines"] == ["ase", "openmm", "lammps", "lammps:2"]
    for engine in report["engines"]:
        assert report["step0"][engine]["max_abs_dF_meV_per_A"] < 1e-5
        # float64 engines integrate identically: no divergence within the 100 fs run
        assert report["trajectory"][engine]["rmsd_max_A"] < 1e-6


def test_validate_periodic_water_reports_the_virial(tmp_path):
    from ase.io import write
    from so3krates.structures import water_box
    model = make_model(tmp_path / "water.pt")
    structure = tmp_path / "water.xyz"
    write(structure, water_box(16, seed=1))
    report_path = tmp_path / "report.json"
    proc = subprocess.run(CLI + ["validate", str(model), str(structure), "--engines", "ase,openmm,lammps",
                                 "--steps", "40", "--json", str(report_path), "--quiet"], capture_output=True, text=True)
    report = json.loads(report_path.read_text())
    assert report["periodic"] is True
    assert report["step0"]["lammps"]["max_abs_dvirial_meV"] < 1e-5
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained_ethanol(tmp_path_factory):
    """A tiny model trained for ~25 s on GFN2-xTB ethanol: stiff bonds, as real models have."""
    from so3krates.cli import main as cli
    folder = tmp_path_factory.mktemp("trained")
    data = folder / "ethanol.xyz"
    assert cli(["sample", "ethanol", "-o", str(data), "--method", "gfn2-xtb", "--temperature", "500",
                "--frames", "100", "--stride", "10", "--seed", "1"]) == 0
    assert cli(["train", "--train", str(data), "--out", str(folder / "run"), "--preset", "tiny", "--max-time", "25s",
                "--lr", "5e-3", "--warmup-steps", "10", "--seed", "0", "--quiet"]) == 0
    export_model(folder / "run" / "best.ckpt", folder / "ethanol.pt", "float64")
    return folder / "ethanol.pt"


def test_validate_fails_when_the_time_step_is_far_too_large(trained_ethanol, tmp_path):
    # 1 ps at 0.5 fs conserves energy (a drift fit needs a run much longer than a vibration period)
    ok, report = run_validate(trained_ethanol, "ase,openmm", tmp_path, "--timestep", "0.5", steps=2000)
    assert ok.returncode == 0, ok.stdout
    bad, report = run_validate(trained_ethanol, "ase,openmm", tmp_path, "--timestep", "4")
    assert bad.returncode == 1
    assert any("time step is too large" in f for f in report["failures"]), report["failures"]
    assert report["nve"]["openmm"]["fluctuation_to_kinetic_ratio"] > 0.05
