"""The built plugin: `so3krates lammps-plugin` prints an existing library inside the installed
package, which the unmodified lmp executable loads (libtorch found through its RPATH)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from so3krates.lammps_pair import PLUGIN_FILE, lmp_command, mpi_library, plugin_path
from so3krates.lammps_pair.runtime import subprocess_env


def test_cli_prints_the_installed_plugin_path():
    proc = subprocess.run([sys.executable, "-m", "so3krates.cli", "lammps-plugin"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert path.is_file() and path.name == PLUGIN_FILE
    assert path.parent.parts[-2:] == ("so3krates", "lammps_pair"), "installed inside the package"
    assert path == plugin_path()


def test_lmp_loads_plugin_without_torch_on_the_library_path(tmp_path):
    env = subprocess_env()
    env.pop("LD_PRELOAD", None)
    env["LD_LIBRARY_PATH"] = str(mpi_library().parent)   # MPI only: libtorch must come from the RPATH
    (tmp_path / "in.lammps").write_text(f"plugin load {plugin_path()}\nplugin list\n")
    proc = subprocess.run(lmp_command(1) + ["-nocite", "-in", "in.lammps", "-log", "none"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "pair style plugin so3krates" in proc.stdout


def test_plugin_path_override(tmp_path, monkeypatch):
    fake = tmp_path / "custom-plugin.so"
    fake.write_bytes(b"")
    monkeypatch.setenv("SO3KRATES_LAMMPS_PLUGIN", str(fake))
    assert plugin_path() == fake.resolve()
    monkeypatch.setenv("SO3KRATES_LAMMPS_PLUGIN", os.fspath(tmp_path / "missing.so"))
    with pytest.raises(FileNotFoundError, match="missing.so"):
        plugin_path()
