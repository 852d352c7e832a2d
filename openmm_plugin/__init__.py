"""OpenMM integration: exported so3krates models as openmm-torch TorchForces and openmm-ml potentials.
See docs/openmm.md."""
from .runtime import ensure_torch_plugin

ensure_torch_plugin()  # before anything imports openmmtorch: it needs libnvrtc preloaded

from .force import So3kratesOpenMMModule, create_force
from .units import ANGSTROM_PER_NM, KJ_PER_MOL_PER_EV

__all__ = ["create_force", "So3kratesOpenMMModule", "ANGSTROM_PER_NM", "KJ_PER_MOL_PER_EV"]
