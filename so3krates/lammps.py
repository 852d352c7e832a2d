"""Public name of the LAMMPS integration (code in lammps_pair/)."""
from so3krates.lammps_pair import *  # noqa: F401,F403
