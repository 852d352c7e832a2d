"""Allocation for large systems: glibc tuned in process when a model is loaded, and tcmalloc preloading
(the `so3krates` command re-executes itself with it, `lmp` runs get it)."""
import os
import subprocess
import sys

import pytest

from so3krates.allocator import OPT_OUT, tcmalloc_library
from so3krates.lammps_pair.runtime import subprocess_env

needs_tcmalloc = pytest.mark.skipif(tcmalloc_library() is None,
                                    reason="no tcmalloc on this system (Debian: apt-get install libtcmalloc-minimal4)")


def loaded_libraries(extra_env):
    """What the dynamic loader initialised for `python -m so3krates.cli --version` (LD_DEBUG=libs)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", OPT_OUT)}
    env.update(extra_env, LD_DEBUG="libs")
    proc = subprocess.run([sys.executable, "-m", "so3krates.cli", "--version"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "so3krates" in proc.stdout
    return [line for line in proc.stderr.splitlines() if "calling init:" in line]


@needs_tcmalloc
def test_cli_runs_with_tcmalloc_preloaded():
    assert any("tcmalloc" in line for line in loaded_libraries({}))


@needs_tcmalloc
def test_cli_keeps_the_default_allocator_when_turned_off():
    inits = loaded_libraries({OPT_OUT: "0"})
    assert inits and not any("tcmalloc" in line for line in inits)


@needs_tcmalloc
def test_lmp_runs_get_tcmalloc_unless_turned_off(monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert "tcmalloc" in subprocess_env()["LD_PRELOAD"]
    monkeypatch.setenv(OPT_OUT, "0")
    assert "tcmalloc" not in subprocess_env().get("LD_PRELOAD", "")


MMAPPED_BLOCKS = """
import ctypes, sys, torch
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] != "-":
    from so3krates.export import load_exported
    load_exported(sys.argv[1])
before = libc.mallinfo2().hblks          # blocks glibc holds from mmap (each handed back on free)
block = torch.empty(50_000_000)          # 200 MB, the size of a large system's per-edge tensor
print(libc.mallinfo2().hblks - before)
"""


def mmapped_blocks(model, extra_env):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "SO3KRATES_MALLOC_TUNING")}
    env.update(extra_env)
    proc = subprocess.run([sys.executable, "-c", MMAPPED_BLOCKS, model], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split()[-1])


def test_malloc_tuning_keeps_large_blocks_in_the_heap_unless_turned_off(export_random):
    """No system package needed: loading a model tunes glibc so that large blocks come from the heap
    (reused across evaluations) instead of mmap (page-faulted in again at every evaluation);
    SO3KRATES_MALLOC_TUNING=0 keeps glibc's defaults."""
    model = export_random("allocator_tiny")
    assert mmapped_blocks("-", {}) >= 1                     # glibc's default: a 200 MB block is mmapped
    assert mmapped_blocks(model, {}) == 0                   # a model loaded: from the heap
    assert mmapped_blocks(model, {"SO3KRATES_MALLOC_TUNING": "0"}) >= 1   # turned off: glibc as it starts


def test_python_dash_m_so3krates_is_the_command():
    """`python -m so3krates` (a venv without its bin/ on PATH) runs the same command line as `so3krates`."""
    proc = subprocess.run([sys.executable, "-m", "so3krates", "--version"], capture_output=True, text=True, timeout=120)
    direct = subprocess.run([sys.executable, "-m", "so3krates.cli", "--version"], capture_output=True, text=True,
                            timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == direct.stdout and proc.stdout.startswith("so3krates")
