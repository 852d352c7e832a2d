"""Fast memory allocation for large systems with no system package: glibc's malloc tuned in
process, and tcmalloc preloaded when the system has it.

On the CPU, PyTorch allocates and frees the per-edge tensors (edges x features, 10 MB to 100s of MB)
on every evaluation. glibc's malloc hands blocks that large back to the kernel when they are freed
(mmap/trim), so every evaluation page-faults all of them in again, and the cost per atom grows
with the system size. tcmalloc keeps freed blocks for reuse (benchmarks/allocator.py measures
both; figures in docs/benchmarks.md).

Two remedies, both keeping freed blocks for reuse:
- glibc tuned in process (`tune_glibc_malloc`, the default; SO3KRATES_MALLOC_TUNING=0 turns it off):
  large blocks come from the heap instead of mmap, and the heap is never trimmed back to the kernel,
  the in-process form of MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>. Applied when a model is
  loaded (the export loader, hence ASE, OpenMM and the CLI) and by the LAMMPS plugin when LAMMPS
  loads it. Measured with the fused edge pass (docs/benchmarks.md): within a few % of tcmalloc's
  time at 6,000-12,000 water atoms, peak memory 1.1-1.3x glibc's defaults. (With the plain edge pass,
  which kept ~16 edges x F tensors per layer, the heap fragmented to 2.9x the memory: it was opt-in
  then.)
- tcmalloc, optional: an allocator cannot be swapped inside a running process; it has to be
  preloaded (LD_PRELOAD) before the process starts, so `so3krates` re-executes itself once with it,
  and passes it on to the `lmp` processes it starts. SO3KRATES_TCMALLOC=0 turns this off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Dict, List, Optional

OPT_OUT = "SO3KRATES_TCMALLOC"     # "0": keep the default allocator
TUNING_OPT_OUT = "SO3KRATES_MALLOC_TUNING"    # "0": leave glibc's malloc as it starts (see above)
# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_tuned = False
NAMES = ("tcmalloc_minimal", "tcmalloc")


def tcmalloc_library() -> Optional[str]:
    """The tcmalloc shared library the dynamic loader would find (e.g. from Debian's
    libtcmalloc-minimal4), or None."""
    for name in NAMES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def is_preloaded(env: Optional[Dict[str, str]] = None) -> bool:
    return "tcmalloc" in (os.environ if env is None else env).get("LD_PRELOAD", "")


def with_tcmalloc(env: Dict[str, str]) -> Dict[str, str]:
    """`env` with tcmalloc added to LD_PRELOAD, when available and not turned off."""
    library = tcmalloc_library()
    if env.get(OPT_OUT) == "0" or library is None or is_preloaded(env):
        return env
    out = dict(env)
    out["LD_PRELOAD"] = library + (" " + out["LD_PRELOAD"] if out.get("LD_PRELOAD") else "")
    return out


def reexec_with_tcmalloc(python_args: List[str]) -> None:
    """Replace this process by `python *python_args` (e.g. ["-m", "so3krates.cli", ...] or
    sys.argv for a script) with tcmalloc preloaded; returns (doing nothing) when it is already
    preloaded, unavailable or turned off."""
    if is_preloaded():
        return
    env = with_tcmalloc(dict(os.environ))
    if not is_preloaded(env):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *python_args], env)


def tune_glibc_malloc() -> bool:
    """Keep freed memory in the process (no mmap for large blocks, no trimming), unless
    SO3KRATES_MALLOC_TUNING=0. Returns whether the settings are applied; a no-op under tcmalloc and
    off glibc."""
    return keep_freed_memory()


def keep_freed_memory() -> bool:
    """The glibc settings of tune_glibc_malloc, also used by training, whose batches are small and of
    fixed size, so the heap stays small (benchmarks/training_throughput.py). A no-op under tcmalloc
    and off glibc; SO3KRATES_MALLOC_TUNING=0 turns it off."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get(TUNING_OPT_OUT) == "0" or is_preloaded():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):   # not glibc (e.g. musl, macOS)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # -1 becomes SIZE_MAX inside glibc: the heap is never trimmed.
    _tuned = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))
    return _tuned
