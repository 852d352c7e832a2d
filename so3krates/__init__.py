"""so3krates: the SO3krates Euclidean transformer force field, from training to OpenMM and LAMMPS."""
__version__ = "0.1.0"
