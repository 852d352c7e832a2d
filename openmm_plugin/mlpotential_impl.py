"""The openmm-ml potential behind MLPotential('so3krates', modelPath='model.pt'), made by the
entry point's factory (`mlpotential.py`) when a user asks for it.

createSystem / createMixedSystem take openmm-ml's keyword arguments: precision ('single',
'double', or None for the model's own dtype), device ('cpu', 'cuda', 'cuda:N'), and charge and
multiplicity for models with those inputs (SO3LR); the force is
periodic when the Topology has box vectors or the System uses periodic boundary conditions.
"""
from __future__ import annotations

from typing import Iterable, Optional

from openmmml.mlpotential import MLPotentialImpl


class So3kratesPotentialImpl(MLPotentialImpl):
    def __init__(self, model_path: str):
        from so3krates.export import read_metadata
        self.model_path = model_path
        self.metadata = read_metadata(model_path)  # fail early on a foreign file

    def addForces(self, topology, system, atoms: Optional[Iterable[int]], forceGroup: int, **args) -> None:
        from .force import create_force
        force = create_force(self.model_path, topology, atoms=None if atoms is None else list(atoms),
                             precision=args.get("precision"), periodic=_periodic(topology, system),
                             device=args.get("device"), **global_inputs(args))
        force.setForceGroup(forceGroup)
        system.addForce(force)

    def getMLLongRange(self) -> bool:
        return False  # interactions reach num_layers * cutoff, no long-range terms

    def getSupportedEmbeddings(self):
        return ["mechanical"]

    def createMixedSystem(self, topology, system, atoms, forceGroup, interpolate, embedding, returnInfo=False, **args):
        """openmm-ml's mechanical embedding, with one change for interpolate=True: the ML term is a
        TorchForce scaled by the global parameter lambda_interpolate itself, instead of a
        collective variable of a CustomCVForce. A CustomCVForce copies its forces through XML, and
        deserialising a TorchForce crashes with the openmm-torch 1.5 wheel."""
        from openmmml.embeddings.mechanicalembedding import MechanicalEmbedding
        if not interpolate:
            return MechanicalEmbedding().createMixedSystem(self, topology, system, atoms, forceGroup, False,
                                                           returnInfo=returnInfo, **args)
        recorder = _RecordMLAtoms(self)
        info = MechanicalEmbedding().createMixedSystem(recorder, topology, system, atoms, forceGroup, True,
                                                       returnInfo=True, **args)
        from .force import create_force
        force = create_force(self.model_path, info["topology"], atoms=recorder.atoms,
                             precision=args.get("precision"), scale_parameter="lambda_interpolate",
                             periodic=_periodic(info["topology"], info["system"]), device=args.get("device"),
                             **global_inputs(args))
        force.setForceGroup(forceGroup)
        info["system"].addForce(force)
        return info if returnInfo else info["system"]


def global_inputs(args) -> dict:
    """createSystem(..., charge=, multiplicity=) -> create_force's keyword arguments (only those given)."""
    return {k: args[k] for k in ("charge", "multiplicity") if args.get(k) is not None}


def _periodic(topology, system) -> bool:
    """As openmm-ml's own potentials decide it."""
    return topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()


class _RecordMLAtoms(MLPotentialImpl):
    """Stands in for the potential while openmm-ml sets up the MM side of the interpolation:
    adds no force, remembers the ML atoms (link-atom caps included)."""

    def __init__(self, potential: So3kratesPotentialImpl):
        self.potential = potential
        self.atoms = None

    def addForces(self, topology, system, atoms, forceGroup, **args) -> None:
        self.atoms = None if atoms is None else list(atoms)

    def getMLLongRange(self) -> bool:
        return self.potential.getMLLongRange()
