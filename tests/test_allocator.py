"""tcmalloc preloading: the `so3krates` command re-executes itself with it, `lmp` runs get it."""
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
