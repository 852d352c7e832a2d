"""Stress and virial: read with units, the training forward's stress equals the strain derivative of the
energy and is differentiable, the loss term, training on stresses, and the same-composition energy shifts."""
import numpy as np
import pytest
import torch
from ase.io import read, write
from ase.units import Bohr, kcal, mol

from so3krates.cli import main as cli
from so3krates.model import Potential
from so3krates.model.data import DataError, Structure, collate, make_graphs, read_dataset
from so3krates.model.train import TrainOptions, Trainer, energy_shifts, loss_terms
from so3krates.structures import water_box

from conftest import random_network, triclinic

VOIGT = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]


def labelled_box(stress=None, virial=None, pbc=True):
    atoms = water_box(2, seed=4)
    atoms.pbc = pbc
    atoms.info["energy"] = -10.0
    if stress is not None:
        atoms.info["stress"] = np.asarray(stress, dtype=float)
    if virial is not None:
        atoms.info["virial"] = np.asarray(virial, dtype=float)
    return atoms


def strained_energy(potential, atoms, strain):
    """E(R (1 + strain), cell (1 + strain)) in float64."""
    deformation = np.eye(3) + strain
    out = potential.compute(torch.tensor(atoms.positions @ deformation.T), torch.tensor(atoms.numbers),
                            torch.tensor(atoms.cell.array @ deformation.T), torch.tensor(atoms.pbc))
    return float(out["energy"].detach())


def test_training_forward_stress_is_the_strain_derivative_and_differentiable():
    """The virial of evaluate_edges with create_graph (the training forward, batched): stress = -W / V
    equals (1/V) dE/d(strain) by central differences, and its parameter gradient equals a finite
    difference of the stress in one weight."""
    potential = Potential(random_network("tiny", dtype="float64", energy_scale=0.3))
    atoms = triclinic(water_box(4, seed=1))
    atoms.rattle(0.05, seed=2)
    volume = atoms.get_volume()
    structures = [Structure(a.positions, a.numbers, a.cell.array, a.pbc, 0.0, None, stress=np.zeros((3, 3)))
                  for a in (atoms, water_box(3, seed=5))]
    batch = collate(make_graphs(structures, potential.elements, potential.cutoff, torch.float64))

    def stress_of_first(model):
        out = model.evaluate_edges(batch["positions"], batch["species"], batch["idx_i"], batch["idx_j"],
                                   batch["shifts"], batch["batch"], batch["num_graphs"], -1, True, True, True)
        return -out["virial"][0] / volume

    stress = stress_of_first(potential)
    h = 1e-5
    for a, b in VOIGT:
        strain = np.zeros((3, 3))
        strain[a, b] = strain[b, a] = h / 2 if a != b else h
        # a symmetric shear of h/2 in ab and in ba: dE = V (sigma_ab + sigma_ba) h / 2 = V sigma_ab h
        fd = (strained_energy(potential, atoms, strain) - strained_energy(potential, atoms, -strain)) / (2 * h * volume)
        assert float(stress[a, b].detach()) == pytest.approx(fd, rel=1e-6, abs=1e-9), (a, b)
    weight = potential.network.energy_hidden.weight
    (grad,) = torch.autograd.grad(stress[0, 1], [weight])
    assert grad.abs().max() > 0
    def shifted(step):
        with torch.no_grad():
            weight[3, 2] += step
        return float(stress_of_first(potential)[0, 1].detach())
    plus, minus = shifted(1e-6), shifted(-2e-6)
    assert float(grad[3, 2]) == pytest.approx((plus - minus) / 2e-6, rel=1e-5)


def test_extxyz_stress_voigt_3x3_and_virial_with_units(tmp_path):
    sigma = np.array([[0.01, 0.002, -0.003], [0.002, -0.02, 0.004], [-0.003, 0.004, 0.005]])   # eV/A^3
    voigt = [sigma[a, b] for a, b in VOIGT]
    atoms = labelled_box()
    volume = atoms.get_volume()
    frames = [labelled_box(stress=voigt), labelled_box(stress=sigma.ravel()), labelled_box(virial=-volume * sigma),
              labelled_box()]
    frames[0].info["REF_stress"] = frames[0].info.pop("stress")   # stays 6 numbers (ASE writes `stress` as 3x3)
    write(tmp_path / "a.xyz", frames, format="extxyz")
    assert read(tmp_path / "a.xyz", 0).info["REF_stress"].shape == (6,)
    data = read_dataset(tmp_path / "a.xyz")
    for s in data[:3]:
        np.testing.assert_allclose(s.stress, sigma, atol=1e-12)
        np.testing.assert_allclose(s.virial, -volume * sigma, atol=1e-10)
    assert data[3].stress is None
    # kcal/mol and Bohr: the stress in kcal/mol/Bohr^3, the virial in kcal/mol, the volume converted first.
    k = kcal / mol
    frames = [labelled_box(stress=voigt), labelled_box(virial=-volume * sigma)]
    for f in frames:
        f.set_cell(f.cell / Bohr, scale_atoms=True)
    frames[0].info["stress"] = np.array(voigt) * Bohr ** 3 / k
    frames[1].info["virial"] = -volume * sigma.ravel() / k
    write(tmp_path / "b.xyz", frames, format="extxyz")
    for s in read_dataset(tmp_path / "b.xyz", energy_unit="kcal/mol", length_unit="Bohr"):
        np.testing.assert_allclose(s.stress, sigma, atol=1e-10)


def test_stress_label_errors(tmp_path):
    write(tmp_path / "molecule.xyz", [labelled_box(virial=np.eye(3), pbc=False)], format="extxyz")
    with pytest.raises(DataError, match=r"frame 0: has a virial label but is not periodic .*remove the virial"):
        read_dataset(tmp_path / "molecule.xyz")
    short = labelled_box()
    short.info["REF_stress"] = np.array([1.0, 2.0, 3.0, 4.0])
    write(tmp_path / "short.xyz", [short], format="extxyz")
    with pytest.raises(DataError, match="frame 0: stress has 4 numbers, expected Voigt"):
        read_dataset(tmp_path / "short.xyz")


def test_deepmd_virial_in_ev(tmp_path):
    atoms = labelled_box()
    volume, n = atoms.get_volume(), len(atoms)
    system = tmp_path / "sys"
    (system / "set.000").mkdir(parents=True)
    (system / "type_map.raw").write_text("O H\n")
    (system / "type.raw").write_text("\n".join("0" if z == 8 else "1" for z in atoms.numbers) + "\n")
    virial = np.arange(18, dtype=float).reshape(2, 9) / 10 + np.tile(np.eye(3).ravel(), (2, 1))
    for name, value in (("coord", np.tile(atoms.positions.ravel(), (2, 1))), ("energy", np.array([-1.0, -2.0])),
                        ("force", np.zeros((2, 3 * n))), ("box", np.tile(atoms.cell.array.ravel(), (2, 1))),
                        ("virial", virial)):
        np.save(system / "set.000" / f"{name}.npy", value)
    data = read_dataset(system)
    for k, s in enumerate(data):
        np.testing.assert_allclose(s.stress, -virial[k].reshape(3, 3) / volume)
    np.save(system / "set.000" / "virial.npy", virial[:1])
    with pytest.raises(DataError, match="virial.npy has 1 frames, coord.npy has 2"):
        read_dataset(system)


def test_loss_term_is_the_virial_error_per_atom():
    potential = Potential(random_network("tiny", dtype="float64"))
    boxes = [water_box(2, seed=1), water_box(3, seed=2)]
    structures = [Structure(a.positions, a.numbers, a.cell.array, a.pbc, 0.0, None) for a in boxes]
    batch = collate(make_graphs(structures, potential.elements, potential.cutoff, torch.float64))
    out = potential.evaluate_edges(batch["positions"], batch["species"], batch["idx_i"], batch["idx_j"],
                                   batch["shifts"], batch["batch"], batch["num_graphs"], -1, True, True, True)
    batch["energy"], batch["forces"] = out["energy"].detach(), out["forces"].detach()
    options = TrainOptions(stress_weight=10.0)
    assert float(loss_terms(out, batch, options)[0].detach()) == 0.0   # no stress labels: no term
    batch["virial"] = out["virial"].detach().clone()
    batch["virial"][1, 0, 1] += 0.9                    # one component of the second structure, 9 atoms
    batch["virial_mask"] = torch.tensor([True, True])
    assert float(loss_terms(out, batch, options)[0].detach()) == pytest.approx(10.0 * (0.9 / 9) ** 2 / 18)


@pytest.fixture(scope="module")
def water_frames(tmp_path_factory):
    """16 periodic 4-molecule water boxes at densities 0.85..1.15 g/cm^3, labelled (energy, forces, stress)
    by a random 'teacher' network through the ASE calculator: a learnable target with real stresses."""
    from so3krates.ase import So3kratesCalculator
    teacher = random_network("tiny", dtype="float64", seed=11, energy_scale=0.5, energy_shift=[-13.0, -1020.0, -430.0])
    calc = So3kratesCalculator(Potential(teacher))
    frames = []
    for k in range(16):
        atoms = water_box(4, seed=k, density_scale=0.85 + 0.02 * k)
        atoms.calc = calc
        atoms.info["energy"] = atoms.get_potential_energy()
        atoms.new_array("forces", atoms.get_forces())
        atoms.info["stress"] = atoms.get_stress()
        atoms.calc = None
        frames.append(atoms)
    path = tmp_path_factory.mktemp("water") / "water.xyz"
    write(path, frames, format="extxyz")
    return path


def test_training_on_stresses_lowers_the_stress_error(water_frames, tmp_path, capsys):
    data = read_dataset(water_frames)
    assert all(s.stress is not None and s.stress.shape == (3, 3) for s in data)
    errors = {}
    for weight in (0.0, 300.0):
        options = TrainOptions(train=str(water_frames), out=str(tmp_path / f"w{weight:g}"), preset="tiny",
                               valid_fraction=0.25, batch_size=4, lr=5e-3, warmup_steps=1, ema_decay=0.5, epochs=6,
                               seed=3, progress=False, threads=1, forces_weight=1.0, stress_weight=weight,
                               model={"zbl_repulsion": False})
        trainer = Trainer(options)
        before = trainer.validate()["stress_rmse_GPa"]
        trainer.run()
        errors[weight] = (before, trainer.validate()["stress_rmse_GPa"])
    printed = capsys.readouterr().out
    assert "16 of 16 frames" in printed and "trained with --stress-weight 300" in printed
    assert "not trained (--stress-weight 0)" in printed
    # The same start (seeded); the run with the stress term learns the stress faster (measured: 0.81 of the
    # start and 0.83 of the run without after 6 epochs).
    assert errors[0.0][0] == pytest.approx(errors[300.0][0])
    assert errors[300.0][1] < 0.9 * errors[300.0][0], errors
    assert errors[300.0][1] < 0.9 * errors[0.0][1], errors
    # The per-element shifts of a single composition: the warning says which fit was used.
    assert "determine only 1 of 2 per-element energies: used a regularised fit" in printed
    # evaluate reports the stress errors, in eV/A^3 and GPa.
    assert cli(["evaluate", str(tmp_path / "w300" / "best.ckpt"), str(water_frames)]) == 0
    assert "GPa), pressure MAE" in capsys.readouterr().out
    assert cli(["train", "--train", str(water_frames), "--out", str(tmp_path / "bad"), "--epochs", "1",
                "--stress-weight", "-1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--stress-weight must be a finite number >= 0 (0: stresses not trained)" in err[0]


def test_same_composition_shifts_are_regularised_and_said(capsys):
    rng = np.random.default_rng(0)
    # Water boxes of different sizes: only mu_O + 2 mu_H is determined.
    waters = [Structure(np.zeros((3 * m, 3)), np.array([8, 1, 1] * m), np.zeros((3, 3)), np.zeros(3, bool),
                        m * (-470.0 + rng.normal(scale=0.1)), None) for m in (4, 4, 8, 16)]
    mu = energy_shifts(waters, [1, 8], None)
    assert "determine only 1 of 2 per-element energies: used a regularised fit" in capsys.readouterr().out
    # Near the common energy per atom (-470/3 eV; the noise moves it by ~0.1 eV along (2, 1)), not mu_H = 2 mu_O.
    assert mu[0] == pytest.approx(mu[1], abs=0.1) and mu[1] == pytest.approx(-470.0 / 3, abs=0.2)
    counts = np.array([[2 * len(s) // 3, len(s) // 3] for s in waters])
    fit = np.linalg.lstsq(counts, [s.energy for s in waters], rcond=None)[0]
    np.testing.assert_allclose(counts @ mu, counts @ fit)  # the totals are the least-squares ones
    # Isolated atoms fix them, and the note says so.
    atoms = [Structure(np.zeros((1, 3)), np.array([z]), np.zeros((3, 3)), np.zeros(3, bool), e, None)
             for z, e in ((1, -13.6), (8, -2041.0))]
    np.testing.assert_allclose(energy_shifts(waters, [1, 8], atoms), [-13.6, -2041.0])
    assert "shifts are the isolated-atom energies (--isolated-atoms)" in capsys.readouterr().out
    # Enough compositions: plain least squares, nothing said.
    methane = Structure(np.zeros((5, 3)), np.array([6, 1, 1, 1, 1]), np.zeros((3, 3)), np.zeros(3, bool), -1080.0, None)
    hydrogen = Structure(np.zeros((2, 3)), np.array([1, 1]), np.zeros((3, 3)), np.zeros(3, bool), -31.0, None)
    energy_shifts(waters + [methane, hydrogen], [1, 6, 8], None)
    assert capsys.readouterr().out == ""

