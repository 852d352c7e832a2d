"""so3krates: the SO3krates Euclidean transformer force field, from training to OpenMM and LAMMPS."""
__version__ = "0.1.0"

# The fused edge operator that exported models call (so3krates/fused.py): registered with libtorch
# here, so that every engine that imports so3krates can run a fused model.
from . import fused as _fused  # noqa: E402

_fused.load()
