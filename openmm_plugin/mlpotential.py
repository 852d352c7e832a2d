"""openmm-ml registration: MLPotential('so3krates', modelPath='model.pt')."""
from __future__ import annotations

from typing import Iterable, Optional

from openmmml.mlpotential import MLPotentialImpl, MLPotentialImplFactory


class So3kratesPotentialImplFactory(MLPotentialImplFactory):
    def createImpl(self, name: str, modelPath: Optional[str] = None, **args) -> MLPotentialImpl:
        if modelPath is None:
            raise ValueError("MLPotential('so3krates') needs modelPath='model.pt' (a file from `so3krates export`)")
        return So3kratesPotentialImpl(str(modelPath))


class So3kratesPotentialImpl(MLPotentialImpl):
    def __init__(self, model_path: str):
        from so3krates.export import read_metadata
        self.model_path = model_path
        self.metadata = read_metadata(model_path)  # fail early on a foreign file

    def addForces(self, topology, system, atoms: Optional[Iterable[int]], forceGroup: int, **args) -> None:
        from .force import create_force
        force = create_force(self.model_path, topology, atoms=None if atoms is None else list(atoms),
                             precision=args.get("precision"))
        force.setForceGroup(forceGroup)
        system.addForce(force)

    def getMLLongRange(self) -> bool:
        return False  # interactions reach num_layers * cutoff, no long-range terms
