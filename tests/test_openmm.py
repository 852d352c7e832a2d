"""OpenMM integration through real Contexts: TorchForce, openmm-ml, ML/MM, MD, bad input."""
import numpy as np
import openmm
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from openmm import app, unit

from so3krates.ase import So3kratesCalculator
from so3krates.export import export_model
from so3krates.openmm_plugin import KJ_PER_MOL_PER_EV, create_force
from so3krates.openmm_plugin.system import openmm_frame
from so3krates.structures import water_box

from conftest import openmm_context, random_network, triclinic

EV_PER_A_IN_KJ_PER_MOL_PER_NM = KJ_PER_MOL_PER_EV * 10.0


def make_model(path, dtype="float64", elements=(1, 6, 8), scale=3.0, **overrides):
    net = random_network("tiny", dtype=dtype, seed=1, energy_scale=scale, elements=elements, **overrides)
    export_model(net, path, dtype=dtype)
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """openmm-torch runs the model in this process: with intra-op threads on a small, shared machine
    every tiny-model call pays thread wake-ups (10x slower MD here). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("openmm") / "tiny64.pt")


@pytest.fixture(scope="module")
def model32(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("openmm") / "tiny32.pt", dtype="float32")


def context_for(model_path, atoms, platform="Reference", positions=None):
    return openmm_context(model_path, atoms, platform, positions)


def energy_forces(ctx, frame):
    state = ctx.getState(getEnergy=True, getForces=True)
    e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV
    f = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return e, frame.to_ase(np.asarray(f) / EV_PER_A_IN_KJ_PER_MOL_PER_NM)


def reference(model_path, atoms):
    atoms = atoms.copy()
    atoms.calc = So3kratesCalculator(model_path)
    return atoms.get_potential_energy(), atoms.get_forces()


STRUCTURES = {
    "ethanol": lambda: molecule("CH3CH2OH"),
    "water_orthorhombic": lambda: water_box(20, seed=2),
    "water_triclinic": lambda: triclinic(water_box(20, seed=3), rotate=False),
}


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_reference_platform_matches_ase_to_1e10(model, name):
    atoms = STRUCTURES[name]()
    e_ref, f_ref = reference(model, atoms)
    e, f = energy_forces(*context_for(model, atoms, "Reference"))
    assert abs(e - e_ref) <= 1e-10 * abs(e_ref)
    assert np.abs(f - f_ref).max() <= 1e-10 * np.abs(f_ref).max()
    assert np.abs(f_ref).max() > 1e-3


@pytest.mark.parametrize("name", ["ethanol", "water_triclinic"])
def test_cpu_platform_hands_double_positions_so_a_float64_model_is_exact(model, name):
    # The CPU platform (OpenMM 8.6.1) keeps positions in double precision (it shares the Reference
    # platform's arrays; only its own nonbonded kernels work on a float32 copy), and openmm-torch
    # reads those: a float64 model therefore gives the ASE calculator's numbers to 1e-10 here too.
    atoms = STRUCTURES[name]()
    e_ref, f_ref = reference(model, atoms)
    e, f = energy_forces(*context_for(model, atoms, "CPU"))
    assert abs(e - e_ref) <= 1e-10 * abs(e_ref)
    assert np.abs(f - f_ref).max() <= 1e-10 * np.abs(f_ref).max()


def test_float32_model_on_cpu_platform_agrees_to_float32_precision(model32):
    # A float32 model sees the same float32-rounded positions in both engines; what differs is the
    # order of float32 operations (openmm-torch freezes the module: constant folding, fused ops), so
    # the tolerance is float32 round-off: ~1e-7 relative per operation, a few 1e-6 on the total
    # energy (~-8,000 eV here, summed in float64) and ~1e-4 of the largest force component.
    atoms = water_box(20, seed=2)
    e_ref, f_ref = reference(model32, atoms)
    e, f = energy_forces(*context_for(model32, atoms, "CPU"))
    assert abs(e - e_ref) <= 5e-6 * abs(e_ref)
    assert np.abs(f - f_ref).max() <= 1e-4 * np.abs(f_ref).max()
    assert np.abs(f_ref).max() > 1e-3


@pytest.mark.parametrize("name", ["water_orthorhombic", "water_triclinic"])
def test_unwrapped_positions_give_the_wrapped_result(model, name):
    atoms = STRUCTURES[name]()
    ctx, frame = context_for(model, atoms)
    e_wrapped, f_wrapped = energy_forces(ctx, frame)
    shifts = np.random.default_rng(0).integers(-2, 3, (len(atoms), 3)) @ frame.box_nm
    ctx.setPositions(frame.positions_nm + shifts)
    e, f = energy_forces(ctx, frame)
    assert e == pytest.approx(e_wrapped, rel=1e-12)
    np.testing.assert_allclose(f, f_wrapped, atol=1e-10)


def topology_from_atoms(atoms, box_nm=None):
    top = app.Topology()
    chain = top.addChain()
    residue = top.addResidue("MOL", chain)
    for i, z in enumerate(atoms.numbers):
        top.addAtom(f"{atoms[i].symbol}{i}", app.Element.getByAtomicNumber(int(z)), residue)
    if box_nm is not None:
        top.setPeriodicBoxVectors([openmm.Vec3(*row) for row in box_nm] * unit.nanometer)
    return top


def test_openmm_ml_create_system_from_topology(model):
    from openmmml import MLPotential
    atoms = molecule("CH3CH2OH")
    system = MLPotential("so3krates", modelPath=model).createSystem(topology_from_atoms(atoms))
    assert any(isinstance(f, openmm.Force) and f.getName() == "so3krates" for f in system.getForces())
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(atoms.positions / 10.0)
    e, f = energy_forces(ctx, openmm_frame(atoms))
    e_ref, f_ref = reference(model, atoms)
    assert e == pytest.approx(e_ref, rel=1e-10)
    np.testing.assert_allclose(f, f_ref, atol=1e-9)


@pytest.fixture(scope="module")
def solvated():
    """TIP3P water modelled by OpenMM; the first water molecule becomes the ML region."""
    ff = app.ForceField("amber14/tip3p.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(ff, boxSize=openmm.Vec3(2.0, 2.0, 2.0) * unit.nanometer)
    mm_system = ff.createSystem(modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.8 * unit.nanometer,
                                constraints=app.HBonds, rigidWater=True)
    ml_atoms = [a.index for a in next(modeller.topology.residues()).atoms()]
    return modeller, mm_system, ml_atoms


def test_mixed_system_ml_atoms_feel_so3krates_and_mm_atoms_keep_their_force_field(model, solvated):
    from openmmml import MLPotential
    modeller, mm_system, ml_atoms = solvated
    mixed = MLPotential("so3krates", modelPath=model).createMixedSystem(modeller.topology, mm_system, ml_atoms,
                                                                      forceGroup=31)
    ml = set(ml_atoms)

    def constrained_pairs(system):
        return {tuple(sorted(system.getConstraintParameters(i)[:2])) for i in range(system.getNumConstraints())}
    assert not [p for p in constrained_pairs(mixed) if set(p) <= ml], "constraints inside the ML region remain"
    assert constrained_pairs(mixed) == {p for p in constrained_pairs(mm_system) if not set(p) <= ml}

    assert {f.getForceGroup() for f in mixed.getForces() if f.getName() == "so3krates"} == {31}
    assert all(f.getForceGroup() != 31 for f in mixed.getForces() if f.getName() != "so3krates")
    group = 31
    positions = modeller.positions
    ctx = openmm.Context(mixed, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions)
    state = ctx.getState(getEnergy=True, getForces=True, groups={group})
    f_ml = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    others = [i for i in range(mixed.getNumParticles()) if i not in ml]
    assert np.abs(f_ml[others]).max() == 0.0
    pos_nm = np.array(positions.value_in_unit(unit.nanometer))
    box = np.array([[v.value_in_unit(unit.nanometer) for v in vec] for vec in modeller.topology.getPeriodicBoxVectors()])
    water = Atoms("OHH", positions=pos_nm[ml_atoms] * 10.0, cell=box * 10.0, pbc=True)
    e_ref, f_ref = reference(model, water)
    e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV
    assert e == pytest.approx(e_ref, rel=1e-10)
    np.testing.assert_allclose(f_ml[ml_atoms] / EV_PER_A_IN_KJ_PER_MOL_PER_NM, f_ref, atol=1e-9)

    # MM atoms: every force but so3krates acts on them exactly as in the pure MM system.
    mm_groups = {f.getForceGroup() for f in mixed.getForces()} - {group}
    f_mixed = ctx.getState(getForces=True, groups=mm_groups).getForces(asNumpy=True).value_in_unit(
        unit.kilojoule_per_mole / unit.nanometer)
    mm_ctx = openmm.Context(mm_system, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
    mm_ctx.setPositions(positions)
    f_mm = mm_ctx.getState(getForces=True).getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    np.testing.assert_allclose(f_mixed[others], f_mm[others], atol=1e-6 * np.abs(f_mm).max())

    # and it runs: a few steps keep the ML water's geometry (no constraints left inside it)
    ctx.getIntegrator().step(5)
    after = ctx.getState(getPositions=True, getEnergy=True)
    assert np.isfinite(after.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    assert np.abs(after.getPositions(asNumpy=True).value_in_unit(unit.nanometer)[ml_atoms]
                  - pos_nm[ml_atoms]).max() > 0


def test_mixed_system_with_interpolation_runs(model, solvated):
    from openmmml import MLPotential
    modeller, mm_system, ml_atoms = solvated
    mixed = MLPotential("so3krates", modelPath=model).createMixedSystem(modeller.topology, mm_system, ml_atoms,
                                                                      interpolate=True)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.0005 * unit.picosecond)
    ctx = openmm.Context(mixed, integrator, openmm.Platform.getPlatformByName("CPU"))
    ctx.setPositions(modeller.positions)
    energies = []
    for lam in (0.0, 1.0):
        ctx.setParameter("lambda_interpolate", lam)
        energies.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    assert energies[0] != pytest.approx(energies[1])
    integrator.step(5)
    assert np.isfinite(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))


@pytest.mark.slow
def test_nve_energy_drift_is_small(tmp_path):
    """VerletIntegrator, 0.5 fs, 2 ps on ethanol (float64 model, Reference platform).

    A random-weight model does not bind atoms: scaled to physical forces (~1 eV/A) it blows the
    molecule apart, and scaled down it leaves nearly free atoms with nothing to conserve. So the
    so3krates force is scaled to ~1 eV/A and harmonic MM bonds (amber-like stiffness, C-H period
    ~11 fs) hold the molecule together: the run then exercises the so3krates energy/force
    consistency on a bound, vibrating molecule."""
    from ase.neighborlist import natural_cutoffs, neighbor_list
    from so3krates.engines import MDResult, initial_state
    from so3krates.openmm_plugin.system import build_system
    from so3krates.openmm_plugin.units import NM_PER_PS_PER_ASE_VELOCITY
    from so3krates.validation.metrics import energy_conservation

    # Without ZBL: an untrained network does not balance its repulsion (~10 eV/A at bond lengths).
    # Full projections: the random model these bounds were set with. Per-head projections start from
    # the reference's larger weights (std 1/sqrt(F/H) against nn.Linear's 1/sqrt(3F)), a rougher
    # random landscape: 0.10 meV/atom/ps at scale 20 (forces = -grad is tested in test_model.py).
    model = make_model(tmp_path / "strong.pt", scale=40.0, zbl_repulsion=False, qkv_projections="full")
    atoms = initial_state(molecule("CH3CH2OH"), 300.0, seed=0)
    e_ref, f_ref = reference(model, atoms)
    assert 0.5 < np.abs(f_ref).max() < 3.0  # physical force scale, eV/A
    system, frame = build_system(model, atoms)
    bonds = openmm.HarmonicBondForce()
    first, second, distance = neighbor_list("ijd", atoms, natural_cutoffs(atoms, mult=1.2))
    for i, j, d in zip(first, second, distance):
        if i < j:
            bonds.addBond(int(i), int(j), d / 10.0, 2.5e5)  # nm, kJ/mol/nm^2
    assert bonds.getNumBonds() == 8  # ethanol: C-C, C-O, 5 C-H, O-H
    bonds.setForceGroup(1)  # so3krates stays in group 0
    system.addForce(bonds)
    dt_ps, steps, every = 0.0005, 4000, 20
    integrator = openmm.VerletIntegrator(dt_ps)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(frame.positions_nm)
    ctx.setVelocities(atoms.get_velocities() * NM_PER_PS_PER_ASE_VELOCITY)
    result = MDResult(engine="openmm", timestep_fs=0.5, num_atoms=len(atoms))
    for step in range(0, steps + 1, every):
        if step:
            integrator.step(every)
        state = ctx.getState(getEnergy=True)
        result.add(step, state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV,
                   state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV)
    final = ctx.getState(getPositions=True, getForces=True, groups={0})
    c = energy_conservation(result)
    print(f"OpenMM NVE drift {c['drift_meV_per_atom_per_ps']:.2e} meV/atom/ps over {c['duration_ps']} ps, "
          f"fluctuation {c['fluctuation_meV_per_atom']:.2e} meV/atom")
    assert c["duration_ps"] == pytest.approx(2.0)
    assert abs(c["drift_meV_per_atom_per_ps"]) < 0.05      # bound stated in docs/openmm.md
    assert c["fluctuation_to_kinetic_ratio"] < 0.05
    # still a bound molecule at the end, and the so3krates forces were at work throughout
    pos = final.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    assert np.linalg.norm(pos - pos.mean(0), axis=1).max() < 4.0
    f_so3krates = final.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    assert np.abs(f_so3krates).max() / EV_PER_A_IN_KJ_PER_MOL_PER_NM > 0.3
    assert np.std(result.kinetic_eV) > 0.01 * np.mean(result.kinetic_eV)


def test_md_engine_follows_the_ase_velocity_verlet_trajectory(model):
    """Same initial positions and velocities, same masses: OpenMM's VerletIntegrator (leapfrog,
    velocities reported half a step behind the positions in OpenMM 8.6.1) started at v(-dt/2)
    and read back at v(t) follows ASE's velocity Verlet to round-off."""
    from so3krates.engines import MDSettings, initial_state
    from so3krates.openmm_plugin.md import run_md
    from so3krates.ase_engine import ENGINE as ase_engine
    atoms = initial_state(molecule("CH3CH2OH"), 300.0, seed=0)
    settings = MDSettings(steps=40, timestep_fs=0.5, log_every=5, traj_every=20)
    ours, ref = run_md(model, atoms, settings, progress=False), ase_engine.run_md(model, atoms, settings, progress=False)
    assert ours.step == ref.step and ours.frame_steps == ref.frame_steps == [0, 20, 40]
    # 1e-11: the round-off difference grows faster with ZBL's steep short-range forces
    np.testing.assert_allclose(ours.potential_eV, ref.potential_eV, rtol=1e-11)
    np.testing.assert_allclose(ours.kinetic_eV, ref.kinetic_eV, rtol=1e-7)
    for a, b in zip(ours.frames, ref.frames):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-8)
        np.testing.assert_allclose(a.get_velocities(), b.get_velocities(), atol=1e-8)
    moved = np.abs(ref.frames[-1].positions - ref.frames[0].positions).max()
    assert moved > 1e-2  # the atoms did move: the comparison is not of static frames


def test_md_cli_openmm_engine_nvt_writes_log_and_trajectory(model, tmp_path):
    from ase.io import read
    from so3krates.cli import main
    log, traj = tmp_path / "md.csv", tmp_path / "md.xyz"
    rc = main(["md", model, "ethanol", "--engine", "openmm", "--ensemble", "nvt", "--temperature", "300",
               "--timestep", "0.5", "--steps", "40", "--log-every", "10", "--traj-every", "20",
               "--log", str(log), "--traj", str(traj), "--quiet"])
    assert rc == 0
    rows = log.read_text().splitlines()
    assert rows[0].startswith("step,time_ps,potential_eV,kinetic_eV") and len(rows) == 1 + 5
    frames = read(str(traj), index=":")
    assert [f.info["step"] for f in frames] == [0, 20, 40]
    assert not frames[0].pbc.any() and frames[0].get_chemical_formula() == "C2H6O"
    assert np.abs(frames[-1].positions - frames[0].positions).max() > 1e-3


def test_interpolated_energy_is_linear_in_lambda(model, solvated):
    from openmmml import MLPotential
    modeller, mm_system, ml_atoms = solvated
    mixed = MLPotential("so3krates", modelPath=model).createMixedSystem(modeller.topology, mm_system, ml_atoms,
                                                                      interpolate=True)
    ctx = openmm.Context(mixed, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(modeller.positions)
    energy = {}
    for lam in (0.0, 0.5, 1.0):
        ctx.setParameter("lambda_interpolate", lam)
        energy[lam] = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert energy[0.5] == pytest.approx(0.5 * (energy[0.0] + energy[1.0]), rel=1e-10)
    # lambda = 1 adds the so3krates energy of the ML water and drops its MM internal energy
    assert abs(energy[1.0] - energy[0.0]) > 1.0


def test_element_missing_from_the_model_is_a_clear_error(tmp_path, model):
    atoms = molecule("CH3CONH2")  # has N; the model knows H, C, O
    with pytest.raises(ValueError, match=r"element\(s\) N \(atom \d+.*not in the model.*knows H, C, O"):
        create_force(model, topology_from_atoms(atoms))


def test_box_too_small_is_a_clear_error(model):
    atoms = water_box(4, seed=0)  # ~5 A box; tiny model cutoff 4 A needs >= 4 A heights: shrink it
    box = np.diag([0.35, 2.0, 2.0])
    with pytest.raises(ValueError, match=r"periodic box too small.*0\.35.*cutoff is 4\.0 A"):
        create_force(model, topology_from_atoms(atoms, box_nm=box))


def test_skewed_box_is_checked_by_its_heights_not_its_edge_lengths(model):
    # Every edge is 2 nm long, but c leans over so far that the height along c is 0.3 nm.
    box = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.9, 0.9, 0.3]])
    with pytest.raises(ValueError, match=r"periodic box too small.*0\.3000 nm.*cutoff is 4\.0 A"):
        create_force(model, topology_from_atoms(molecule("H2O"), box_nm=box))


def test_element_missing_through_openmm_ml_is_a_clear_error(model):
    from openmmml import MLPotential
    with pytest.raises(ValueError, match=r"element\(s\) N .*not in the model"):
        MLPotential("so3krates", modelPath=model).createSystem(topology_from_atoms(molecule("CH3CONH2")))


def test_foreign_torchscript_file_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 1)), str(path))
    with pytest.raises(ValueError, match="no so3krates metadata"):
        create_force(str(path), atomic_numbers=[1, 1])
    from openmmml import MLPotential
    with pytest.raises(ValueError, match="no so3krates metadata"):
        MLPotential("so3krates", modelPath=str(path))


def test_mlmm_example_runs(tmp_path):
    """examples/openmm_mlmm_water.py end to end (untrained model, 20 steps): createMixedSystem,
    minimisation, Langevin dynamics on the CPU platform."""
    import subprocess
    import sys
    from pathlib import Path
    example = Path(__file__).resolve().parents[1] / "examples" / "openmm_mlmm_water.py"
    proc = subprocess.run([sys.executable, str(example), "--ps", "0.01", "--box", "2.0"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "9 so3krates, the rest TIP3P" in proc.stdout
    assert "done: 0.01 ps" in proc.stdout
