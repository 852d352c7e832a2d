"""The compiled inference path (model/compiled_inference.py): the ASE calculator's compile=True and
`so3krates md --compile` give the numbers of the exported TorchScript file."""
from __future__ import annotations

import csv

import numpy as np

from conftest import random_water
from so3krates.ase import So3kratesCalculator
from so3krates.cli import main as cli
from so3krates.model.compiled_inference import pair_bucket


def test_pair_bucket_has_headroom_and_a_free_molecule_never_outgrows_it():
    assert pair_bucket(1000, 400, periodic=True) >= 1150
    assert pair_bucket(36, 9, periodic=False) == 36          # every pair of ethanol's 9 atoms
    assert pair_bucket(300, 27, periodic=False) == 27 * 26 // 2


def test_compiled_calculator_gives_the_exported_files_energy_forces_and_stress(export_random):
    # The exported file (tabulated radial filters, ZBL on) is rebuilt as a plain PyTorch model and
    # compiled: its numbers are the file's, in a periodic box (shifts, stress) and after the atoms move.
    model = export_random("compiled_water", "float64", zbl_repulsion=True)
    atoms = random_water(8, box=7.0, seed=3)
    compiled = So3kratesCalculator(model, compile=True)
    plain = So3kratesCalculator(model)
    for step in range(2):
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = plain, compiled
        forces = a.get_forces()
        scale = np.abs(forces).max()
        assert abs(b.get_potential_energy() - a.get_potential_energy()) < 1e-9 * len(atoms)
        np.testing.assert_allclose(b.get_forces(), forces, atol=1e-10 * scale)
        np.testing.assert_allclose(b.get_stress(), a.get_stress(), atol=1e-10 * np.abs(a.get_stress()).max())
        atoms.rattle(0.02, seed=step)
    assert compiled.compiled.compilations == 1   # the moved atoms fit the first compilation's pair bucket


def test_md_with_compile_follows_the_plain_trajectory_and_other_engines_refuse_it(trained_ethanol, tmp_path, capsys):
    logs = {}
    for name, extra in (("plain", []), ("compiled", ["--compile"])):
        logs[name] = tmp_path / f"{name}.csv"
        assert cli(["md", str(trained_ethanol), "ethanol", "--engine", "ase", "--steps", "40", "--log-every", "10",
                    "--temperature", "300", "--log", str(logs[name]), "--quiet", *extra]) == 0
    assert "ase (compiled): 40 steps" in capsys.readouterr().out
    rows = {name: list(csv.DictReader(open(path))) for name, path in logs.items()}
    assert len(rows["compiled"]) == len(rows["plain"]) == 5
    key = next(k for k in rows["plain"][0] if k.startswith("potential"))
    for p, c in zip(rows["plain"], rows["compiled"]):
        assert abs(float(c[key]) - float(p[key])) < 1e-8
    assert cli(["md", str(trained_ethanol), "ethanol", "--engine", "openmm", "--compile", "--steps", "1"]) == 1
    assert "--compile applies to the ase engine" in capsys.readouterr().err
