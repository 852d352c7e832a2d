"""Public name of the OpenMM integration (code in openmm_plugin/)."""
from so3krates.openmm_plugin import *  # noqa: F401,F403
