"""The network and potential: symmetries, gradients, smoothness, periodicity, export, bad input."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from scipy.spatial.transform import Rotation

from so3krates.ase import So3kratesCalculator
from so3krates.export import NotASo3kratesModel, export_model, load_exported, read_metadata
from so3krates.model import Potential
from so3krates.model.checkpoint import network_from_checkpoint, save_checkpoint
from so3krates.model.radial_table import DEFAULT_POINTS

from conftest import random_network as make_random_network, random_water


def random_network(dtype="float64", seed=0, **overrides):
    return make_random_network("small", dtype=dtype, seed=seed, energy_scale=0.5, **overrides)


@pytest.fixture(scope="module")
def potential():
    return Potential(random_network()).eval()


@pytest.fixture(scope="module")
def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    return atoms


def evaluate(pot, atoms, virial=False):
    cell = torch.tensor(atoms.cell.array) if atoms.pbc.any() else None
    pbc = torch.tensor(atoms.pbc) if atoms.pbc.any() else None
    out = pot.compute(torch.tensor(atoms.positions), torch.tensor(atoms.numbers), cell, pbc,
                      compute_virial=virial)
    return {k: v.detach() for k, v in out.items()}


def test_energy_invariant_under_rotation_translation_reflection_permutation(potential, ethanol):
    ref = evaluate(potential, ethanol)
    q = Rotation.random(random_state=3).as_matrix()
    moved = ethanol.copy()
    moved.positions = ethanol.positions @ q.T + np.array([1.3, -4.2, 7.7])
    out = evaluate(potential, moved)
    assert abs(float(out["energy"] - ref["energy"])) < 1e-10
    np.testing.assert_allclose(out["forces"].numpy(), ref["forces"].numpy() @ q.T, atol=1e-10)

    mirrored = ethanol.copy()
    mirrored.positions = ethanol.positions * np.array([1.0, 1.0, -1.0])
    assert abs(float(evaluate(potential, mirrored)["energy"] - ref["energy"])) < 1e-10

    hydrogens = np.flatnonzero(ethanol.numbers == 1)
    order = np.arange(len(ethanol))
    order[hydrogens] = hydrogens[::-1]
    permuted = ethanol[order]
    out = evaluate(potential, permuted)
    assert abs(float(out["energy"] - ref["energy"])) < 1e-10
    np.testing.assert_allclose(out["forces"].numpy(), ref["forces"].numpy()[order], atol=1e-10)
    assert float(ref["forces"].abs().max()) > 1e-3, "forces vanish: the test would be vacuous"


def test_forces_are_minus_the_energy_gradient(potential, ethanol):
    forces = evaluate(potential, ethanol)["forces"].numpy()
    # Fourth-order central differences: the absolute energy (~ -3000 eV with the element
    # shifts) limits the accuracy of a single difference quotient through round-off.
    h = 1e-4
    fd = np.zeros_like(forces)
    for i in range(len(ethanol)):
        for a in range(3):
            e = {}
            for k in (-2, -1, 1, 2):
                moved = ethanol.copy()
                moved.positions[i, a] += k * h
                e[k] = float(evaluate(potential, moved)["energy"])
            fd[i, a] = -(e[-2] - 8 * e[-1] + 8 * e[1] - e[2]) / (12 * h)
    assert np.linalg.norm(forces - fd) / np.linalg.norm(fd) < 1e-6


def test_stress_is_the_strain_derivative():
    net = random_network()
    net.energy_shift.zero_()  # constant shifts only add round-off to the difference quotients
    calc = So3kratesCalculator(Potential(net))
    atoms = random_water(cell=np.array([[9.0, 0, 0], [1.2, 9.5, 0], [0.4, -0.8, 10.0]]))
    atoms.calc = calc
    stress = atoms.get_stress(voigt=False)
    h = 1e-4
    fd = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            e = {}
            for k in (-2, -1, 1, 2):
                strain = np.eye(3)
                strain[a, b] += k * h
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
                strained.calc = calc
                e[k] = strained.get_potential_energy()
            fd[a, b] = (e[-2] - 8 * e[-1] + 8 * e[1] - e[2]) / (12 * h) / atoms.get_volume()
    fd = 0.5 * (fd + fd.T)
    assert np.abs(stress).max() > 1e-5
    np.testing.assert_allclose(stress, fd, rtol=1e-6, atol=1e-11)


@pytest.mark.parametrize("cutoff_function,radial_table", [("physnet", 0), ("cosine", 0), ("physnet", DEFAULT_POINTS)])
def test_energy_and_forces_continuous_across_the_cutoff(cutoff_function, radial_table):
    net = random_network(cutoff_function=cutoff_function)
    if radial_table:
        net.tabulate_radial_filters(radial_table)
    pot = Potential(net)
    rc = pot.cutoff
    # A water molecule and an H atom approaching its O along x: only that O-H distance crosses r_c.
    water = molecule("H2O")
    out = {}
    for r in (rc - 1e-6, rc + 1e-6):
        probe = Atoms("H", positions=[water.positions[0] + [0.0, 0.0, r]])
        out[r] = evaluate(pot, water + probe)
    inside, outside = out[rc - 1e-6], out[rc + 1e-6]
    assert float(outside["forces"][-1].abs().max()) == 0.0
    assert abs(float(inside["energy"] - outside["energy"])) < 1e-10
    assert float((inside["forces"] - outside["forces"]).abs().max()) < 1e-8
    assert float(inside["forces"][0].abs().max()) > 1e-3, "water forces vanish: vacuous test"


def test_supercell_energy_scales_and_forces_repeat(potential):
    for cell in (np.diag([9.0, 9.0, 9.0]), np.array([[9.0, 0, 0], [2.5, 9.0, 0], [-1.0, 1.5, 9.5]])):
        atoms = random_water(cell=cell)
        atoms.wrap()
        small = evaluate(potential, atoms)
        big = evaluate(potential, atoms.repeat((2, 2, 2)))
        assert float(big["energy"]) == pytest.approx(8 * float(small["energy"]), rel=1e-12)
        np.testing.assert_allclose(big["forces"].numpy()[: len(atoms)], small["forces"].numpy(), atol=1e-10)

        unwrapped = atoms.copy()
        unwrapped.positions += np.random.default_rng(1).integers(-3, 4, (len(atoms), 3)) @ atoms.cell.array
        shifted = evaluate(potential, unwrapped)
        assert float(shifted["energy"]) == pytest.approx(float(small["energy"]), rel=1e-12)
        np.testing.assert_allclose(shifted["forces"].numpy(), small["forces"].numpy(), atol=1e-10)


def test_builtin_neighbour_search_matches_vesin_calculator(potential):
    atoms = random_water(n_molecules=20, cell=np.array([[10.0, 0, 0], [3.0, 10.0, 0], [1.0, -2.0, 10.5]]))
    atoms.calc = So3kratesCalculator(potential)
    builtin = evaluate(potential, atoms, virial=True)
    assert atoms.get_potential_energy() == pytest.approx(float(builtin["energy"]), rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), builtin["forces"].numpy(), atol=1e-10)
    np.testing.assert_allclose(atoms.get_potential_energies(), builtin["energies"].numpy(), atol=1e-10)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("radial_table", [0, DEFAULT_POINTS])
def test_exported_file_reproduces_the_eager_model(tmp_path, ethanol, dtype, tol, radial_table):
    net = random_network(dtype=dtype)
    path = tmp_path / "model.pt"
    export_model(net, path, dtype=dtype, radial_table=radial_table)
    exported, meta = load_exported(path)
    if radial_table:
        net = copy.deepcopy(net)
        net.tabulate_radial_filters(radial_table)
    eager = Potential(net)
    for atoms in (ethanol, random_water()):
        a = evaluate(eager, atoms)
        b = evaluate(exported, atoms)
        assert b["forces"].dtype == getattr(torch, dtype)
        assert float(b["energy"]) == pytest.approx(float(a["energy"]), rel=tol)
        scale = float(a["forces"].abs().max())
        assert float((a["forces"] - b["forces"]).abs().max()) <= tol * scale
    assert meta["dtype"] == dtype
    assert meta["radial_filters"] == ({"kind": "cubic Hermite table", "points": radial_table} if radial_table
                                      else {"kind": "exact"})


def test_filter_net_is_the_paper_formula_and_its_first_layer_shortcut_agrees():
    """w = Lin(silu(Lin(rbf))) + Lin(silu(Lin(c(ev_j - ev_i)))), written out here from the
    paper; FilterNet folds the biases into addmm and, in the first layer (ev = 0), evaluates the
    spherical branch once as a constant. Random (nonzero) biases, so a dropped term shows."""
    net = random_network()
    filt = net.layers[0].filter_inv
    with torch.no_grad():
        for p in filt.parameters():
            p.normal_()
    num_rbf, num_degrees = filt.radial_in.in_features, filt.spherical_in.in_features
    rbf = torch.rand(11, num_rbf, dtype=torch.float64)
    no_rows, no_weights = torch.zeros((0, 4), dtype=torch.long), torch.zeros((0, 4), dtype=torch.float64)

    def paper(delta):
        silu = torch.nn.functional.silu
        return filt.radial_out(silu(filt.radial_in(rbf))) + filt.spherical_out(silu(filt.spherical_in(delta)))

    with torch.no_grad():
        delta = torch.rand(11, num_degrees, dtype=torch.float64)
        assert torch.allclose(filt(rbf, no_rows, no_weights, delta, False), paper(delta), rtol=0, atol=1e-12)
        zero = torch.zeros(11, num_degrees, dtype=torch.float64)
        shortcut = filt(rbf, no_rows, no_weights, torch.zeros(0, 0, dtype=torch.float64), True)
        assert torch.allclose(shortcut, paper(zero), rtol=0, atol=1e-12)


def test_radial_table_converges_to_the_exact_filters_at_fourth_order(ethanol):
    """The force error of the table falls like h^3 (cubic through values and exact derivatives at
    the grid points); a wrong derivative would leave h^2 or worse. At the export default it is
    below float32 round-off, and the tabulated forces are minus the gradient of the tabulated
    energy."""
    net = random_network()
    atoms = random_water()
    exact = evaluate(Potential(net), atoms)
    scale = float(exact["forces"].abs().max())
    error = {}
    for points in (128, 256, DEFAULT_POINTS):
        tabulated = copy.deepcopy(net)
        tabulated.tabulate_radial_filters(points)
        out = evaluate(Potential(tabulated), atoms)
        error[points] = float((out["forces"] - exact["forces"]).abs().max()) / scale
        assert abs(float(out["energy"] - exact["energy"])) < 1e3 * error[points] * scale
    assert error[128] / error[256] > 6, error
    assert error[DEFAULT_POINTS] < 1e-7, error
    pot = Potential(tabulated)
    forces = evaluate(pot, ethanol)["forces"].numpy()
    direction = np.random.default_rng(2).normal(size=forces.shape)
    h, e = 1e-4, {}
    for k in (-2, -1, 1, 2):
        moved = ethanol.copy()
        moved.positions += k * h * direction
        e[k] = float(evaluate(pot, moved)["energy"])
    slope = (e[-2] - 8 * e[-1] + 8 * e[1] - e[2]) / (12 * h)
    assert slope == pytest.approx(-float((forces * direction).sum()), rel=1e-6)


def test_checkpoint_loads_with_weights_only_and_exports(tmp_path):
    net = random_network()
    ckpt = tmp_path / "best.ckpt"
    save_checkpoint(ckpt, net, metadata={"training_data_sha256": "ab" * 32})
    payload = torch.load(ckpt, weights_only=True)
    assert payload["config"]["features"] == net.config.features
    restored, _ = network_from_checkpoint(ckpt)
    for (k, v), (k2, v2) in zip(net.state_dict().items(), restored.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    out = tmp_path / "model.pt"
    subprocess.run([sys.executable, "-m", "so3krates.cli", "export", str(ckpt), "-o", str(out),
                    "--dtype", "float32"], check=True, capture_output=True)
    info = subprocess.run([sys.executable, "-m", "so3krates.cli", "info", str(out), "--json"],
                          check=True, capture_output=True, text=True)
    meta = json.loads(info.stdout)
    for key in ("format_version", "so3krates_version", "torch_version", "elements", "cutoff_A", "num_layers",
                "interaction_range_A", "length_unit", "energy_unit", "dtype"):
        assert key in meta
    assert meta["elements"] == [1, 6, 8] and meta["dtype"] == "float32"
    assert meta["interaction_range_A"] == pytest.approx(meta["num_layers"] * meta["cutoff_A"])
    assert meta["provenance"]["training_data_sha256"] == "ab" * 32
    assert meta["radial_filters"] == {"kind": "cubic Hermite table", "points": DEFAULT_POINTS}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "temporary files left behind"
    bad = subprocess.run([sys.executable, "-m", "so3krates.cli", "export", str(ckpt), "-o", str(tmp_path / "x.pt"),
                          "--radial-table", "8"], capture_output=True, text=True)
    assert bad.returncode != 0 and "at least 16 grid points" in bad.stderr, bad.stderr[-500:]


def test_file_without_metadata_is_refused(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 1)), str(path))
    with pytest.raises(NotASo3kratesModel, match="no so3krates metadata"):
        read_metadata(path)
    with pytest.raises(ValueError, match="not a so3krates"):
        So3kratesCalculator(str(path))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a so3krates checkpoint"):
        So3kratesCalculator(str(text))


def test_unknown_element_nan_positions_and_small_box_are_clear_errors(potential, ethanol):
    bad = ethanol.copy()
    bad.numbers[0] = 7
    with pytest.raises(Exception, match=r"atomic number \[7\] not in this model"):
        evaluate(potential, bad)
    bad = ethanol.copy()
    bad.positions[2, 1] = np.nan
    with pytest.raises(Exception, match="NaN"):
        evaluate(potential, bad)
    small = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], cell=[3.0, 8.0, 8.0], pbc=True)
    with pytest.raises(Exception, match="periodic box too small.*lattice vector 0.*supercell"):
        evaluate(potential, small)
    scripted = torch.jit.script(potential)
    with pytest.raises(Exception, match="periodic box too small"):
        evaluate(scripted, small)


def test_spherical_harmonics_from_monomials_equal_the_formulas_with_derivatives():
    """The harmonics are computed as (monomials of u) @ (coefficients read off the formulas in
    `_degree`): the same polynomials, so the same values, gradients and second derivatives (the
    force training's double backward) as evaluating the formulas term by term."""
    from so3krates.model.spherical_harmonics import SphericalHarmonics, _degree

    def by_formula(u, degrees):
        x, y, z = u[:, 0], u[:, 1], u[:, 2]
        return torch.stack([p for l in degrees for p in
                            ([torch.full_like(x, 0.5 / np.sqrt(np.pi))] if l == 0 else _degree(l, x, y, z))], -1)

    torch.manual_seed(0)
    v = torch.randn(200, 3, dtype=torch.float64)
    v[:3] = torch.tensor([[0.0, 0.0, 1.5], [1.0, 0.0, 0.0], [0.0, -2.0, 0.0]], dtype=torch.float64)   # on axes
    for degrees in ([1, 2, 3, 4], [0, 1, 2], [2, 4], [3]):
        sh = SphericalHarmonics(degrees).double()
        weights = torch.randn(sum(2 * l + 1 for l in degrees), dtype=torch.float64)
        results = []
        for f in (lambda u: sh(u), lambda u: by_formula(u, degrees)):
            vv = v.clone().requires_grad_(True)
            y = f(vv / vv.norm(dim=-1, keepdim=True))
            (g,) = torch.autograd.grad((y ** 2 @ weights).sum(), vv, create_graph=True)
            (h,) = torch.autograd.grad((g ** 2).sum(), vv)
            results.append((y.detach(), g.detach(), h))
        for a, b in zip(*results):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    assert SphericalHarmonics([1, 2, 3, 4]).state_dict() == {}   # checkpoints keep their keys
