"""pair_style so3krates across MPI ranks with the per-layer halo exchange: `mpiexec -np N lmp` equals
one rank to 1e-10 (float64) in energy, per-atom energies, forces, global and per-atom virial on
awkward layouts; each rank computes its owned atoms only; per-atom virials sum to the global one."""
from __future__ import annotations

import re
from typing import List

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from so3krates.export import exporter
from so3krates.model.neighbors import find_pairs
from so3krates.model.potential import Potential, edge_geometry

from so3krates.lammps_pair.runner import THERMO_PRECISION, parse_thermo, run_lammps, setup_commands
from so3krates.lammps_pair.single_point import single_point
from so3krates.lammps_pair.system import lammps_system, write_data
from so3krates.structures import water_box

from conftest import random_network, triclinic

RTOL = 1e-10
WORK_LINE = "so3krates: computed/owned atoms = 1.00 (max over ranks)"


@pytest.fixture(scope="module")
def model_path(export_random):
    # Three layers: two forward and two reverse halo exchanges per step; for the MD tests.
    return export_random("tiny_3layer_f64", num_layers=3, energy_shift=None)


@pytest.fixture(scope="module")
def zbl_model_path(export_random):
    # The same with ZBL repulsion, a pair term read in the last stage (single points: random weights
    # do not balance ZBL, so MD with it would blow up).
    return export_random("tiny_3layer_zbl_f64", num_layers=3, energy_shift=None, zbl_repulsion=True)


def water_3000() -> Atoms:
    return water_box(1000, seed=11)   # 3,000 atoms, 31 A


def thin_box() -> Atoms:
    """6.2 A along z, less than 2 x cutoff (8 A): each atom's own images along z are its ghosts."""
    return water_box(8, seed=13).repeat((3, 3, 1))


def slab() -> Atoms:
    """`p p f`: periodic in x and y, 12 A of vacuum above and below along z."""
    atoms = water_box(64, seed=14)
    atoms.set_cell(np.diag([*atoms.cell.lengths()[:2], atoms.cell.lengths()[2] + 24.0]), scale_atoms=False)
    atoms.translate([0.0, 0.0, 12.0])
    atoms.pbc = [True, True, False]
    return atoms


def lonely_cluster() -> Atoms:
    """All molecules in the left quarter of a long periodic box: split along x, ranks own nothing."""
    cluster = water_box(16, seed=4)
    return Atoms(cluster.numbers, cluster.positions, cell=np.diag([40.0, *cluster.cell.lengths()[1:]]), pbc=True)


def vacuum_molecule() -> Atoms:
    atoms = molecule("CH3CH2OH") + molecule("H2O")
    atoms.positions[-3:] += [3.0, 0.5, 0.0]
    atoms.pbc = False
    return atoms


CASES = [
    ("3000-atom water box", water_3000, ""),
    ("triclinic cell", lambda: triclinic(water_box(96, seed=12)), ""),
    ("box thinner than 2 cutoffs", thin_box, ""),
    ("p p f slab", slab, ""),
    ("ranks without atoms", lonely_cluster, "processors * 1 1"),
    ("molecule in vacuum", vacuum_molecule, ""),
]


def assert_close(got: dict, want: dict, what: str, rtol: float = RTOL):
    for key in ("energy", "energies", "forces", "virial", "virials"):
        g, w = np.asarray(got[key], float), np.asarray(want[key], float)
        scale = max(float(np.max(np.abs(w))), 1e-300)
        err = float(np.max(np.abs(g - w))) / scale
        assert err < rtol, f"{what}: {key} relative error {err:.2e} >= {rtol:.0e}"


@pytest.mark.parametrize("name, make, before_box", CASES, ids=[c[0] for c in CASES])
def test_ranks_equal_one_rank(zbl_model_path, name, make, before_box):
    model_path = zbl_model_path
    atoms = make()
    one = single_point(model_path, atoms, ranks=1, before_box=before_box, per_atom_virial=True)
    assert WORK_LINE in one["log"]
    # the per-atom virials add up to the global one (LAMMPS frame; xx yy zz xy xz yz)
    system = lammps_system(atoms)
    w = system.rotation.T @ one["virial"] @ system.rotation
    total = one["virials"].sum(axis=0)
    want = np.array([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
    assert np.abs(total - want).max() < RTOL * np.abs(want).max()
    for ranks in (2, 3, 4):
        got = single_point(model_path, atoms, ranks=ranks, before_box=before_box, per_atom_virial=True)
        assert_close(got, one, f"{name}, {ranks} ranks")
        assert WORK_LINE in got["log"], f"{ranks} ranks: no '{WORK_LINE}' line"
        if name == "ranks without atoms":
            counts = re.search(r"Nlocal:\s+\S+ ave\s+(\d+) max\s+(\d+) min", got["log"])
            assert counts and int(counts.group(2)) == 0, "the layout should leave a rank without atoms"
        if ranks == 2 and name == "3000-atom water box":
            halo = re.search(r"(\d+\.\d) halo atoms read", got["log"])
            assert halo and float(halo.group(1)) > 0, "two ranks should read the state of each other's atoms"


def test_heat_flux_runs_on_two_ranks(model_path, tmp_path):
    atoms = water_box(64, seed=15)
    system = lammps_system(atoms)
    write_data(str(tmp_path / "data.lmp"), system)
    script = setup_commands(system, model_path, "data.lmp") + "\n".join([
        "velocity all create 300 5",
        "compute ke all ke/atom",
        "compute pe all pe/atom",
        "compute stress all stress/atom NULL virial",
        "compute flux all heat/flux ke pe stress",
        "compute centroid all centroid/stress/atom NULL virial",
        "compute csum all reduce sum c_centroid[1] c_centroid[2] c_centroid[3]",
        "compute ssum all reduce sum c_stress[1] c_stress[2] c_stress[3]",
        "fix nve all nve",
        "timestep 0.0005",
        "thermo_style custom step pe c_flux[1] c_flux[2] c_flux[3] c_ssum[1] c_ssum[2] c_ssum[3] "
        "c_csum[1] c_csum[2] c_csum[3]",
        THERMO_PRECISION,
        "thermo 5",
        "run 10",
        "",
    ])
    thermo = parse_thermo(run_lammps(script, tmp_path, ranks=2))
    assert thermo["Step"][-1] == 10
    for column in ("c_flux[1]", "c_flux[2]", "c_flux[3]"):
        assert np.isfinite(thermo[column]).all() and np.abs(thermo[column]).max() > 0
    # centroid/stress/atom is the same pair decomposition here
    for k in (1, 2, 3):
        np.testing.assert_allclose(thermo[f"c_csum[{k}]"], thermo[f"c_ssum[{k}]"], rtol=1e-10)


def test_reneighbouring_every_step_and_consecutive_runs(model_path, tmp_path):
    """Ghosts and the order of owned atoms change at each re-neighbouring (here every step, with
    spatial sorting every step); the owner map and the exchanges must follow on every rank alike,
    also across consecutive runs."""
    atoms = water_box(64, seed=16)
    system = lammps_system(atoms)
    write_data(str(tmp_path / "data.lmp"), system)
    results = {}
    for ranks in (1, 3):
        workdir = tmp_path / f"ranks{ranks}"
        workdir.mkdir()
        script = setup_commands(system, model_path, str(tmp_path / "data.lmp")) + "\n".join([
            "neigh_modify every 1 delay 0 check no",
            "atom_modify sort 1 2.0",
            "velocity all create 600 7 dist gaussian",
            "timestep 0.001",
            "fix nve all nve",
            "thermo_style custom step pe ke",
            THERMO_PRECISION,
            "thermo 5",
            "run 10",
            "run 10",
            "write_dump all custom final.dump id x y z modify sort id format float %.17g",
            "",
        ])
        log = run_lammps(script, workdir, ranks=ranks)
        assert log.count(WORK_LINE) == 2, "one computed/owned line per run"
        positions = np.loadtxt(workdir / "final.dump", skiprows=9)[:, 1:]
        results[ranks] = (parse_thermo(log), positions)
    (one, x1), (three, x3) = results[1], results[3]
    np.testing.assert_allclose(three["PotEng"], one["PotEng"], rtol=1e-10)
    assert np.abs(x3 - x1).max() < 1e-10


class PotentialBeforeNumPairs(Potential):
    """The stage_layer of files exported before it took num_pairs (every edge a pair)."""

    @torch.jit.export
    def stage_layer(self, t: int, x: torch.Tensor, ev: torch.Tensor, geometry: List[torch.Tensor],
                    idx_i: torch.Tensor, idx_j: torch.Tensor, num_receivers: int) -> List[torch.Tensor]:
        x, ev = self.network.layer_step(t, x, ev, edge_geometry(geometry), idx_i, idx_j, True, num_receivers)
        return [x, ev]


def test_file_without_num_pairs_gives_the_same_on_two_ranks(tmp_path, monkeypatch, zbl_model_path):
    """A model file whose stage_layer lacks num_pairs (exported before it was added) still runs on
    2 ranks, with the results of a current file of the same weights."""
    monkeypatch.setattr(exporter, "Potential", PotentialBeforeNumPairs)
    old_path = tmp_path / "before_num_pairs.pt"
    exporter.export_model(random_network(num_layers=3, energy_shift=None, zbl_repulsion=True), old_path)
    old_file = torch.jit.load(str(old_path))
    assert "num_pairs" not in str(old_file.stage_layer.schema)
    assert "num_pairs" in str(torch.jit.load(zbl_model_path).stage_layer.schema)
    atoms = water_box(96, seed=17)
    new = single_point(zbl_model_path, atoms, ranks=2)
    old = single_point(str(old_path), atoms, ranks=2)
    for key in ("energy", "energies", "forces", "virial"):
        np.testing.assert_allclose(new[key], old[key], rtol=RTOL, atol=RTOL * np.abs(old[key]).max(), err_msg=key)


def test_stage_layer_num_pairs_skips_only_dropped_messages(export_random):
    """The layout of one LAMMPS rank (owned atoms, then halo rows of senders owned elsewhere; the
    pairs first, then the one-way edges from halo senders): stage_layer with num_pairs gives the
    owned rows' state of the default (every edge a pair, mirrored messages into halo rows dropped)."""
    path = export_random("tiny_3layer_zbl_f64", num_layers=3, energy_shift=None, zbl_repulsion=True)
    module = torch.jit.load(path)
    atoms = water_box(64, seed=18)
    i, j, shifts = find_pairs(atoms.positions, atoms.cell.array, atoms.pbc, exporter.read_metadata(path)["cutoff_A"])
    vectors = atoms.positions[j] + shifts - atoms.positions[i]
    owned = atoms.positions[:, 0] < 0.5 * atoms.cell.array[0, 0]           # "rank 0": the left half
    n_own = int(owned.sum())
    row = np.full(len(atoms), -1)
    row[owned] = np.arange(n_own)
    pair = owned[i] & owned[j] & (i < j)                                   # each owned pair once
    one_way = owned[i] & ~owned[j]                                         # i <- j from another "rank"
    halo_atoms, halo_rows = np.unique(j[one_way], return_inverse=True)
    idx_i = torch.tensor(np.concatenate([row[i[pair]], row[i[one_way]]]))
    idx_j = torch.tensor(np.concatenate([row[j[pair]], n_own + halo_rows]))
    geometry = module.stage_geometry(torch.tensor(np.concatenate([vectors[pair], vectors[one_way]])))
    rows = np.concatenate([np.nonzero(owned)[0], halo_atoms])
    x, ev = module.stage_embed(module.species_index(torch.tensor(atoms.numbers[rows])))
    ev = ev + 0.1 * torch.randn(ev.shape, dtype=ev.dtype)                 # as after a first layer
    num_pairs = int(pair.sum())
    assert 0 < num_pairs < idx_i.shape[0] and len(halo_atoms) > 0
    for t in (0, 1):
        want = module.stage_layer(t, x, ev, geometry, idx_i, idx_j, n_own)
        got = module.stage_layer(t, x, ev, geometry, idx_i, idx_j, n_own, num_pairs)
        for g, w in zip(got, want):
            assert g.shape[0] == n_own
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
