"""ML/MM in OpenMM: one molecule modelled by so3krates, the water around it by TIP3P.

    python examples/openmm_mlmm_water.py [MODEL.pt] [--ps 2]

Without a model file, a small untrained model (H, C, O) is exported on the fly, which shows the
plumbing but not chemistry (its random energy surface distorts the molecule): pass a trained
model (e.g. demo_output/ethanol_float32.pt from `make demo`) for meaningful dynamics. About 30 s
for the default 2 ps on one core. The solute is ethanol from ASE; the water is added with
OpenMM's Modeller; openmm-ml's createMixedSystem removes the solute's (empty) MM terms and adds the
so3krates force; the solute-water interaction is TIP3P Lennard-Jones only (the solute carries no
MM charges here: mechanical embedding of a neutral, uncharged solute).
"""
import argparse
import tempfile

import numpy as np
import openmm
from ase.build import molecule
from openmm import app, unit

import so3krates.openmm_plugin  # noqa: F401  (registers the openmm-torch plugin and MLPotential('so3krates'))
from openmmml import MLPotential


def solute_forcefield_xml(atoms) -> str:
    """A residue template for the solute: atom types with LJ parameters (OPLS-like), no charges,
    no bonded terms (so3krates models the solute's internal energy)."""
    lj = {"H": (0.25, 0.125), "C": (0.35, 0.276), "O": (0.31, 0.711)}  # sigma nm, epsilon kJ/mol
    types = "".join(f'<Type name="S{s}" class="S{s}" element="{s}" mass="{m:.4f}"/>'
                    for s, m in {a.symbol: a.mass for a in atoms}.items())
    residue = "".join(f'<Atom name="{a.symbol}{i}" type="S{a.symbol}" charge="0"/>' for i, a in enumerate(atoms))
    nb = "".join(f'<Atom type="S{s}" charge="0" sigma="{lj[s][0]}" epsilon="{lj[s][1]}"/>' for s in {a.symbol for a in atoms})
    return (f'<ForceField><AtomTypes>{types}</AtomTypes><Residues><Residue name="MOL">{residue}</Residue>'
            f'</Residues><NonbondedForce coulomb14scale="0.833333" lj14scale="0.5">{nb}</NonbondedForce></ForceField>')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--ps", type=float, default=2.0, help="simulated time in ps")
    ap.add_argument("--box", type=float, default=2.2, help="water box edge in nm")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the model (a 9-atom ML region runs fastest on one)")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)

    model = args.model
    if model is None:
        from so3krates.export import export_model
        from so3krates.model import So3krates
        from so3krates.model.config import preset
        torch.manual_seed(0)
        net = So3krates(preset("tiny", elements=[1, 6, 8]))
        with torch.no_grad():
            net.energy_scale.fill_(0.5)
        with tempfile.NamedTemporaryFile(suffix=".pt", delete=False) as fh:
            model = fh.name
        export_model(net, model, "float32")
        print(f"no model given: exported an UNTRAINED demo model to {model}; it shows the plumbing only "
              "(the molecule's geometry will be meaningless). Pass a trained model for chemistry.")

    solute = molecule("CH3CH2OH")
    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    for i, a in enumerate(solute):
        topology.addAtom(f"{a.symbol}{i}", app.Element.getBySymbol(a.symbol), residue)
    ff = app.ForceField("amber14/tip3p.xml")
    with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as fh:
        fh.write(solute_forcefield_xml(solute))
    ff.loadFile(fh.name)
    modeller = app.Modeller(topology, (solute.positions - solute.positions.mean(0)) * 0.1 * unit.nanometer
                            + openmm.Vec3(args.box / 2, args.box / 2, args.box / 2) * unit.nanometer)
    modeller.addSolvent(ff, boxSize=openmm.Vec3(args.box, args.box, args.box) * unit.nanometer)
    mm_system = ff.createSystem(modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.9 * unit.nanometer,
                                constraints=app.HBonds, rigidWater=True)
    ml_atoms = list(range(len(solute)))
    system = MLPotential("so3krates", modelPath=model).createMixedSystem(modeller.topology, mm_system, ml_atoms)
    print(f"{modeller.topology.getNumAtoms()} atoms: {len(ml_atoms)} so3krates, the rest TIP3P")

    dt = 0.5 * unit.femtosecond
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, dt)
    simulation = app.Simulation(modeller.topology, system, integrator, openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(modeller.positions)
    simulation.minimizeEnergy(maxIterations=200)
    simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    steps = int(round(args.ps * unit.picosecond / dt))
    simulation.reporters.append(app.StateDataReporter(
        __import__("sys").stdout, max(steps // 10, 1), step=True, time=True, potentialEnergy=True,
        temperature=True, speed=True))
    simulation.step(steps)
    state = simulation.context.getState(getPositions=True)
    pos = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)[ml_atoms]
    bond = np.linalg.norm(pos[0] - pos[1])
    print(f"done: {args.ps} ps; C-C distance at the end {bond:.2f} A")


if __name__ == "__main__":
    main()
