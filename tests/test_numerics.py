"""No silent numerical errors: float32 models far from the origin, coincident atoms, and atomic
numbers that do not match the positions, in every entry point (model, ASE, OpenMM, LAMMPS,
evaluate, train)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import openmm
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from openmm import unit

from so3krates.ase import So3kratesCalculator
from so3krates.export import export_model, load_exported
from so3krates.model import Potential
from so3krates.model.checkpoint import save_checkpoint
from so3krates.model.data import DataError
from so3krates.model.evaluate import evaluate
from so3krates.model.train import TrainOptions, Trainer
from so3krates.openmm_plugin import KJ_PER_MOL_PER_EV, create_force
from so3krates.structures import water_box

from conftest import ethanol, openmm_context, random_network

TRANSLATIONS = (1_000.0, 10_000.0)


def network(dtype="float64"):
    return random_network("tiny", dtype=dtype, seed=4, num_layers=2, energy_scale=3.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("numerics")
    paths = {}
    for dtype in ("float32", "float64"):
        paths[dtype] = str(tmp / f"tiny_{dtype}.pt")
        export_model(network(dtype), paths[dtype], dtype=dtype)
    paths["ckpt"] = str(tmp / "tiny.ckpt")
    save_checkpoint(paths["ckpt"], network())
    return paths


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


STRUCTURES = {"ethanol": lambda: ethanol(rattle=0.05), "periodic water": lambda: water_box(32, seed=1)}


def translated(atoms: Atoms, t: float) -> Atoms:
    moved = atoms.copy()
    moved.positions += t * np.array([1.0, 0.9, 0.8])
    return moved


def assert_same_forces(f, f_ref, what):
    err = np.abs(f - f_ref).max() / np.abs(f_ref).max()
    assert err < 1e-5, f"{what}: max |dF| / max |F| = {err:.1e}"


# --- float32 far from the origin ------------------------------------------------------------------

def test_float32_model_keeps_element_shifts_in_float64(models):
    module, meta = load_exported(models["float32"])
    assert meta["dtype"] == "float32"
    buffers = dict(module.named_buffers())
    assert buffers["network.energy_shift"].dtype == torch.float64
    assert buffers["network.energy_shift"].tolist() == [-13.6, -1029.0, -2041.0]   # exact, not rounded to float32
    assert dict(module.named_parameters())["network.embedding.weight"].dtype == torch.float32


@pytest.mark.parametrize("name", STRUCTURES)
def test_float32_translation_ase(models, name):
    atoms = STRUCTURES[name]()
    calc = So3kratesCalculator(models["float32"])
    ref = calc.get_forces(atoms).copy()
    for t in TRANSLATIONS:
        assert_same_forces(calc.get_forces(translated(atoms, t)), ref, f"ASE {name} +{t} A")


def openmm_forces(model_path, atoms):
    ctx, frame = openmm_context(model_path, atoms)
    f = ctx.getState(getForces=True).getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return frame.to_ase(np.asarray(f) / (KJ_PER_MOL_PER_EV * 10.0))


@pytest.mark.parametrize("name", STRUCTURES)
def test_float32_translation_openmm(models, name):
    atoms = STRUCTURES[name]()
    ref = openmm_forces(models["float32"], atoms)
    for t in TRANSLATIONS:
        assert_same_forces(openmm_forces(models["float32"], translated(atoms, t)), ref, f"OpenMM {name} +{t} A")


@pytest.mark.parametrize("name", ["ethanol", "periodic water"])
def test_float32_translation_lammps(models, name):
    from so3krates.lammps_pair.single_point import single_point
    atoms = STRUCTURES[name]()
    ref = single_point(models["float32"], atoms)["forces"]
    for t in TRANSLATIONS:
        assert_same_forces(single_point(models["float32"], translated(atoms, t))["forces"], ref,
                           f"LAMMPS {name} +{t} A")


# --- coincident atoms -----------------------------------------------------------------------------

def with_duplicate(atoms: Atoms, k: int) -> Atoms:
    """atoms with a copy of atom k appended (index len(atoms)), 1e-4 A away."""
    dup = atoms.copy()
    dup.append(atoms[k])
    dup.positions[-1] += [1e-4, 0.0, 0.0]
    return dup


COINCIDENT = "atoms 2 and 9 are closer than"   # ethanol has 9 atoms: the copy of atom 2 is atom 9


def test_coincident_atoms_model_and_exported_file(models):
    atoms = with_duplicate(ethanol(rattle=0.05), 2)
    pos, z = torch.tensor(atoms.positions), torch.tensor(atoms.numbers)
    for module in (Potential(network()), load_exported(models["float64"])[0], load_exported(models["float32"])[0]):
        with pytest.raises(Exception, match=COINCIDENT):
            module.compute(pos, z)
        with pytest.raises(Exception, match=COINCIDENT):
            module(pos, z)


def test_coincident_atoms_ase(models):
    atoms = with_duplicate(ethanol(rattle=0.05), 2)
    atoms.calc = So3kratesCalculator(models["float32"])
    with pytest.raises(ValueError, match=COINCIDENT + ".*same position"):
        atoms.get_forces()


def test_coincident_atoms_openmm(models):
    with pytest.raises(Exception, match=COINCIDENT):
        openmm_forces(models["float64"], with_duplicate(ethanol(rattle=0.05), 2))


def test_coincident_atoms_lammps(models, tmp_path):
    """Through the `lmp` executable: the pair style names the two atoms by their LAMMPS atom IDs
    (1-based, the data file order): the copy of atom 2 (ID 3) is atom 9 (ID 10)."""
    from so3krates.lammps_pair import lmp_command
    from so3krates.lammps_pair.runner import setup_commands
    from so3krates.lammps_pair.runtime import subprocess_env
    from so3krates.lammps_pair.system import lammps_system, write_data
    system = lammps_system(with_duplicate(ethanol(rattle=0.05), 2))
    write_data(str(tmp_path / "data.lmp"), system)
    (tmp_path / "in.lammps").write_text(setup_commands(system, models["float64"], "data.lmp") + "run 0\n")
    proc = subprocess.run(lmp_command(1) + ["-nocite", "-in", "in.lammps", "-log", "none"], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "ERROR" in out, out[-2000:]
    assert "atoms with IDs 3 and 10 are closer than 0.01 A" in out and "same position" in out, out[-2000:]


def labelled(frames):
    for k, atoms in enumerate(frames):
        atoms.calc = SinglePointCalculator(atoms, energy=-100.0 * len(atoms) + k, forces=np.zeros((len(atoms), 3)))
    return frames


def test_coincident_atoms_evaluate_and_train(models, tmp_path):
    frames = labelled([ethanol(rattle=0.05), with_duplicate(ethanol(rattle=0.05), 2), ethanol(rattle=0.05)])
    data = tmp_path / "bad.xyz"
    write(data, frames, format="extxyz")
    with pytest.raises(DataError, match=r"bad.xyz: frame 1: " + COINCIDENT):
        evaluate(models["ckpt"], str(data))
    proc = subprocess.run([sys.executable, "-m", "so3krates.cli", "evaluate", models["ckpt"], str(data)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and COINCIDENT in proc.stderr + proc.stdout and "MAE nan" not in proc.stdout
    with pytest.raises(DataError, match=COINCIDENT):
        Trainer(TrainOptions(train=str(data), out=str(tmp_path / "run"), preset="tiny", valid_fraction=0.34,
                             epochs=1, progress=False, threads=1))


# --- atomic numbers that do not match the positions -----------------------------------------------

def test_length_mismatch_model_and_exported_file(models):
    atoms = ethanol(rattle=0.05)
    pos = torch.tensor(atoms.positions)
    for module in (Potential(network()), load_exported(models["float32"])[0]):
        for z in (torch.tensor(list(atoms.numbers) + [1]), torch.tensor(atoms.numbers[:-1])):
            with pytest.raises(Exception, match="one atomic number per atom"):
                module.compute(pos, z)
            with pytest.raises(Exception, match="one atomic number per atom"):
                module(pos, z)


def test_length_mismatch_openmm_create_force(models):
    atoms = ethanol(rattle=0.05)
    system = openmm.System()
    for m in atoms.get_masses():
        system.addParticle(m)
    system.addForce(create_force(models["float64"], atomic_numbers=list(atoms.numbers) + [1, 1]))
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(atoms.positions / 10.0)
    with pytest.raises(Exception, match="9 particles but the so3krates force was created with 11 atomic numbers"):
        ctx.getState(getForces=True)


@pytest.mark.parametrize("kind", ["bernstein", "gaussian"])
def test_radial_basis_has_no_subnormal_numbers_and_moves_below_1e_37(kind):
    """Subnormal float32 numbers (below 1.2e-38) make every product that reads them 10-100x slower
    on x86: a float32 Bernstein basis of K = 32 held thousands per batch (x^31 at 4.5 A is ~1e-57),
    and the training step was 1.5x slower on 3BPA for it. The clamped basis has none, and differs
    from the exact one (computed here in float64 without the clamp) by less than 1e-37."""
    from so3krates.model.radial import RadialBasis
    basis = RadialBasis(kind, 32, 4.5, 0.9448630629184640)

    def unclamped(r):
        if kind == "bernstein":
            log_x = -basis.gamma * r.unsqueeze(-1)
            return torch.exp(basis.log_binom + basis.k * log_x + basis.n_minus_k * torch.log(-torch.expm1(log_x)))
        return torch.exp(basis.coeff * (r.unsqueeze(-1) - basis.centers) ** 2)

    tiny = torch.finfo(torch.float32).tiny
    for dtype in (torch.float32, torch.float64):
        basis = basis.to(dtype)
        r = torch.linspace(0.3, 4.5, 2001, dtype=dtype)
        exact, b = unclamped(r), basis(r)
        assert ((exact > 0) & (exact < tiny)).sum() > 1000 or dtype == torch.float64   # the case exists
        assert not ((b != 0) & (b.abs() < tiny)).any()
        assert (b - exact).abs().max() < 1e-37
