"""tcmalloc for large systems, preloaded when the system has it.

On the CPU, PyTorch allocates and frees the per-edge tensors (edges x features, 10 MB to 100s of MB)
on every evaluation. glibc's malloc hands blocks that large back to the kernel when they are freed
(mmap/trim), so every evaluation page-faults all of them in again: at 6,000 water atoms with the
default model the kernel's page-fault time was 3x the arithmetic, and the cost per atom grew with
the system size. tcmalloc keeps freed blocks for reuse (benchmarks/allocator.py measures both).
An allocator cannot be swapped inside a running process; it has to be preloaded (LD_PRELOAD)
before the process starts, so `so3krates` re-executes itself once with it, and passes it on to
the `lmp` processes it starts. SO3KRATES_TCMALLOC=0 turns this off.
"""
from __future__ import annotations

import ctypes.util
import os
import sys
from typing import Dict, List, Optional

OPT_OUT = "SO3KRATES_TCMALLOC"     # "0": keep the default allocator
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
