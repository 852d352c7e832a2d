"""OpenMM integration: exported so3krates models as openmm-torch TorchForces and openmm-ml potentials.
See docs/openmm.md.

Importing this package (as openmm-ml does through its entry point, `mlpotential.py`) loads
nothing heavy and cannot fail: torch, openmm-torch and their set-up (`runtime.ensure_torch_plugin`)
are loaded when a so3krates force is first created, so that installing so3krates never breaks
`import openmmml` for other models.
"""
from typing import Any

__all__ = ["create_force", "So3kratesOpenMMModule", "ANGSTROM_PER_NM", "KJ_PER_MOL_PER_EV", "ase_topology"]

_LAZY = {"create_force": "force", "So3kratesOpenMMModule": "force", "ANGSTROM_PER_NM": "units",
         "KJ_PER_MOL_PER_EV": "units", "ase_topology": "topology"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
