"""so3krates: the SO3krates Euclidean transformer force field, from training to OpenMM and LAMMPS.

Importing the package imports nothing heavy (openmm-ml imports its entry point, a submodule, for
every user of any model). The fused edge operator that exported models call (so3krates/fused.py)
is loaded when a model is loaded or exported; code that hands a fused file to libtorch by itself
(e.g. `openmmtorch.TorchForce("model.pt")`) calls `so3krates.load_operators()` first."""
__version__ = "0.1.0"


def load_operators() -> bool:
    """Register the fused edge operator with libtorch (once); False when it is not installed."""
    from . import fused
    return fused.load()
