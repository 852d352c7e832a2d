"""SO3LR, the pretrained model (issue 18): the exported file against So3krates-torch's
SO3LRCalculator (fixture tests/data/so3lr_reference.json, written by
benchmarks/so3lr/reference_values.py in the peers' environment), the engines against each other,
and the total charge / multiplicity inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from so3krates.ase import So3kratesCalculator

FIXTURE = Path(__file__).parent / "data" / "so3lr_reference.json"
EV_PER_KJ_MOL = 1 / 96.48533212331002


def reference_cases():
    return json.loads(FIXTURE.read_text())["cases"]


def case_atoms(case) -> Atoms:
    return Atoms(numbers=case["numbers"], positions=case["positions"], cell=case["cell"], pbc=case["pbc"])


@pytest.mark.parametrize("name", [c["name"] for c in reference_cases()])
def test_so3lr_matches_so3krates_torch(so3lr_file, name):
    """Energies to 1e-5 eV and forces to 1e-4 eV/A of SO3LRCalculator (float64, its defaults), on
    molecules with all eight elements, charged / high-spin acetamide and 192 periodic waters."""
    case = next(c for c in reference_cases() if c["name"] == name)
    atoms = case_atoms(case)
    atoms.calc = So3kratesCalculator(so3lr_file, charge=case["charge"], multiplicity=case["multiplicity"])
    assert abs(atoms.get_potential_energy() - case["energy"]) < 1e-5
    assert np.abs(atoms.get_forces() - np.array(case["forces"])).max() < 1e-4


def test_fixture_covers_all_elements_charge_spin_and_periodic_water():
    cases = reference_cases()
    assert set().union(*(c["numbers"] for c in cases)) == {1, 6, 7, 8, 9, 15, 16, 17}
    assert {(c["charge"], c["multiplicity"]) for c in cases} >= {(0, 1), (1, 2), (0, 3)}
    assert any(all(c["pbc"]) and len(c["numbers"]) >= 192 for c in cases)


def test_charge_and_multiplicity_reach_the_model_through_atoms_info(so3lr_file):
    """atoms.info["charge"] / ["spin"] (the multiplicity) change the energy exactly as the calculator
    arguments do, and as the reference's values for the cation doublet."""
    case = next(c for c in reference_cases() if c["name"] == "acetamide_cation_doublet")
    atoms = case_atoms(case)
    atoms.calc = So3kratesCalculator(so3lr_file)
    neutral = atoms.get_potential_energy()
    atoms.info.update(charge=1, spin=2)
    cation = atoms.get_potential_energy()
    assert abs(cation - case["energy"]) < 1e-5
    assert abs(cation - neutral) > 0.1


def test_charge_given_to_a_model_without_that_input_is_an_error(export_random):
    path = export_random("tiny")
    with pytest.raises(ValueError, match="charge=1 given, but this model has no charge input"):
        So3kratesCalculator(path, charge=1)
    from so3krates.openmm_plugin import create_force
    with pytest.raises(ValueError, match="multiplicity=2 given, but this model has no multiplicity input"):
        create_force(path, atomic_numbers=[8, 1, 1], multiplicity=2)
    # atoms.info of a model without these inputs is ignored
    atoms = molecule("H2O")
    atoms.info.update(charge=1, spin=2)
    atoms.calc = So3kratesCalculator(path)
    plain = molecule("H2O")
    plain.calc = So3kratesCalculator(path)
    assert atoms.get_potential_energy() == plain.get_potential_energy()


def test_info_shows_long_range_cutoff_inputs_and_source(so3lr_file, capsys):
    from so3krates.cli import main
    assert main(["info", so3lr_file]) == 0
    out = capsys.readouterr().out
    assert "long-range cutoff  12.0 A (electrostatics, dispersion)" in out
    assert "total charge (e), spin multiplicity 2S+1" in out
    assert "H(1) C(6) N(7) O(8) F(9) P(15) S(16) Cl(17)" in out
    assert "so3krates-torch 0.2.1" in out and "10.1021/jacs.5c09558" in out


def openmm_energy_forces(path, atoms, **force_options):
    from conftest import openmm_context
    ctx, frame = openmm_context(path, atoms, **force_options)
    state = ctx.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy()._value * EV_PER_KJ_MOL
    forces = np.asarray(state.getForces(asNumpy=True)._value) * EV_PER_KJ_MOL / 10
    return energy, frame.to_ase(forces)


@pytest.mark.parametrize("name", ["acetamide_cation_doublet",
                                  pytest.param("water_box_192", marks=pytest.mark.slow)])
def test_openmm_agrees_with_ase(so3lr_file, name):
    """The same file in OpenMM (TorchForce, built-in long-range search) and in ASE (vesin pairs):
    1e-8 relative in float64, with the charge and multiplicity passed to create_force."""
    case = next(c for c in reference_cases() if c["name"] == name)
    atoms = case_atoms(case)
    if not atoms.pbc.any():
        atoms.center(vacuum=6.0)
    atoms.calc = So3kratesCalculator(so3lr_file, charge=case["charge"], multiplicity=case["multiplicity"])
    energy, forces = openmm_energy_forces(so3lr_file, atoms, charge=case["charge"],
                                          multiplicity=case["multiplicity"])
    assert abs(energy - atoms.get_potential_energy()) <= 1e-8 * abs(energy)
    assert np.abs(forces - atoms.get_forces()).max() <= 1e-8 * np.abs(atoms.get_forces()).max() + 1e-10


def test_openmm_box_smaller_than_the_long_range_cutoff_is_a_clear_error(so3lr_file):
    import openmm.app as app
    from openmm import Vec3, unit
    from so3krates.openmm_plugin import create_force
    topology = app.Topology()
    chain = topology.addChain()
    residue = topology.addResidue("HOH", chain)
    for name, element in (("O", app.element.oxygen), ("H1", app.element.hydrogen), ("H2", app.element.hydrogen)):
        topology.addAtom(name, element, residue)
    topology.setPeriodicBoxVectors([Vec3(1.0, 0, 0), Vec3(0, 1.0, 0), Vec3(0, 0, 1.0)] * unit.nanometer)
    with pytest.raises(ValueError, match="long-range cutoff .* is 12.0 A; use a box at least 1.20 nm"):
        create_force(so3lr_file, topology)


@pytest.mark.slow
def test_openmm_ml_mm_with_an_so3lr_region_and_create_system_charge(so3lr_file):
    """MLPotential('so3krates').createMixedSystem with SO3LR on one water of a TIP3P box: the ML
    force acts on the ML water only and equals ASE's SO3LR energy of that water in the same cell;
    createSystem(..., charge=, multiplicity=) reaches the model."""
    import openmm
    import openmm.app as app
    from openmm import unit
    from openmmml import MLPotential
    ff = app.ForceField("amber14/tip3p.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(ff, boxSize=openmm.Vec3(2.5, 2.5, 2.5) * unit.nanometer)
    mm_system = ff.createSystem(modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.8 * unit.nanometer,
                                constraints=None, rigidWater=False)
    ml_atoms = [a.index for a in next(modeller.topology.residues()).atoms()]
    potential = MLPotential("so3krates", modelPath=so3lr_file)
    mixed = potential.createMixedSystem(modeller.topology, mm_system, ml_atoms, forceGroup=31)
    ctx = openmm.Context(mixed, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(modeller.positions)
    state = ctx.getState(getEnergy=True, getForces=True, groups={31})
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    others = [i for i in range(mixed.getNumParticles()) if i not in set(ml_atoms)]
    assert np.abs(forces[others]).max() == 0.0 and np.abs(forces[ml_atoms]).max() > 0
    pos = np.array(modeller.positions.value_in_unit(unit.nanometer))[ml_atoms] * 10
    box = np.array([[v.value_in_unit(unit.nanometer) for v in vec]
                    for vec in modeller.topology.getPeriodicBoxVectors()]) * 10
    water = Atoms("OHH", positions=pos, cell=box, pbc=True)
    water.calc = So3kratesCalculator(so3lr_file)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * EV_PER_KJ_MOL
    assert energy == pytest.approx(water.get_potential_energy(), rel=1e-10)

    # the whole box as one SO3LR system is too slow here: one water as the topology
    topology = app.Topology()
    residue = topology.addResidue("HOH", topology.addChain())
    for name, element in (("O", app.element.oxygen), ("H1", app.element.hydrogen), ("H2", app.element.hydrogen)):
        topology.addAtom(name, element, residue)
    energies = []
    for charge, multiplicity in ((0, 1), (1, 2)):
        system = potential.createSystem(topology, charge=charge, multiplicity=multiplicity)
        c = openmm.Context(system, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
        c.setPositions(pos / 10)
        energies.append(c.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        molecule_atoms = Atoms("OHH", positions=pos)
        molecule_atoms.calc = So3kratesCalculator(so3lr_file, charge=charge, multiplicity=multiplicity)
        assert energies[-1] * EV_PER_KJ_MOL == pytest.approx(molecule_atoms.get_potential_energy(), rel=1e-10)
    assert abs(energies[1] - energies[0]) * EV_PER_KJ_MOL > 0.1
