"""Bad input stops the real `lmp` executable with an ERROR line that says what to write instead
(no crash, no silent mis-assignment)."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch

from so3krates.export import METADATA_FILE, export_model
from so3krates.model.radial_table import DEFAULT_POINTS
from so3krates.lammps_pair import lmp_command, plugin_path
from so3krates.lammps_pair.runtime import subprocess_env
from so3krates.lammps_pair.system import lammps_system, write_data
from so3krates.structures import water_box

from conftest import random_network


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("lammps_errors")
    export_model(random_network("tiny", energy_shift=None), path / "model.pt", "float64")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path / "not_so3krates.pt"))
    (path / "garbage.pt").write_text("this is not a model\n")
    # A file that says it is of format 1 (before the stage methods): the same model, relabelled.
    extra = {METADATA_FILE: ""}
    module = torch.jit.load(str(path / "model.pt"), _extra_files=extra)
    meta = json.loads(extra[METADATA_FILE])
    meta["format_version"] = 1
    del meta["state"]
    torch.jit.save(module, str(path / "format1.pt"), _extra_files={METADATA_FILE: json.dumps(meta)})
    write_data(str(path / "water.lmp"), lammps_system(water_box(8, seed=0)))   # types: 1 = H, 2 = O
    return path


def run_input(workdir, body: str, units: str = "metal", newton: str = "on") -> subprocess.CompletedProcess:
    script = (f"units {units}\natom_style atomic\nboundary p p p\nnewton {newton}\n"
              f"plugin load {plugin_path()}\nread_data water.lmp\n{body}\nrun 0\n")
    (workdir / "in.lammps").write_text(script)
    return subprocess.run(lmp_command(1) + ["-nocite", "-in", "in.lammps", "-log", "none"], cwd=workdir,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)


def assert_error(proc: subprocess.CompletedProcess, *phrases: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode > 0, f"expected LAMMPS to stop with an error (exit code {proc.returncode}):\n{out[-2000:]}"
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert errors, f"no ERROR line in the output:\n{out[-2000:]}"
    for phrase in phrases:
        assert phrase in errors[0], f"{phrase!r} not in {errors[0]!r}"


def test_good_input_runs(workdir):
    proc = run_input(workdir, "pair_style so3krates\npair_coeff * * model.pt H O")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "LAMMPS type -> element" in proc.stdout and "interaction range" in proc.stdout
    assert f"radial filters     cubic Hermite table ({DEFAULT_POINTS} points)" in proc.stdout
    # the start-up log states the ghost cutoff and the halo exchanges; the end of the run, the work
    assert "ghost atoms out to 6 A (cutoff 4 A + skin 2 A)" in proc.stdout
    assert "halo exchanges     none on one rank" in proc.stdout
    assert "so3krates: computed/owned atoms = 1.00 (max over ranks)" in proc.stdout


@pytest.mark.parametrize("body, units, newton, phrases", [
    ("pair_style so3krates\npair_coeff * * model.pt H", "metal", "on",
     ["1 element name(s)", "2 atom types", "one element name per LAMMPS atom type"]),
    ("pair_style so3krates\npair_coeff * * model.pt H C O", "metal", "on", ["3 element name(s)"]),
    ("pair_style so3krates\npair_coeff * * model.pt H N", "metal", "on",
     ["element N (atom type 2) is not in model", "H C O", "NULL"]),
    ("pair_style so3krates\npair_coeff * * model.pt H Q", "metal", "on", ["'Q'", "not a chemical symbol"]),
    ("pair_style so3krates\npair_coeff 1 1 model.pt H O", "metal", "on", ["* *"]),  # LAMMPS checks this
    ("pair_style so3krates\npair_coeff * * model.pt H O", "metal", "off", ["write 'newton on'"]),
    ("pair_style so3krates\npair_coeff * * model.pt H O", "lj", "on", ["not 'units lj'", "write 'units metal'"]),
    ("pair_style so3krates\npair_coeff * * missing.pt H O", "metal", "on", ["missing.pt", "so3krates export"]),
    ("pair_style so3krates\npair_coeff * * not_so3krates.pt H O", "metal", "on",
     ["not a so3krates model", "so3krates export"]),
    ("pair_style so3krates\npair_coeff * * garbage.pt H O", "metal", "on",
     ["not a TorchScript model file", "so3krates export"]),
    ("pair_style so3krates model.pt", "metal", "on", ["unknown argument 'model.pt'", "pair_coeff * * model.pt"]),
    ("pair_style so3krates\npair_coeff * * format1.pt H O", "metal", "on",
     ["format 1", "re-export", "so3krates export CHECKPOINT -o model.pt"]),
], ids=["too few elements", "too many elements", "element not in model", "not an element", "not * *",
        "newton off", "units lj", "missing file", "other TorchScript", "not TorchScript", "pair_style args",
        "format 1 file"])
def test_bad_input_is_an_error(workdir, body, units, newton, phrases):
    assert_error(run_input(workdir, body, units, newton), *phrases)
