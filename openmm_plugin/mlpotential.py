"""openmm-ml registration: MLPotential('so3krates', modelPath='model.pt').

This is the module of the `openmmml.potentials` entry point, which openmm-ml imports whenever
`openmmml` is imported, for every user of any model. It imports nothing, not even openmm-ml (whose
import loads this entry point: importing it here would be circular), and cannot fail: the
potential itself (`mlpotential_impl.py`) and torch, openmm-torch and their set-up are loaded only
when a so3krates potential is asked for. See docs/openmm.md.
"""
from __future__ import annotations

from typing import Optional


class So3kratesPotentialImplFactory:
    """openmm-ml's MLPotentialImplFactory interface (createImpl), without its base class (see above)."""

    def createImpl(self, name: str, modelPath: Optional[str] = None, **args):
        if modelPath is None:
            raise ValueError("MLPotential('so3krates') needs modelPath='model.pt' (a file from `so3krates export`)")
        from .mlpotential_impl import So3kratesPotentialImpl
        return So3kratesPotentialImpl(str(modelPath))
