"""Shared fixtures: model factories, structures and a briefly trained model.

Unit tests (the network, data, units) and integration tests (real OpenMM Contexts, the LAMMPS
library, `mpiexec lmp`, the CLI) live in separate files; these factories are what they share.
Markers (pyproject.toml): `mpi` for tests that start several MPI ranks, `slow` for tests over
~15 s on 2 cores; `make check` runs the rest.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from so3krates.export import export_model
from so3krates.model import So3krates
from so3krates.model.config import preset


LONG_TESTS = "SO3KRATES_LONG_TESTS"


def pytest_configure(config):
    config.addinivalue_line("markers", "long: minutes on 2 cores; skipped unless SO3KRATES_LONG_TESTS=1 "
                                       "(`make test-long` runs them)")


def pytest_collection_modifyitems(config, items):
    """Tests of several minutes each (a 2 ps MD run of a large pretrained model) would push `make test`
    past its budget: they are skipped, with the command that runs them, unless asked for."""
    if os.environ.get(LONG_TESTS) == "1":
        return
    skip = pytest.mark.skip(reason=f"long test (minutes): run it with `make test-long` ({LONG_TESTS}=1)")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)

ELEMENTS = [1, 6, 8]
# Realistic per-element shifts (eV): energies of the size of real ones exercise float32 round-off.
SHIFTS_EV = [-13.6, -1029.0, -2041.0]


def random_network(preset_name: str = "tiny", dtype: str = "float64", seed: int = 0,
                   energy_scale: Optional[float] = None, energy_shift: Optional[Sequence[float]] = SHIFTS_EV,
                   elements: Sequence[int] = ELEMENTS, zbl_repulsion: bool = False, **config) -> So3krates:
    """A network with random weights (seeded); energy_scale/energy_shift set the per-element
    E_i = s e_i + mu (None keeps the defaults 1 and 0). ZBL is off unless asked for: random weights
    do not balance its repulsion at bond lengths (a trained model does), so MD with it would blow up."""
    torch.manual_seed(seed)
    net = So3krates(preset(preset_name, elements=list(elements), dtype=dtype, zbl_repulsion=zbl_repulsion,
                           **config))
    with torch.no_grad():
        if energy_scale is not None:
            net.energy_scale.fill_(energy_scale)
        if energy_shift is not None:
            net.energy_shift.copy_(torch.tensor(list(energy_shift)[: len(elements)], dtype=torch.float64))
    return net


@pytest.fixture(scope="session")
def make_network():
    """random_network as a fixture: make_network("small", dtype="float32", energy_scale=0.5)."""
    return random_network


@pytest.fixture(scope="session")
def export_random(tmp_path_factory):
    """export_random(name, dtype="float64", **random_network options) -> path (str) of an exported
    random network, written once per session and name."""
    folder = tmp_path_factory.mktemp("models")
    made = {}

    def export(name: str, dtype: str = "float64", radial_table: Optional[int] = None, **options) -> str:
        if name not in made:
            path = folder / f"{name}.pt"
            kwargs = {} if radial_table is None else {"radial_table": radial_table}
            export_model(random_network(dtype=dtype, **options), path, dtype, **kwargs)
            made[name] = str(path)
        return made[name]
    return export


def ethanol(vacuum: float = 6.0, rattle: float = 0.0) -> Atoms:
    """Ethanol centred in a non-periodic box, as `so3krates md ... ethanol` reads it; `rattle`
    displaces the atoms randomly (A, seeded) away from the symmetric ASE geometry."""
    atoms = molecule("CH3CH2OH")
    if rattle:
        atoms.rattle(rattle, seed=1)
    atoms.center(vacuum=vacuum)
    atoms.pbc = False
    return atoms


def hot_ethanol_frames(path: Path, frames: int, seed: int) -> Path:
    """`frames` GFN2-xTB frames of ethanol at 800 K (tblite, about a second), written to `path`."""
    from so3krates.model.sample import SampleSettings, resolve_structure, sample, write_frames
    settings = SampleSettings(temperature=800, frames=frames, stride=3, equilibration=0, seed=seed)
    write_frames(path, sample(resolve_structure("ethanol"), settings, progress=False))
    return path


def triclinic(atoms: Atoms, rotate: bool = True) -> Atoms:
    """A periodic structure in a generic triclinic cell: the cell sheared (atoms moved with it),
    then, with rotate, the whole system turned so that no lattice vector lies along an axis (the
    engines must rotate it into their own frame)."""
    atoms = atoms.copy()
    cell = atoms.cell.array.copy()
    cell[1, 0] += 0.2 * cell[0, 0]
    cell[2, 0] += 0.1 * cell[0, 0]
    cell[2, 1] -= 0.15 * cell[1, 1]
    atoms.set_cell(cell, scale_atoms=True)
    if rotate:
        atoms.rotate(25, "z", rotate_cell=True)
        atoms.rotate(10, "x", rotate_cell=True)
    return atoms


def random_water(n_molecules: int = 12, box: float = 9.0, seed: int = 0, cell=None) -> Atoms:
    """Water molecules at random centres in [0, box)^3 and random orientations, in `cell` (default
    cubic, side box): for symmetry and periodicity tests, where liquid structure does not matter."""
    from scipy.spatial.transform import Rotation
    rng = np.random.default_rng(seed)
    h2o = molecule("H2O")
    positions, numbers = [], []
    for centre in rng.uniform(0, box, (n_molecules, 3)):
        rot = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
        positions.extend(h2o.positions @ rot.T + centre)
        numbers.extend(h2o.numbers)
    cell = np.diag([box] * 3) if cell is None else cell
    return Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)


def openmm_context(model_path, atoms: Atoms, platform: str = "Reference", positions=None, **force_options):
    """A real OpenMM Context whose only force is create_force's TorchForce: (context, frame);
    force_options go to create_force (e.g. charge=, multiplicity=)."""
    import openmm
    from so3krates.openmm_plugin import create_force
    from so3krates.openmm_plugin.system import openmm_frame
    system = openmm.System()
    for m in atoms.get_masses():
        system.addParticle(m)
    frame = openmm_frame(atoms)
    periodic = frame.box_nm is not None
    if periodic:
        system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) for row in frame.box_nm))
    system.addForce(create_force(model_path, atomic_numbers=atoms.numbers, periodic=periodic, **force_options))
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName(platform))
    ctx.setPositions(frame.positions_nm if positions is None else positions)
    return ctx, frame


@pytest.fixture(scope="session")
def trained_ethanol(tmp_path_factory) -> Path:
    """A tiny float64 model trained on 100 GFN2-xTB ethanol frames for a fixed number of epochs
    (seeded: the same model whatever the machine's load): stiff bonds, as real models have."""
    from so3krates.cli import main as cli
    folder = tmp_path_factory.mktemp("trained")
    data = folder / "ethanol.xyz"
    assert cli(["sample", "ethanol", "-o", str(data), "--method", "gfn2-xtb", "--temperature", "500",
                "--frames", "100", "--stride", "10", "--seed", "1"]) == 0
    # Without ZBL: with it, 150 epochs of this tiny model leave a drift of ~0.5 meV/atom/ps at 0.5 fs
    # (the network has not yet learnt to balance ZBL's steep wall at bond lengths); without, ~0.01.
    config = folder / "no_zbl.yaml"
    config.write_text("model:\n  zbl_repulsion: false\n")
    assert cli(["train", "--train", str(data), "--out", str(folder / "run"), "--preset", "tiny",
                "--config", str(config), "--epochs", "150", "--lr", "5e-3", "--warmup-steps", "10", "--seed", "0",
                "--threads", "1", "--quiet"]) == 0
    export_model(folder / "run" / "best.ckpt", folder / "ethanol.pt", "float64")
    return folder / "ethanol.pt"


@pytest.fixture(scope="session")
def so3lr_file(tmp_path_factory) -> str:
    """`so3krates pretrained so3lr -o so3lr.pt` (float64, default radial table), through the CLI's main;
    once per session (test_so3lr.py, test_lammps_so3lr.py)."""
    from so3krates.cli import main
    path = tmp_path_factory.mktemp("so3lr") / "so3lr.pt"
    assert main(["pretrained", "so3lr", "-o", str(path)]) == 0
    return str(path)
