"""SO3LR (long-range model files) in `pair_style so3krates` (issue 18): electrostatics and dispersion
out to the file's long-range cutoff, the charge conservation and the charge/spin embeddings summed
over all ranks. LAMMPS on 1 and 2 ranks equals ASE (`compute()`) to 1e-8 relative in float64; the
`charge` / `multiplicity` keywords act as atoms.info does in ASE; MD conserves energy; the CLI's
md and validate run it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from so3krates.ase import So3kratesCalculator
from so3krates.lammps_pair.single_point import single_point
from so3krates.lammps_pair.system import lammps_system

FIXTURE = Path(__file__).parent / "data" / "so3lr_reference.json"
RTOL = 1e-8


def reference_atoms(name: str) -> Atoms:
    """A structure of the SO3LR reference fixture (the 192-atom periodic water, 12.42 A cube, the
    smallest box OpenMM takes; or acetamide), with its charge and multiplicity in atoms.info."""
    case = next(c for c in json.loads(FIXTURE.read_text())["cases"] if c["name"] == name)
    atoms = Atoms(numbers=case["numbers"], positions=case["positions"], cell=case["cell"], pbc=case["pbc"])
    atoms.info.update(charge=case["charge"], spin=case["multiplicity"])
    return atoms


def two_acetamides() -> Atoms:
    """Acetamide and a copy 7 A away: pairs beyond the short-range cutoff but within 12 A, split
    between two ranks; a cation doublet (charge 1, multiplicity 2 in atoms.info)."""
    one = reference_atoms("acetamide_cation_doublet")
    other = one.copy()
    other.positions += [7.0, 1.0, 0.5]
    atoms = one + other
    atoms.info.update(charge=1, spin=2)
    return atoms


STRUCTURES = {"acetamide pair, cation doublet": two_acetamides,
              "water 192 atoms, periodic": lambda: reference_atoms("water_box_192")}


def ase_results(model_path: str, atoms: Atoms) -> dict:
    atoms = atoms.copy()
    atoms.calc = So3kratesCalculator(model_path)
    out = {"energy": atoms.get_potential_energy(), "energies": atoms.get_potential_energies(),
           "forces": atoms.get_forces()}
    if atoms.pbc.all():
        s = atoms.get_stress(voigt=False)
        out["virial"] = -s * atoms.get_volume()
    return out


def assert_close(got: dict, want: dict, what: str, rtol: float = RTOL, keys=("energy", "energies", "forces", "virial")):
    for key in keys:
        if key not in want:
            continue
        g, w = np.asarray(got[key], float), np.asarray(want[key], float)
        err = float(np.max(np.abs(g - w))) / max(float(np.max(np.abs(w))), 1e-300)
        assert err < rtol, f"{what}: {key} relative error {err:.2e} >= {rtol:.0e}"


@pytest.fixture(scope="module")
def ase_reference(so3lr_file):
    return {name: ase_results(so3lr_file, make()) for name, make in STRUCTURES.items()}


@pytest.fixture(scope="module")
def one_rank(so3lr_file):
    return {name: single_point(so3lr_file, make(), per_atom_virial=True) for name, make in STRUCTURES.items()}


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_one_rank_equals_ase(ase_reference, one_rank, name):
    got = one_rank[name]
    assert_close(got, ase_reference[name], f"{name}, LAMMPS 1 rank")
    # the per-atom virials add up to the global one (LAMMPS frame; xx yy zz xy xz yz)
    system = lammps_system(STRUCTURES[name]())
    w = system.rotation.T @ got["virial"] @ system.rotation
    want = np.array([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
    assert np.abs(got["virials"].sum(axis=0) - want).max() < 1e-10 * np.abs(want).max()
    log = got["log"]
    assert "long-range cutoff  12 A" in log
    assert "ghost atoms out to 14 A (long-range cutoff 12 A + skin 2 A)" in log
    if name.startswith("acetamide"):
        assert "total charge 1 e, multiplicity 2" in log


@pytest.mark.mpi
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_two_ranks_equal_one_rank_and_ase(ase_reference, one_rank, so3lr_file, name):
    got = single_point(so3lr_file, STRUCTURES[name](), ranks=2, per_atom_virial=True)
    assert_close(got, ase_reference[name], f"{name}, LAMMPS 2 ranks")
    assert_close(got, one_rank[name], f"{name}, 2 ranks against 1", 1e-10,
                 ("energy", "energies", "forces", "virial", "virials"))
    halo = re.search(r"(\d+\.\d) halo atoms read", got["log"])
    assert halo and float(halo.group(1)) > 0, "two ranks should read the state of each other's atoms"


def test_charge_and_multiplicity_keywords_change_the_energy_as_in_ase(so3lr_file, ase_reference, one_rank):
    """The neutral singlet of the acetamide pair (atoms.info -> pair_style so3krates charge 0
    multiplicity 1) against the cation doublet: LAMMPS' difference is ASE's."""
    atoms = two_acetamides()
    atoms.info.update(charge=0, spin=1)
    neutral_ase = ase_results(so3lr_file, atoms)
    neutral = single_point(so3lr_file, atoms)
    assert "total charge 0 e, multiplicity 1" in neutral["log"]
    assert_close(neutral, neutral_ase, "neutral acetamide pair")
    name = "acetamide pair, cation doublet"
    want = ase_reference[name]["energy"] - neutral_ase["energy"]
    got = one_rank[name]["energy"] - neutral["energy"]
    assert abs(want) > 0.1
    assert abs(got - want) < RTOL * abs(neutral_ase["energy"])


def test_charge_keyword_for_a_model_without_that_input_is_an_error(export_random, tmp_path):
    from so3krates.lammps_pair.runner import run_lammps, setup_commands
    from so3krates.lammps_pair.system import write_data
    from so3krates.structures import water_box
    atoms = water_box(8, seed=1)
    system = lammps_system(atoms)
    write_data(str(tmp_path / "data.lmp"), system)
    script = setup_commands(system, export_random("tiny"), "data.lmp").replace(
        "pair_style so3krates", "pair_style so3krates charge 1") + "run 0\n"
    with pytest.raises(RuntimeError, match="charge 1: the model .* has no total-charge input .* leave the keyword out"):
        run_lammps(script, tmp_path)


def cation_file(tmp_path) -> str:
    """The acetamide cation doublet as `so3krates md` / `validate` read it: charge= and spin= in the
    extended-XYZ comment line."""
    from ase.io import write
    atoms = reference_atoms("acetamide_cation_doublet")
    atoms.center(vacuum=6.0)
    path = tmp_path / "acetamide_cation.xyz"
    write(str(path), atoms, format="extxyz")
    return str(path)


def test_md_cli_with_the_lammps_engine(so3lr_file, tmp_path):
    """`so3krates md so3lr.pt STRUCT --engine lammps`: runs, and its step-0 energy is ASE's for the
    charge and multiplicity of the structure file."""
    import csv
    from ase.io import read
    from so3krates.cli import main
    structure, log = cation_file(tmp_path), tmp_path / "md.csv"
    assert main(["md", so3lr_file, structure, "--engine", "lammps", "--steps", "20", "--log-every", "10",
                 "--traj-every", "0", "--log", str(log), "--quiet"]) == 0
    rows = list(csv.DictReader(log.open()))
    assert [int(r["step"]) for r in rows] == [0, 10, 20]
    atoms = read(structure)
    assert atoms.info["charge"] == 1 and atoms.info["spin"] == 2
    want = ase_results(so3lr_file, atoms)["energy"]
    assert abs(float(rows[0]["potential_eV"]) - want) < 1e-8 * abs(want)


@pytest.mark.mpi
def test_validate_cli_with_all_engines(so3lr_file, tmp_path):
    """`so3krates validate so3lr.pt STRUCT --engines ase,openmm,lammps,lammps:2` runs every engine: step 0
    within the float64 tolerances of ASE and the same NVE energies. (A 20 fs run is too short for the
    drift fit: its verdict is the reference's own, ASE's included, so only that may fail here.)"""
    from so3krates.cli import main
    report = tmp_path / "report.json"
    code = main(["validate", so3lr_file, cation_file(tmp_path), "--engines", "ase,openmm,lammps,lammps:2",
                 "--steps", "40", "--json", str(report), "--quiet"])
    data = json.loads(report.read_text())
    assert code == (0 if data["passed"] else 1)
    assert data["engines"] == ["ase", "openmm", "lammps", "lammps:2"]
    for label in data["engines"]:
        assert data["step0"][label]["max_abs_dE_meV_per_atom"] < 1e-6, label
        assert data["step0"][label]["max_abs_dF_meV_per_A"] < 1e-5, label
        drift = data["nve"][label]["drift_meV_per_atom_per_ps"]
        assert drift == pytest.approx(data["nve"]["ase"]["drift_meV_per_atom_per_ps"], rel=1e-4, abs=1e-6), label
    assert all("NVE drift" in failure for failure in data["failures"]), data["failures"]


@pytest.mark.slow
@pytest.mark.long
def test_nve_two_picoseconds_of_water_conserve_energy(so3lr_file):
    """2 ps of SO3LR water in LAMMPS (float64, 0.5 fs, NVE from 300 K): drift below 0.05 meV/atom/ps.
    8 molecules in a 6.2 A periodic box: every atom meets dozens of its own images within the 12 A
    long-range cutoff, and each step still costs ~0.1 s on this machine (4,000 steps)."""
    from so3krates.engines import EngineSpec, MDSettings, initial_state, run_md
    from so3krates.structures import water_box
    from so3krates.validation.metrics import energy_conservation
    atoms = initial_state(water_box(8, seed=1), 300.0, seed=1)
    settings = MDSettings(ensemble="nve", timestep_fs=0.5, steps=4000, log_every=50, traj_every=0)
    result = run_md(EngineSpec("lammps"), so3lr_file, atoms, settings, progress=False)
    figures = energy_conservation(result)
    assert figures["duration_ps"] == pytest.approx(2.0)
    assert abs(figures["drift_meV_per_atom_per_ps"]) < 0.05, figures
    assert figures["fluctuation_to_kinetic_ratio"] < 0.05, figures
