"""Issue 17, parts 2 and 4: openmm-ml conventions (a light entry point, precision words, device,
periodicity, ASE atoms -> Topology) and engine guard rails (device errors, the LAMMPS mass check,
validate's per-engine tolerances, NPT in every engine). Real OpenMM Contexts and real LAMMPS."""
from __future__ import annotations

import shlex
import subprocess
import sys
import textwrap

import numpy as np
import openmm
import pytest
import torch
from ase.build import molecule
from openmm import app, unit

from so3krates.ase import So3kratesCalculator
from so3krates.engines import EngineSpec, MDSettings, initial_state, run_md
from so3krates.export import export_model
from so3krates.structures import water_box

from conftest import random_network
from test_openmm import one_torch_thread  # noqa: F401  (autouse: one torch thread for in-process OpenMM)

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines17")
    out = {}
    for dtype in ("float64", "float32"):
        net = random_network("tiny", dtype="float64", seed=1, energy_scale=3.0, elements=(1, 6, 8))
        out[dtype] = str(folder / f"tiny_{dtype}.pt")
        export_model(net, out[dtype], dtype=dtype)   # the same weights in both files
    return out


# ---- openmm-ml: the entry point is light and never fails ---------------------------------------

HIDE_NVIDIA = textwrap.dedent("""
    import sys
    class HideNvidia:   # a CPU-only torch install: there is no `nvidia` package
        def find_spec(self, name, path=None, target=None):
            if name == "nvidia" or name.startswith("nvidia."):
                raise ImportError("No module named 'nvidia' (hidden by the test)")
    sys.meta_path.insert(0, HideNvidia())
""")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE_NVIDIA + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)


def test_entry_point_module_imports_nothing_heavy():
    proc = run_python("""
        import so3krates.openmm_plugin.mlpotential  # what openmm-ml loads for its entry point
        heavy = sorted(m for m in ("torch", "openmmtorch", "nvidia", "so3krates.export") if m in sys.modules)
        print("HEAVY", heavy)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HEAVY []" in proc.stdout, proc.stdout


def test_openmmml_works_for_other_models_with_nvidia_hidden(models):
    proc = run_python(f"""
        import openmm, openmmml
        names = openmmml.MLPotential._implFactories
        assert "so3krates" in names and "ani2x" in names, sorted(names)
        # nothing patched process-wide until a so3krates force is made
        assert not getattr(openmm.Force.__deepcopy__, "_so3krates", False)
        potential = openmmml.MLPotential("so3krates", modelPath={models['float64']!r})
        assert not getattr(openmm.Force.__deepcopy__, "_so3krates", False)
        print("OK")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK" in proc.stdout


def test_deepcopy_of_a_torch_force_is_patched_once_a_force_is_made(models):
    import copy

    from so3krates.openmm_plugin import create_force
    force = create_force(models["float64"], atomic_numbers=[8, 1, 1])
    assert getattr(openmm.Force.__deepcopy__, "_so3krates", False)
    copied = copy.deepcopy(force)
    assert copied.getName() == "so3krates" and copied.getOutputsForces()


# ---- precision and device -------------------------------------------------------------------------

@pytest.mark.parametrize("word", ["double", "float64", None])
def test_precision_words_that_match_the_model_are_accepted(models, word):
    from so3krates.openmm_plugin import create_force
    assert create_force(models["float64"], atomic_numbers=[8, 1, 1], precision=word).getName() == "so3krates"


def test_precision_single_on_float32_model_through_openmm_ml(models):
    from openmmml import MLPotential

    from so3krates.openmm_plugin.topology import ase_topology
    system = MLPotential("so3krates", modelPath=models["float32"]).createSystem(
        ase_topology(molecule("H2O")), precision="single")
    assert any(system.getForce(k).getName() == "so3krates" for k in range(system.getNumForces()))


def test_precision_mismatch_suggests_an_export_command_that_exists(models):
    from so3krates.cli import build_parser
    from so3krates.openmm_plugin import create_force
    with pytest.raises(ValueError, match="computes in float64") as info:
        create_force(models["float64"], atomic_numbers=[8, 1, 1], precision="single")
    command = str(info.value).split("`")[1]
    assert command.startswith("so3krates export") and "--dtype float32" in command
    args = build_parser().parse_args(shlex.split(command)[1:])   # the real parser accepts it
    assert args.dtype == "float32"
    with pytest.raises(ValueError, match="'single' or 'double'"):
        create_force(models["float64"], atomic_numbers=[8, 1, 1], precision="half")


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_error_in_every_python_entry_point(models):
    from openmmml import MLPotential

    from so3krates.openmm_plugin import create_force
    from so3krates.openmm_plugin.topology import ase_topology
    expected = r"device 'cuda.*': CUDA is not available on this machine.*use device 'cpu'"
    with pytest.raises(ValueError, match=expected):
        create_force(models["float64"], atomic_numbers=[8, 1, 1], device="cuda")
    with pytest.raises(ValueError, match=expected):
        MLPotential("so3krates", modelPath=models["float64"]).createSystem(ase_topology(molecule("H2O")),
                                                                          device="cuda:0")
    with pytest.raises(ValueError, match=expected):
        So3kratesCalculator(models["float64"], device="cuda")
    with pytest.raises(ValueError, match="not a device name"):
        So3kratesCalculator(models["float64"], device="gpu0")


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on a machine without CUDA")
def test_md_cli_device_cuda_without_cuda_is_a_one_line_error(models, tmp_path, capsys):
    from so3krates.cli import main
    rc = main(["md", models["float64"], "H2O", "--device", "cuda", "--steps", "2", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "so3krates md: error: device 'cuda': CUDA is not available" in err


def test_device_cpu_works_in_every_entry_point(models):
    from openmmml import MLPotential

    from so3krates.openmm_plugin.topology import ase_topology, openmm_positions
    atoms = molecule("CH3CH2OH")
    ref = atoms.copy()
    ref.calc = So3kratesCalculator(models["float64"], device="cpu")
    system = MLPotential("so3krates", modelPath=models["float64"]).createSystem(ase_topology(atoms), device="cpu")
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(openmm_positions(atoms))
    energy = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    from so3krates.openmm_plugin import KJ_PER_MOL_PER_EV
    assert energy / KJ_PER_MOL_PER_EV == pytest.approx(ref.get_potential_energy(), rel=1e-10)


def test_periodicity_follows_the_system_as_in_openmm_ml(models):
    from openmmml import MLPotential

    from so3krates.openmm_plugin.topology import ase_topology
    topology = ase_topology(water_box(20, seed=2))
    box = topology.getPeriodicBoxVectors()
    topology.setPeriodicBoxVectors(None)         # the Topology says nothing about a box ...
    system = openmm.System()
    for atom in topology.atoms():
        system.addParticle(atom.element.mass)
    system.setDefaultPeriodicBoxVectors(*box)
    nonbonded = openmm.NonbondedForce()          # ... but the System is periodic (PME)
    nonbonded.setNonbondedMethod(openmm.NonbondedForce.PME)
    for _ in range(system.getNumParticles()):
        nonbonded.addParticle(0.0, 0.1, 0.0)
    system.addForce(nonbonded)
    assert system.usesPeriodicBoundaryConditions()
    potential = MLPotential("so3krates", modelPath=models["float64"])
    potential._impl.addForces(topology, system, None, 0)
    force = [system.getForce(k) for k in range(system.getNumForces()) if system.getForce(k).getName() == "so3krates"]
    assert len(force) == 1 and force[0].usesPeriodicBoundaryConditions()


# ---- ASE atoms -> OpenMM Topology ---------------------------------------------------------------

def test_ase_topology_keeps_every_atom_with_unique_names_elements_and_bonds():
    from so3krates.openmm_plugin.topology import ase_topology
    atoms = molecule("CH3CH2OH")
    topology = ase_topology(atoms)
    names = [a.name for a in topology.atoms()]
    assert topology.getNumAtoms() == 9 and len(set(names)) == 9
    assert [a.element.atomic_number for a in topology.atoms()] == atoms.numbers.tolist()
    assert topology.getNumBonds() == 8 and topology.getPeriodicBoxVectors() is None
    water = water_box(8, seed=0)
    topology = ase_topology(water)
    assert [r.name for r in topology.residues()] == ["HOH"] * 8
    assert topology.getNumBonds() == 16
    box = topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer)
    assert np.prod([box[k][k] for k in range(3)]) * 1000 == pytest.approx(water.get_volume(), rel=1e-12)


def test_ase_topology_survives_a_pdb_round_trip_where_ase_pdb_does_not(tmp_path):
    import ase.io

    from so3krates.openmm_plugin.topology import ase_topology, openmm_positions
    atoms = molecule("CH3CH2OH")
    ase.io.write(str(tmp_path / "ase.pdb"), atoms)
    with pytest.warns(UserWarning, match="duplicate atom"):   # the trap the helper avoids: atoms merged
        assert app.PDBFile(str(tmp_path / "ase.pdb")).topology.getNumAtoms() < 9
    with open(tmp_path / "ours.pdb", "w") as fh:
        app.PDBFile.writeFile(ase_topology(atoms), openmm_positions(atoms), fh)
    assert app.PDBFile(str(tmp_path / "ours.pdb")).topology.getNumAtoms() == 9


# ---- LAMMPS: device keyword and the mass check --------------------------------------------------

def lammps_run(workdir, model, type_elements: str, pair_style: str = "pair_style so3krates"):
    from so3krates.lammps_pair import lmp_command, plugin_path
    from so3krates.lammps_pair.runtime import subprocess_env
    from so3krates.lammps_pair.system import lammps_system, write_data
    write_data(str(workdir / "water.lmp"), lammps_system(water_box(8, seed=0)))   # types: 1 = H, 2 = O
    script = (f"units metal\natom_style atomic\nboundary p p p\nnewton on\nplugin load {plugin_path()}\n"
              f"read_data water.lmp\n{pair_style}\npair_coeff * * {model} {type_elements}\nrun 0\n")
    (workdir / "in.lammps").write_text(script)
    return subprocess.run(lmp_command(1) + ["-nocite", "-in", "in.lammps", "-log", "none"], cwd=workdir,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)


def test_lammps_warns_when_a_type_mass_does_not_match_its_element(models, tmp_path):
    swapped = lammps_run(tmp_path, models["float64"], "O H")
    assert swapped.returncode == 0, swapped.stdout[-2000:] + swapped.stderr[-2000:]
    warnings = [line for line in (swapped.stdout + swapped.stderr).splitlines() if line.startswith("WARNING")
                and "so3krates" in line]
    assert len(warnings) == 2, warnings
    assert "atom type 1 has mass 1.008 but pair_coeff maps it to O (standard mass 15.999)" in warnings[0]
    assert "check the element order in pair_coeff" in warnings[0]
    right = lammps_run(tmp_path, models["float64"], "H O", "pair_style so3krates device cpu")
    assert right.returncode == 0, right.stdout[-2000:] + right.stderr[-2000:]
    assert "mass" not in "".join(line for line in right.stdout.splitlines() if line.startswith("WARNING"))
    assert "dtype, device      float64, cpu" in right.stdout   # the device keyword, cpu


def test_lammps_device_keyword_errors(models, tmp_path):
    bad = lammps_run(tmp_path, models["float64"], "H O", "pair_style so3krates device tpu")
    assert bad.returncode > 0 and "write 'device cpu', 'device cuda'" in bad.stdout + bad.stderr
    if NO_CUDA:
        gpu = lammps_run(tmp_path, models["float64"], "H O", "pair_style so3krates device cuda")
        errors = [line for line in (gpu.stdout + gpu.stderr).splitlines() if line.startswith("ERROR")]
        assert gpu.returncode > 0 and errors and "CUDA is not available on this machine" in errors[0]


# ---- validate: tolerances by each engine's model dtype ------------------------------------------

def test_tolerances_follow_the_less_precise_model():
    from so3krates.validation.validate import Tolerances
    assert Tolerances.for_engine("float64", "float64") == Tolerances.for_dtype("float64")
    assert Tolerances.for_engine("float64", "float32") == Tolerances.for_dtype("float32")
    assert Tolerances.for_engine("float32", "float64") == Tolerances.for_dtype("float32")


def test_validate_float32_engine_against_float64_reference_passes(models):
    from so3krates.validation.validate import Tolerances, ValidationSettings, validate
    specs = [EngineSpec("ase"), EngineSpec("openmm", model=models["float32"])]
    report = validate(models["float64"], molecule("CH3CH2OH"), specs,
                      ValidationSettings(steps=20, log_every=5, traj_every=5), progress=False, log=lambda *a: None)
    label = specs[1].label
    assert report["engine_tolerances"][label]["max_abs_dF_meV_per_A"] == Tolerances.for_dtype("float32").max_abs_dF_meV_per_A
    assert report["engine_tolerances"]["ase"] == report["tolerances"]
    # float32 round-off is far above the float64 limits, so the float64 tolerances would have failed it
    assert report["step0"][label]["max_abs_dF_meV_per_A"] > Tolerances.for_dtype("float64").max_abs_dF_meV_per_A
    assert report["passed"], report["failures"]


# ---- NPT ----------------------------------------------------------------------------------------

NPT = dict(ensemble="npt", temperature=300.0, timestep_fs=0.5, steps=50, log_every=5, traj_every=25, seed=1,
           pressure_bar=1000.0, barostat_period_fs=50.0)


@pytest.mark.parametrize("engine", ["openmm", "lammps", "ase"])
def test_npt_changes_the_volume(models, engine):
    atoms = initial_state(water_box(20, seed=2), 300.0, 1)
    steps = 100 if engine == "openmm" else 50   # OpenMM tries a volume move every 25 steps
    result = run_md(EngineSpec(engine), models["float64"], atoms, MDSettings(**{**NPT, "steps": steps}),
                    progress=False)
    volumes = np.asarray(result.volume_A3)
    assert len(volumes) == len(result.step) == steps // 5 + 1
    assert volumes[0] == pytest.approx(atoms.get_volume(), rel=1e-9)
    assert np.abs(volumes / volumes[0] - 1).max() > 1e-6, volumes
    assert np.isfinite(result.total_eV).all()
    # the frames carry the box of their step
    assert result.frames[-1].get_volume() != pytest.approx(atoms.get_volume(), rel=1e-9)


def test_npt_needs_a_periodic_cell_and_logs_the_volume(models, tmp_path, capsys):
    from so3krates.cli import main
    rc = main(["md", models["float64"], "H2O", "--ensemble", "npt", "--steps", "2", "--quiet"])
    assert rc == 1 and "npt needs a fully periodic cell" in capsys.readouterr().err
    from ase.io import write
    write(str(tmp_path / "water.xyz"), water_box(20, seed=2))
    log = tmp_path / "npt.csv"
    rc = main(["md", models["float64"], str(tmp_path / "water.xyz"), "--engine", "openmm", "--ensemble", "npt",
               "--pressure", "500", "--steps", "50", "--log-every", "25", "--log", str(log), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    rows = log.read_text().splitlines()
    assert rows[0].endswith(",volume_A3") and len(rows) == 1 + 3
    assert all(float(row.split(",")[-1]) > 0 for row in rows[1:])
