"""evaluate: the MAE/RMSE (energy, forces, stress) reproduce a hand computation with the ASE calculator, for a
checkpoint and an export."""
import json

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.units import GPa

from so3krates.ase import So3kratesCalculator
from so3krates.cli import main as cli
from so3krates.export import export_model
from so3krates.model.checkpoint import save_checkpoint
from so3krates.model.evaluate import evaluate
from so3krates.structures import read_structure
from so3krates.structures import water_box

from conftest import random_network


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    """A random tiny float64 model and labelled molecules and periodic water boxes of different sizes."""
    tmp = tmp_path_factory.mktemp("eval")
    network = random_network("tiny", energy_shift=[-13.0, -1020.0, -2030.0])
    ckpt = tmp / "model.ckpt"
    save_checkpoint(ckpt, network)
    rng = np.random.default_rng(1)
    frames = []
    for k, atoms in enumerate([read_structure("ethanol"), read_structure("water"), water_box(4, seed=2),
                               read_structure("ethanol"), water_box(3, seed=3)]):
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        forces = rng.normal(size=(len(atoms), 3))
        labels = {"stress": rng.normal(scale=0.01, size=6)} if atoms.pbc.all() else {}   # eV/A^3, Voigt
        atoms.calc = SinglePointCalculator(atoms, energy=-100.0 * len(atoms) + k, forces=forces, **labels)
        frames.append(atoms)
    data = tmp / "data.xyz"
    write(data, frames, format="extxyz")
    return ckpt, data, frames, tmp


def hand_errors(model, frames):
    calc = So3kratesCalculator(model)
    de, dfs, per_atom, ds = [], [], [], []
    for atoms in frames:
        a = atoms.copy()
        a.calc = calc
        de.append(1000 * (a.get_potential_energy() - atoms.get_potential_energy()))
        per_atom.append(abs(de[-1]) / len(atoms))
        dfs.append(1000 * (a.get_forces() - atoms.get_forces()).ravel())
        if atoms.pbc.all():
            ds.append((a.get_stress(voigt=False) - atoms.get_stress(voigt=False)).ravel())
    de, df, ds = np.array(de), np.concatenate(dfs), np.concatenate(ds)
    return {"energy_mae_meV": np.mean(np.abs(de)), "energy_rmse_meV": np.sqrt(np.mean(de ** 2)),
            "energy_mae_meV_per_atom": np.mean(per_atom), "forces_mae_meV_per_A": np.mean(np.abs(df)),
            "forces_rmse_meV_per_A": np.sqrt(np.mean(df ** 2)), "n_structures": len(frames),
            "stress_mae_eV_per_A3": np.mean(np.abs(ds)), "stress_rmse_GPa": np.sqrt(np.mean(ds ** 2)) / GPa,
            "n_structures_with_stress": 2}


def test_evaluate_reproduces_hand_computed_errors(model_and_data):
    ckpt, data, frames, tmp = model_and_data
    expected = hand_errors(ckpt, frames)
    got = evaluate(ckpt, data)   # batched: molecules and periodic boxes of different sizes together
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    exported = tmp / "model.pt"
    export_model(ckpt, exported, dtype="float64")
    got = evaluate(exported, data, batch_size=2)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key


def test_evaluate_cli_writes_json_and_plot(model_and_data):
    ckpt, data, frames, tmp = model_and_data
    assert cli(["evaluate", str(ckpt), str(data), "--json", str(tmp / "m.json"), "--plot", str(tmp / "p.png")]) == 0
    metrics = json.loads((tmp / "m.json").read_text())
    assert {"energy_mae_meV", "energy_rmse_meV", "energy_mae_meV_per_atom", "forces_mae_meV_per_A",
            "forces_rmse_meV_per_A", "n_structures"} <= set(metrics)
    assert metrics["n_structures"] == len(frames)
    assert (tmp / "p.png").stat().st_size > 1000
    assert metrics["energy_mae_meV"] == pytest.approx(hand_errors(ckpt, frames)["energy_mae_meV"], rel=1e-6)
    assert cli(["evaluate", str(ckpt), str(tmp / "missing.xyz")]) == 1
