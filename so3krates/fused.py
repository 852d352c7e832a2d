"""Loading the fused edge operator, `torch.ops.so3krates.edge_attention_pairs` (ops/edge_attention.cpp).

The operator lives in libso3krates_ops.so, which the CMake build installs next to this package.
`import so3krates` loads it (TORCH_LIBRARY registers it with libtorch for the whole process), so an
exported model that calls it runs in the ASE calculator, in OpenMM's TorchForce and in
`so3krates info`; the LAMMPS plugin links the library itself. A missing library is no error at
import: only a fused model (or a fused export) needs it, and they say so (`require`)."""
from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path
from typing import Optional

LIBRARY_FILE = "libso3krates_ops.so"
LIBRARY_ENV = "SO3KRATES_OPS_LIBRARY"    # overrides the search, e.g. for a library built by hand
OPERATOR = "so3krates::edge_attention_pairs"
_load_error: Optional[str] = None


def library_path() -> Optional[Path]:
    """The built operator library, or None."""
    if os.environ.get(LIBRARY_ENV):
        return Path(os.environ[LIBRARY_ENV])
    # Next to this file (a normal install), or in site-packages (scikit-build-core editable installs).
    candidates = [Path(__file__).with_name(LIBRARY_FILE)]
    for base in {sysconfig.get_path("platlib"), sysconfig.get_path("purelib"), *sys.path}:
        if base:
            candidates.append(Path(base) / "so3krates" / LIBRARY_FILE)
    return next((p.resolve() for p in candidates if p.is_file()), None)


def is_loaded() -> bool:
    import torch
    try:
        torch.ops.so3krates.edge_attention_pairs   # noqa: B018 (the look-up raises when not registered)
        return True
    except (AttributeError, RuntimeError):
        return False


def load() -> bool:
    """Load the operator library once; False (and the reason kept for `require`) when it cannot be."""
    global _load_error
    import torch
    if is_loaded():
        return True
    path = library_path()
    if path is None:
        _load_error = f"{LIBRARY_FILE} is not installed"
        return False
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as exc:
        _load_error = f"{path} cannot be loaded ({str(exc).splitlines()[0]})"
        return False
    return is_loaded()


def require(what: str) -> None:
    """Raise a one-line error naming the problem and the fix when the operator is not loaded."""
    if not load():
        raise RuntimeError(f"{what} needs the fused edge operator {OPERATOR}, which is not loaded: {_load_error}; "
                           f"rebuild so3krates (pip install --no-build-isolation -e ., or `make install`; set "
                           f"{LIBRARY_ENV} to a library built by hand) or export the model with --fused 0")
