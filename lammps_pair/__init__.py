"""LAMMPS integration: `pair_style so3krates` (a C++ plugin built and installed with the package)
and the Python helpers that find it and run LAMMPS with it. See docs/lammps.md."""
from .runtime import PLUGIN_FILE, lmp_command, mpi_library, new_lammps, plugin_path, preload_mpi

__all__ = ["PLUGIN_FILE", "lmp_command", "mpi_library", "new_lammps", "plugin_path", "preload_mpi"]
