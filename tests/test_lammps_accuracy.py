"""pair_style so3krates in the real LAMMPS (Python module, and `mpiexec -np 2 lmp`) against the
ASE calculator on the same exported float64 model: energy, per-atom energies, forces, virial."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from ase import Atoms

from so3krates.ase import So3kratesCalculator
from so3krates.export import export_model
from so3krates.lammps_pair.runner import parse_thermo, read_dump, run_lammps, setup_commands
from so3krates.lammps_pair.units import energy_per_ev
from so3krates.lammps_pair.single_point import single_point
from so3krates.lammps_pair.system import lammps_system, write_data
from so3krates.model import So3krates
from so3krates.model.config import preset
from so3krates.structures import water_box

from conftest import ethanol, triclinic

RTOL = 1e-8


@pytest.fixture(scope="module")
def model_path(export_random):
    # Two message-passing layers: the state of ghost atoms is exchanged between them.
    return export_random("tiny_2layer_f64", num_layers=2, energy_shift=None)


def reference(model_path: str, atoms: Atoms) -> dict:
    atoms = atoms.copy()
    atoms.calc = So3kratesCalculator(model_path)
    forces = atoms.get_forces()
    if atoms.pbc.all():
        virial = -atoms.get_stress(voigt=False) * atoms.get_volume()
    else:  # isolated molecule: the virial sum_i r_i (x) F_i is origin independent
        virial = atoms.positions.T @ forces
    return {"energy": atoms.get_potential_energy(), "energies": atoms.get_potential_energies(),
            "forces": forces, "virial": virial}


def assert_close(got: dict, want: dict, rtol: float = RTOL, keys=("energy", "energies", "forces", "virial")):
    for key in keys:
        g, w = np.asarray(got[key], float), np.asarray(want[key], float)
        scale = max(float(np.max(np.abs(w))), 1e-12)
        err = float(np.max(np.abs(g - w))) / scale
        assert err < rtol, f"{key}: relative error {err:.2e} >= {rtol:.0e}"


@pytest.mark.parametrize("name, make", [
    ("molecule, non-periodic box", ethanol),
    ("orthorhombic periodic water", lambda: water_box(32, seed=1)),
    ("triclinic periodic water", lambda: triclinic(water_box(32, seed=3))),
])
def test_one_rank_matches_ase(model_path, name, make):
    atoms = make()
    got = single_point(model_path, atoms)
    assert_close(got, reference(model_path, atoms))


def test_units_real_converts_kcal_per_mol(model_path):
    atoms = water_box(32, seed=1)
    metal = single_point(model_path, atoms, units="metal")
    real = single_point(model_path, atoms, units="real")   # converted back to eV inside single_point
    assert_close(real, metal, rtol=1e-12)
    # and the raw LAMMPS number is in kcal/mol, converted with the factor the pair style logs
    # (LAMMPS's own), which is 1 eV = 96.485332 / 4.184 kcal/mol to LAMMPS's 8 digits
    pe_kcal = parse_thermo(real["log"])["PotEng"][0]
    factor = energy_per_ev("real", real["log"])
    assert pe_kcal == pytest.approx(metal["energy"] * factor, rel=1e-12)
    assert factor == pytest.approx(96.485332 / 4.184, rel=1e-7)


def test_small_periodic_box_uses_ghosts_on_one_rank(model_path):
    # A cell height below the cutoff: the model's own periodic search refuses it, so the pair
    # style must go through LAMMPS ghost atoms (many images of each atom) on one rank.
    atoms = water_box(2, seed=5)
    assert min(atoms.cell.lengths()) < 4.0
    got = single_point(model_path, atoms)
    assert "ghost atoms out to" in got["log"]
    assert_close(got, reference(model_path, atoms))


def split_water() -> Atoms:
    """Long along x (the 2-rank split direction), with molecules sitting on the split planes: owned
    atoms there feel atoms two cutoffs deep into the other rank's domain (sensitive to the ghost cutoff)."""
    atoms = water_box(64, seed=2).repeat((3, 1, 1))
    atoms.translate([atoms.cell.lengths()[1] / 8, 0.0, 0.0])   # half a grid spacing of water_box(64)
    atoms.wrap()
    return atoms


@pytest.mark.parametrize("name, make", [
    ("periodic water box split in two", lambda: split_water()),
    ("triclinic water split in two", lambda: triclinic(water_box(32, seed=3))),
    ("molecule split in two", ethanol),
])
@pytest.mark.mpi
def test_two_ranks_match_one_rank(model_path, name, make):
    atoms = make()
    one = single_point(model_path, atoms, ranks=1)
    two = single_point(model_path, atoms, ranks=2)
    counts = re.search(r"Nlocal:\s+\S+ ave\s+(\d+) max\s+(\d+) min", two["log"])
    assert counts and int(counts.group(2)) > 0, "both ranks should own atoms"
    assert_close(two, one)
    assert_close(two, reference(model_path, atoms))


@pytest.mark.mpi
def test_rank_without_atoms(model_path):
    # All molecules in the left third of a long periodic box, split 2 x 1 x 1: rank 1 owns no atom
    # (only ghosts), and must neither crash nor change the result.
    cluster = water_box(16, seed=4)
    atoms = Atoms(cluster.numbers, cluster.positions, cell=np.diag([30.0, *cluster.cell.lengths()[1:]]), pbc=True)
    got = single_point(model_path, atoms, ranks=2, before_box="processors 2 1 1")
    counts = re.search(r"Nlocal:\s+\S+ ave\s+(\d+) max\s+(\d+) min", got["log"])
    assert counts and int(counts.group(2)) == 0, "the layout should leave one rank without atoms"
    assert_close(got, reference(model_path, atoms))


def test_hybrid_overlay_with_null_type(model_path, tmp_path):
    """so3krates on water (Ar mapped to NULL) + lj/cut on everything = the two computed apart."""
    water = water_box(27, seed=6)
    rng = np.random.default_rng(0)
    argon = Atoms("Ar3", positions=rng.uniform(0, water.cell.lengths()[0], (3, 3)))
    atoms = water + argon
    system = lammps_system(atoms)
    assert system.type_symbols == ["H", "O", "Ar"]
    write_data(str(tmp_path / "data.lmp"), system)
    common = setup_commands(system, model_path, "data.lmp").split("pair_style")[0]
    dump = ("thermo_style custom step pe\nthermo_modify format float %.17g\n"
            "dump f all custom 1 {0}.dump id fx fy fz\ndump_modify f sort id format float %.17g\nrun 0\n")
    hybrid = (f"pair_style hybrid/overlay so3krates lj/cut 6.0\n"
              f"pair_coeff * * so3krates {model_path} H O NULL\npair_coeff * * lj/cut 0.003 2.8\n")
    lj_only = "pair_style lj/cut 6.0\npair_coeff * * 0.003 2.8\n"
    results = {}
    for name, pair in (("hybrid", hybrid), ("lj", lj_only)):
        log = run_lammps(common + pair + dump.format(name), tmp_path)
        forces = read_dump(tmp_path / f"{name}.dump")[0][2][:, 1:]
        results[name] = (parse_thermo(log)["PotEng"][0], forces)
    ref = reference(model_path, water)
    n = len(water)
    e_h, f_h = results["hybrid"]
    e_lj, f_lj = results["lj"]
    assert abs(e_lj) > 1e-3, "the classical part should contribute"
    assert e_h - e_lj == pytest.approx(ref["energy"], rel=RTOL)
    f_model = f_h - f_lj
    np.testing.assert_allclose(f_model[:n], ref["forces"], rtol=0, atol=RTOL * np.abs(ref["forces"]).max())
    # Ar feels only lj/cut: what is left is the round-off of its (large, random-placement) LJ forces,
    # summed in another order when the hybrid style also builds so3krates' full neighbour list.
    np.testing.assert_allclose(f_model[n:], 0.0, atol=1e-14 * max(1.0, np.abs(f_lj).max()))


def test_float32_model(tmp_path):
    torch.manual_seed(1)
    net = So3krates(preset("tiny", elements=[1, 8], dtype="float32", num_layers=2))
    path = str(tmp_path / "tiny_f32.pt")
    export_model(net, path, "float32")
    atoms = water_box(32, seed=1)
    got = single_point(path, atoms)
    assert "float32" in got["log"]
    assert_close(got, reference(path, atoms), rtol=1e-5)
