"""The project's bad-input suite: what a hostile new user would try, at every entry point.

Each case asserts the exact outcome: a one-line error (`so3krates VERB: error: ...`, no traceback)
that names the problem and the fix, or a correct result. Real parts throughout: the CLI in-process
(or as a subprocess where a signal is sent), real OpenMM Contexts, real LAMMPS. Nothing here
depends on the clock: training runs a fixed number of epochs, and the interrupt tests wait for
the files to appear, however long that takes, before they send Ctrl-C.
See docs/reliability.md for the table by entry point.
"""
from __future__ import annotations

import csv
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from so3krates.cli import main as cli
from so3krates.export import NotASo3kratesModel, export_model, read_metadata
from so3krates.model.train import TrainOptions
from so3krates.structures import read_structure

from conftest import random_network

CLI = [sys.executable, "-m", "so3krates.cli"]
TESTS = Path(__file__).parent


# --- helpers and fixtures ----------------------------------------------------------------------------

def fails(capsys, argv, *phrases, code=1):
    """Run the CLI in-process; it must exit with `code` and print exactly one error line (no
    traceback) that contains every phrase. Returns the line."""
    rc = cli(list(map(str, argv)))
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert rc == code, f"exit code {rc}, expected {code}; stderr:\n{captured.err[-3000:]}"
    assert "Traceback" not in captured.err, captured.err[-3000:]
    assert len(err) == 1, f"expected one line on stderr, got {len(err)}:\n{captured.err[-3000:]}"
    line = err[0]
    kind = "interrupted" if code == 130 else "error"
    assert line.startswith(f"so3krates {argv[0]}: {kind}: "), line
    for phrase in phrases:
        assert phrase in line, f"{phrase!r} not in {line!r}"
    return line


def start(argv, **kwargs) -> subprocess.Popen:
    """The CLI as a child that Ctrl-C (SIGINT) reaches even when this test runs in the background
    (where the shell has SIGINT ignored, and children inherit that)."""
    return subprocess.Popen(CLI + [str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def interrupt(proc: subprocess.Popen):
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=600)   # a hang fails the test instead of blocking the suite
    assert proc.returncode == 130, stderr[-3000:]
    return stdout, stderr


def one_error_line(proc: subprocess.CompletedProcess, verb: str, kind: str = "error") -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"so3krates {verb}: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"so3krates {verb}: {kind}: "), lines[0]
    return lines[0]


def labelled_ethanol(count: int, seed: int = 0):
    """Displaced ethanol molecules with made-up energies (eV) and forces (eV/A)."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(count):
        atoms = read_structure("ethanol")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = SinglePointCalculator(atoms, energy=-4400.0 + 0.1 * rng.normal(),
                                           forces=rng.normal(scale=0.5, size=(len(atoms), 3)))
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("bad_input")


@pytest.fixture(scope="module")
def data(work) -> Path:
    path = work / "ethanol.xyz"
    write(path, labelled_ethanol(8), format="extxyz")
    return path


@pytest.fixture(scope="module")
def model(work) -> Path:
    """A random tiny float64 model (H, C, O) exported with the exact radial filters."""
    path = work / "model.pt"
    export_model(random_network("tiny", energy_scale=0.2), path, "float64", radial_table=0)
    return path


@pytest.fixture(scope="module")
def stiff_model(work) -> Path:
    """A random tiny model with large forces: MD with a 50 fs time step blows up at once."""
    path = work / "stiff.pt"
    export_model(random_network("tiny", energy_scale=1000.0), path, "float64", radial_table=0)
    return path


@pytest.fixture(scope="module")
def damaged(model, work) -> Path:
    """The model file with one byte of its weights changed, the zip structure intact."""
    path = work / "damaged.pt"
    raw = bytearray(model.read_bytes())
    with zipfile.ZipFile(model) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    # Local header: 30 bytes + name + extra; torch stores the records uncompressed.
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2 // 8 * 8 + 7] ^= 0x01   # the lowest exponent bit of one float64 weight
    path.write_bytes(bytes(raw))
    return path


def train_args(data, out, *extra):
    return ["train", "--train", data, "--out", out, "--preset", "tiny", "--epochs", "1", "--batch-size", "4",
            "--valid-fraction", "0.25", "--seed", "0", "--threads", "1", "--quiet", *extra]


@pytest.fixture(scope="module")
def run(data, work) -> Path:
    """A finished one-epoch run to resume or overwrite (copied by each test that changes it)."""
    out = work / "run"
    assert cli(list(map(str, train_args(data, out)))) == 0
    return out


def copy_run(run: Path, to: Path) -> Path:
    import shutil
    shutil.copytree(run, to)
    return to


# --- readers: npz and DeePMD arrays name the file, the array and the expected shape ---------------------

def npz(tmp_path, **arrays) -> Path:
    base = dict(R=np.zeros((4, 3, 3)), z=np.array([8, 1, 1]), E=np.zeros(4), F=np.zeros((4, 3, 3)))
    base.update(arrays)
    path = tmp_path / "data.npz"
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


@pytest.mark.parametrize("arrays, phrase", [
    (dict(R=np.zeros((4, 9))), "array R (positions) has shape (4, 9), expected (frames, atoms, 3)"),
    (dict(E=np.zeros(3)), "array E (energies) has shape (3,), expected (4,) or (4, 1)"),
    (dict(z=np.array([8, 1])), "array z (atomic numbers) has shape (2,), expected (3,) or (4, 3)"),
    (dict(F=np.zeros((4, 3))), "array F (forces) has shape (4, 3), expected the shape of R (4, 3, 3)"),
    (dict(R=np.array([[["a", "b", "c"]] * 3] * 4)), "array R (positions) is not numeric"),
    (dict(E=None), "missing key 'E' (energies)"),
], ids=["npz R 2-D", "npz E length", "npz z shape", "npz F shape", "npz R text", "npz no E"])
def test_malformed_npz_names_the_array_and_the_expected_shape(capsys, model, tmp_path, arrays, phrase):
    path = npz(tmp_path, **arrays)
    fails(capsys, ["evaluate", model, path], str(path), phrase)


def deepmd(tmp_path, coord=None, energy=None, raw_bytes=None) -> Path:
    system = tmp_path / "system"
    (system / "set.000").mkdir(parents=True)
    (system / "type.raw").write_text("0\n1\n1\n")
    (system / "type_map.raw").write_text("O\nH\n")
    (system / "nopbc").write_text("")
    np.save(system / "set.000" / "coord.npy", np.zeros((2, 9)) if coord is None else coord)
    np.save(system / "set.000" / "energy.npy", np.zeros(2) if energy is None else energy)
    if raw_bytes is not None:
        (system / "set.000" / "coord.npy").write_bytes(raw_bytes)
    return system


@pytest.mark.parametrize("kwargs, phrase", [
    (dict(coord=np.zeros((2, 7))), "coord.npy: array coord has shape (2, 7), expected (frames, 9): one row per "
                                   "frame with x y z of the 3 atoms of type.raw"),
    (dict(coord=np.zeros(18)), "array coord has shape (18,), expected (frames, 9)"),
    (dict(energy=np.zeros(3)), "energy.npy has 3 frames, coord.npy has 2"),
    (dict(raw_bytes=b"not numpy"), "coord.npy: cannot be read as a numpy .npy file"),
], ids=["deepmd coord width", "deepmd coord flat", "deepmd frames", "deepmd damaged npy"])
def test_malformed_deepmd_names_the_file_the_array_and_the_shape(capsys, tmp_path, kwargs, phrase):
    system = deepmd(tmp_path, **kwargs)
    fails(capsys, ["train", "--train", system, "--out", tmp_path / "run", "--epochs", "1"], str(system), phrase)


def test_forces_under_an_unknown_key_are_not_dropped_silently(capsys, tmp_path):
    frames = labelled_ethanol(6)
    for atoms in frames:
        atoms.arrays["my_forces"] = atoms.get_forces().copy()
        atoms.info["energy"] = atoms.get_potential_energy()
        atoms.calc = None
    path = tmp_path / "odd.xyz"
    write(path, frames, format="extxyz")
    fails(capsys, train_args(path, tmp_path / "run"), "no frame has forces", "my_forces", "--forces-key KEY",
          "--energy-only")
    assert not (tmp_path / "run").exists()
    # Named: trained on them (the checkpoint's validation metrics include forces).
    assert cli(list(map(str, train_args(path, tmp_path / "named", "--forces-key", "my_forces")))) == 0
    rows = list(csv.DictReader(open(tmp_path / "named" / "metrics.csv")))
    assert np.isfinite(float(rows[0]["valid_forces_mae_meV_per_A"]))


def test_energy_only_training_is_asked_for_and_announced(capsys, tmp_path):
    frames = labelled_ethanol(6)
    for atoms in frames:
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy())
    path = tmp_path / "energies.xyz"
    write(path, frames, format="extxyz")
    fails(capsys, train_args(path, tmp_path / "run"), "no frame has forces", "--energy-only")
    assert cli(list(map(str, train_args(path, tmp_path / "e", "--energy-only")))) == 0
    assert "training on energies only (--energy-only)" in capsys.readouterr().out
    assert yaml.safe_load(open(tmp_path / "e" / "config.yaml"))["training"]["forces_weight"] == 0.0


def test_npz_without_forces_says_so_when_training_starts(capsys, tmp_path):
    path = npz(tmp_path, F=None)
    fails(capsys, ["train", "--train", path, "--out", tmp_path / "run", "--epochs", "1"], "no F array in the npz",
          "keys: E, R, z", "--energy-only")


# --- train: the run folder, resume, numbers, the config file --------------------------------------------

def test_train_out_is_an_existing_file(capsys, data, tmp_path):
    (tmp_path / "file").write_text("x")
    fails(capsys, train_args(data, tmp_path / "file"), "--out", "is an existing file, not a folder")


def test_train_out_below_a_file(capsys, data, tmp_path):
    (tmp_path / "file").write_text("x")
    fails(capsys, train_args(data, tmp_path / "file" / "run"), "is a file, not a folder")


def test_train_refuses_a_folder_with_any_earlier_run_file(capsys, data, run, tmp_path):
    out = copy_run(run, tmp_path / "old")
    (out / "last.ckpt").unlink()
    (out / "best.ckpt").unlink()       # only config.yaml, metrics.csv, the plot and the summary are left
    fails(capsys, train_args(data, out),
          "already holds a run (config.yaml, learning_curve.png, metrics.csv, summary.txt)",
          "--resume", "--overwrite")


def test_train_overwrite_replaces_the_earlier_run(capsys, data, run, tmp_path):
    out = copy_run(run, tmp_path / "old")
    (out / "snapshot_5s.ckpt").write_bytes((out / "best.ckpt").read_bytes())
    assert cli(list(map(str, train_args(data, out, "--overwrite", "--seed", "3")))) == 0
    assert not (out / "snapshot_5s.ckpt").exists()
    assert yaml.safe_load(open(out / "config.yaml"))["training"]["seed"] == 3


@pytest.mark.parametrize("flag, value, stored", [
    ("--lr", "0.001", repr(TrainOptions.lr)), ("--preset", "small", "'tiny'"), ("--batch-size", "2", "4"),
    ("--dtype", "float64", "'float32'"), ("--energy-weight", "5", "1.0"),
    ("--forces-weight", "1", repr(TrainOptions.forces_weight)),
], ids=["lr", "preset", "batch size", "dtype", "energy weight", "forces weight"])
def test_resume_refuses_changed_flags(capsys, data, run, tmp_path, flag, value, stored):
    out = copy_run(run, tmp_path / "r")
    line = fails(capsys, train_args(data, out, "--resume", flag, value), "--resume continues the run",
                 f"{flag} ", f"(the run has {stored})", "drop these flags")
    assert "epochs" not in line


def test_resume_refuses_other_data(capsys, run, tmp_path):
    out = copy_run(run, tmp_path / "r")
    other = tmp_path / "other.xyz"
    write(other, labelled_ethanol(8, seed=5), format="extxyz")
    fails(capsys, train_args(other, out, "--resume"), "is not the data this run started with", "sha256 differs")


def test_resume_from_another_directory_with_absolute_stored_paths(data, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "data.xyz").write_bytes(data.read_bytes())
    monkeypatch.chdir(a)
    assert cli(train_args("data.xyz", "run")) == 0
    stored = yaml.safe_load(open(a / "run" / "config.yaml"))["training"]
    assert stored["train"] == str(a / "data.xyz")
    monkeypatch.chdir(b)
    args = train_args("../a/data.xyz", "../a/run", "--resume")
    args[args.index("--epochs") + 1] = "2"
    assert cli(args) == 0
    assert torch.load(a / "run" / "last.ckpt", weights_only=True)["training"]["epoch"] == 2


@pytest.mark.parametrize("flags, phrase", [
    (["--grad-clip", "-1"], "--grad-clip must be >= 0 (0: no clipping), got -1"),
    (["--max-time", "0"], "--max-time must be longer than 0 s, got 0 s"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--epochs", "-3"], "--epochs must be at least 1 (the total over all resumes), got -3"),
    (["--threads", "0"], "--threads must be >= 1"),
], ids=["negative grad clip", "max time 0", "epochs 0", "negative epochs", "threads 0"])
def test_invalid_training_numbers(capsys, data, tmp_path, flags, phrase):
    argv = train_args(data, tmp_path / "run")
    del argv[argv.index("--epochs"):argv.index("--epochs") + 2]
    if "--epochs" not in flags:
        flags = flags + ["--epochs", "1"]
    fails(capsys, argv + flags, phrase)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, phrases", [
    ("training:\n  batchsize: 4\n", ["unknown key 'batchsize' in `training:`", "did you mean 'batch_size'?",
                                     "valid keys: batch_size, compile, decay_fraction, device, dtype,"]),
    ("model:\n  feature: 16\n", ["unknown key 'feature' in `model:`", "did you mean 'features'?"]),
    ("trainng:\n  lr: 0.1\nmodel: {}\n", ["unknown section 'trainng'", "did you mean 'training'?"]),
    ("training:\n  lr: fast\n", ["`training: lr` must be number, got 'fast' (str)"]),
    ("model:\n  features: 16.5\n", ["`model: features` must be integer, got 16.5 (float)"]),
    ("training:\n  epochs: [1, 2]\n", ["`training: epochs` must be integer or null, got [1, 2] (list)"]),
    ("training:\n  lr: 0.1\n   seed: 2\n", ["not valid YAML at line 3"]),
    ("- just\n- a list\n", ["expected a mapping with `model:` and/or `training:` sections, got list"]),
], ids=["unknown training key", "unknown model key", "unknown section", "text for a number",
        "float for an integer", "list for an integer", "malformed YAML", "not a mapping"])
def test_bad_config_files(capsys, data, tmp_path, text, phrases):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    fails(capsys, train_args(data, tmp_path / "run", "--config", config), str(config), *phrases)


def test_ctrl_c_during_training_says_what_was_saved(data, tmp_path):
    out = tmp_path / "run"
    argv = [str(a) for a in train_args(data, out)]
    argv[argv.index("--epochs") + 1] = "100000"
    proc = start(argv)
    while not (out / "metrics.csv").exists() and proc.poll() is None:
        time.sleep(0.2)
    stdout, stderr = interrupt(proc)
    line = one_error_line(subprocess.CompletedProcess(argv, 130, stdout, stderr), "train", "interrupted")
    epoch = torch.load(out / "last.ckpt", weights_only=True)["training"]["epoch"]
    assert f"{out / 'last.ckpt'} holds the run up to epoch {epoch}" in line and "--resume" in line


def test_ctrl_c_inside_an_import_is_still_an_interrupt():
    """Ctrl-C that lands in a class definition (as during a lazy import, e.g. matplotlib's for the
    learning curve) reaches the caller as Python 3.11's RuntimeError "Error calling __set_name__",
    which the CLI once reported as an error (exit 1); plain_interrupts turns it back into the
    KeyboardInterrupt it is (train, md and sample then say what was saved, exit 130)."""
    from so3krates.model.outputs import caused_by_interrupt, plain_interrupts

    class Descriptor:
        def __set_name__(self, owner, name):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with plain_interrupts():
            type("Parsed", (), {"line": Descriptor()})
    with pytest.raises(ValueError, match="a plain error"):
        with plain_interrupts():
            raise ValueError("a plain error")
    assert not caused_by_interrupt(RuntimeError("a plain error"))


# --- files are created with normal permissions ----------------------------------------------------------

def test_every_file_is_created_with_0666_minus_umask(data, model, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert cli(list(map(str, train_args(data, out)))) == 0
        assert cli(["export", str(out / "best.ckpt"), "-o", str(tmp_path / "m.pt")]) == 0
        assert cli(["evaluate", str(tmp_path / "m.pt"), str(data), "--json", str(tmp_path / "e.json"),
                    "--plot", str(tmp_path / "p.png")]) == 0
        assert cli(["md", str(model), "ethanol", "--steps", "4", "--log-every", "2", "--traj-every", "2",
                    "--log", str(tmp_path / "md.csv"), "--traj", str(tmp_path / "md.xyz"), "--quiet"]) == 0
        files = [out / n for n in ("best.ckpt", "last.ckpt", "config.yaml", "metrics.csv", "learning_curve.png")]
        files += [tmp_path / n for n in ("m.pt", "e.json", "p.png", "md.csv", "md.xyz")]
        modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
        assert set(modes.values()) == {"0o644"}, modes
    finally:
        os.umask(old)


# --- export and info: damaged files, missing metadata -----------------------------------------------------

def test_info_refuses_a_damaged_file(capsys, model, damaged):
    assert cli(["info", str(model)]) == 0
    capsys.readouterr()
    fails(capsys, ["info", damaged], str(damaged), "is damaged: the CRC-32 of", "export the model again")


def test_the_ase_calculator_refuses_a_damaged_file(damaged):
    from so3krates.ase import So3kratesCalculator
    with pytest.raises(NotASo3kratesModel, match="is damaged: the CRC-32"):
        So3kratesCalculator(str(damaged))


def test_openmm_refuses_a_damaged_file(damaged):
    from so3krates.openmm_plugin import create_force
    with pytest.raises(NotASo3kratesModel, match="is damaged: the CRC-32"):
        create_force(str(damaged), atomic_numbers=[8, 1, 1])


def test_md_with_every_engine_refuses_a_damaged_file(capsys, damaged, tmp_path):
    for engine in ("ase", "openmm", "lammps"):
        fails(capsys, ["md", damaged, "ethanol", "--engine", engine, "--steps", "2", "--quiet",
                       "--log", tmp_path / "x.csv"], "is damaged: the CRC-32")
        assert not (tmp_path / "x.csv").exists()


def test_a_damaged_file_would_have_loaded_and_given_wrong_energies(model, damaged):
    """Why the CRC check matters: torch.jit.load does not check the CRCs, so the damaged file
    loads and gives another energy; so3krates refuses it before torch sees it."""
    atoms = read_structure("ethanol")
    good = torch.jit.load(str(model))
    bad = torch.jit.load(str(damaged))
    args = (torch.tensor(atoms.positions), torch.tensor(atoms.numbers))
    assert float(good.compute(*args)["energy"].detach().sum()) != float(bad.compute(*args)["energy"].detach().sum())


def test_missing_metadata_fields(capsys, model, tmp_path):
    import json
    meta = read_metadata(model)
    del meta["cutoff_A"], meta["dtype"]
    path = tmp_path / "edited.pt"
    module = torch.jit.load(str(model))
    torch.jit.save(module, str(path), _extra_files={"so3krates.json": json.dumps(meta)})
    fails(capsys, ["info", path], "its metadata lacks the field(s) cutoff_A, dtype", "export the model again")


def test_info_of_a_checkpoint(capsys, run):
    fails(capsys, ["info", run / "best.ckpt"], "is a training checkpoint, not an exported model",
          f"so3krates export {run / 'best.ckpt'} -o model.pt")


def test_export_output_is_a_folder(capsys, run, tmp_path):
    fails(capsys, ["export", run / "best.ckpt", "-o", tmp_path], "-o", "is a folder; give a file name")


# --- md: output paths, unknown elements, blow-ups, Ctrl-C, streaming ----------------------------------------

def test_md_log_in_a_missing_folder_fails_before_the_run(capsys, model, tmp_path):
    fails(capsys, ["md", model, "ethanol", "--steps", "1000000", "--log", tmp_path / "nodir" / "x.csv", "--quiet"],
          "cannot write --log", "the folder", "nodir does not exist")


def test_md_traj_is_a_folder(capsys, model, tmp_path):
    fails(capsys, ["md", model, "ethanol", "--steps", "1000000", "--traj", tmp_path, "--quiet"],
          "--traj", "is a folder; give a file name")


def test_md_unknown_element_through_the_ase_engine(capsys, model, tmp_path):
    fails(capsys, ["md", model, "NH3", "--engine", "ase", "--steps", "2", "--quiet"],
          "the structure contains N, which the model does not know (its elements: H C O)")


@pytest.mark.parametrize("flags, phrase", [
    (["--timestep", "0"], "--timestep must be > 0 (got 0)"),
    (["--steps", "-5"], "--steps >= 0 (got -5)"),
    (["--log-every", "0"], "--log-every >= 1 (got 0)"),
    (["--temperature", "-10"], "--temperature must be >= 0 K, got -10"),
    (["--ranks", "0", "--engine", "lammps"], "--ranks must be >= 1, got 0"),
], ids=["timestep 0", "negative steps", "log every 0", "negative temperature", "ranks 0"])
def test_md_invalid_numbers(capsys, model, flags, phrase):
    fails(capsys, ["md", model, "ethanol", "--quiet", *flags], phrase)


def test_md_blow_up_in_nve_is_an_error_and_keeps_the_log(capsys, stiff_model, tmp_path):
    log = tmp_path / "md.csv"
    line = fails(capsys, ["md", stiff_model, "ethanol", "--timestep", "50", "--steps", "400", "--log-every", "1",
                          "--log", log, "--quiet"], "the run blew up at step", "lower --timestep (now 50 fs)",
                 f"{log} holds")
    rows = list(csv.DictReader(open(log)))
    assert rows and int(rows[-1]["step"]) < 400 and f"holds {len(rows)} log row(s)" in line


def test_openmm_md_blow_up_is_an_error(capsys, stiff_model, tmp_path):
    fails(capsys, ["md", stiff_model, "ethanol", "--engine", "openmm", "--ensemble", "nvt", "--timestep", "50",
                   "--steps", "400", "--log-every", "1", "--quiet"], "the run blew up at step")


def test_md_writes_as_it_goes_the_same_rows_as_the_result(model, tmp_path):
    """The streamed files hold every row and frame of the run, in the format write_log writes."""
    from so3krates.engines import EngineSpec, MDSettings, initial_state, run_md
    from so3krates.md import write_log
    log, traj = tmp_path / "md.csv", tmp_path / "md.xyz"
    assert cli(["md", str(model), "ethanol", "--steps", "12", "--log-every", "3", "--traj-every", "4",
                "--log", str(log), "--traj", str(traj), "--quiet"]) == 0
    settings = MDSettings(steps=12, log_every=3, traj_every=4)
    result = run_md(EngineSpec("ase"), str(model), initial_state(read_structure("ethanol"), 300.0, 0), settings,
                    progress=False)
    write_log(str(tmp_path / "ref.csv"), result)
    assert log.read_text() == (tmp_path / "ref.csv").read_text()
    frames = read(traj, ":")
    assert [f.info["step"] for f in frames] == [0, 4, 8, 12]
    np.testing.assert_allclose(frames[-1].positions, result.frames[-1].positions, atol=1e-9)


def test_lammps_md_streams_every_row(model, tmp_path):
    log, traj = tmp_path / "md.csv", tmp_path / "md.xyz"
    assert cli(["md", str(model), "ethanol", "--engine", "lammps", "--steps", "20", "--log-every", "5",
                "--traj-every", "10", "--log", str(log), "--traj", str(traj), "--quiet"]) == 0
    assert [int(r["step"]) for r in csv.DictReader(open(log))] == [0, 5, 10, 15, 20]
    assert [f.info["step"] for f in read(traj, ":")] == [0, 10, 20]


def test_ctrl_c_during_md_keeps_the_rows_so_far(model, tmp_path):
    log, traj = tmp_path / "md.csv", tmp_path / "md.xyz"
    argv = ["md", str(model), "ethanol", "--steps", "100000000", "--log-every", "1", "--traj-every", "1",
            "--log", str(log), "--traj", str(traj), "--quiet"]
    proc = start(argv)
    while proc.poll() is None and (not log.exists() or len(log.read_text().splitlines()) < 4):
        time.sleep(0.2)
    stdout, stderr = interrupt(proc)
    line = one_error_line(subprocess.CompletedProcess(argv, 130, stdout, stderr), "md", "interrupted")
    rows = list(csv.DictReader(open(log)))
    frames = read(traj, ":")
    assert f"{log} holds {len(rows)} log row(s) up to step {rows[-1]['step']}" in line
    assert f"{traj} holds {len(frames)} frame(s)" in line
    assert [int(r["step"]) for r in rows] == list(range(len(rows)))


@pytest.mark.mpi
def test_a_failed_multi_rank_lammps_run_keeps_its_log(capsys, model):
    line = fails(capsys, ["md", model, "NH3", "--engine", "lammps", "--ranks", "2", "--steps", "2", "--quiet"],
                 "LAMMPS", "failed with exit code", "not in model", "its input, log and dump are kept in")
    folder = Path(line.rsplit("kept in ", 1)[1])
    assert (folder / "log.lammps").is_file() and (folder / "in.lammps").is_file()
    assert "ERROR" in (folder / "log.lammps").read_text() + (folder / "stdout.txt").read_text()
    import shutil
    shutil.rmtree(folder)


def test_a_failed_in_process_lammps_run_keeps_its_log(capsys, model):
    line = fails(capsys, ["md", model, "NH3", "--engine", "lammps", "--steps", "2", "--quiet"],
                 "LAMMPS failed", "not in model", "its input, log and dump are kept in")
    folder = Path(line.rsplit("kept in ", 1)[1])
    assert (folder / "log.lammps").is_file()
    import shutil
    shutil.rmtree(folder)


def test_lammps_runs_have_no_time_limit():
    import inspect

    from so3krates.lammps_pair.runner import run_lammps
    assert inspect.signature(run_lammps).parameters["timeout"].default is None


# --- validate, evaluate, sample --------------------------------------------------------------------------

@pytest.mark.parametrize("engines, phrase", [
    (",", "no engine in ','"), (" , ,", "no engine in"), ("ase,gromacs", "unknown engine 'gromacs'"),
    ("openmm:2", "only lammps takes a rank count"), ("lammps:0", "the rank count must be a positive integer"),
], ids=["comma", "blanks", "unknown engine", "ranks for openmm", "zero ranks"])
def test_validate_engine_lists(capsys, model, engines, phrase):
    fails(capsys, ["validate", model, "ethanol", "--engines", engines, "--steps", "2", "--quiet"], phrase)


def test_validate_json_in_a_missing_folder_fails_before_the_run(capsys, model, tmp_path):
    fails(capsys, ["validate", model, "ethanol", "--engines", "ase", "--steps", "100000",
                   "--json", tmp_path / "nodir" / "r.json", "--quiet"], "cannot write --json", "does not exist")


def test_evaluate_batch_size_zero(capsys, model, data):
    fails(capsys, ["evaluate", model, data, "--batch-size", "0"], "--batch-size must be a positive number")


def test_evaluate_json_is_a_folder(capsys, model, data, tmp_path):
    fails(capsys, ["evaluate", model, data, "--json", tmp_path], "--json", "is a folder; give a file name",
          str(tmp_path / "out.json"))


def test_evaluate_unknown_element_in_the_data(capsys, model, tmp_path):
    atoms = read_structure("NH3")
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((4, 3)))
    path = tmp_path / "nh3.xyz"
    write(path, [atoms], format="extxyz")
    fails(capsys, ["evaluate", model, path], "element(s) [7] are not among the model's elements [1, 6, 8]")


def test_sample_output_in_a_missing_folder_fails_before_sampling(capsys, tmp_path):
    fails(capsys, ["sample", "ethanol", "-o", tmp_path / "nodir" / "x.xyz", "--frames", "100000", "--quiet"],
          "cannot write -o", "does not exist")


def test_ctrl_c_during_sample_keeps_the_frames_so_far(tmp_path):
    out = tmp_path / "x.xyz"
    argv = ["sample", "ethanol", "-o", str(out), "--frames", "100000", "--stride", "1", "--equilibration", "0",
            "--quiet"]
    proc = start(argv)
    while proc.poll() is None and (not out.exists() or out.read_text().count("Properties=") < 3):
        time.sleep(0.2)
    stdout, stderr = interrupt(proc)
    line = one_error_line(subprocess.CompletedProcess(argv, 130, stdout, stderr), "sample", "interrupted")
    frames = read(out, ":")
    assert f"{out} holds the {len(frames)} frame(s) labelled so far" in line
    assert len(frames) >= 3 and all(np.isfinite(f.get_forces()).all() for f in frames)


# --- tests do not depend on the clock -------------------------------------------------------------------

def test_no_test_trains_for_a_wall_clock_budget():
    """Training in tests runs a fixed number of epochs (seeded): results do not depend on load."""
    flag = "--max" + "-time"
    offenders = [p.name for p in TESTS.glob("*.py") if p.name != Path(__file__).name and flag in p.read_text()]
    assert offenders == []


def test_validate_of_a_blown_up_run_fails(capsys, stiff_model):
    assert cli(["validate", str(stiff_model), "ethanol", "--engines", "ase", "--timestep", "50", "--steps", "20",
                "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "FAILED:" in out and "ase: NVE drift" in out and "PASSED" not in out


def test_a_lammps_deck_refuses_a_damaged_file(model, damaged, tmp_path):
    """A user's own LAMMPS input loads the model in C++, without so3krates' Python checks: the pair
    style checks the archive's CRC-32s itself (libtorch does not)."""
    from so3krates.lammps_pair.runtime import new_lammps, plugin_path
    from so3krates.lammps_pair.system import lammps_system, write_data
    system = lammps_system(read_structure("ethanol"))
    write_data(str(tmp_path / "data.lmp"), system)

    def run(path):
        lmp = new_lammps()
        try:
            for command in ["units metal", "atom_style atomic", f"boundary {system.boundary}", "newton on",
                            f"plugin load {plugin_path()}", f"read_data {tmp_path / 'data.lmp'}",
                            "pair_style so3krates", f"pair_coeff * * {path} {' '.join(system.type_symbols)}",
                            "run 0"]:
                lmp.command(command)
            return lmp.get_thermo("pe")
        finally:
            lmp.close()

    assert run(model) < 0.0                      # the good file runs
    with pytest.raises(Exception, match=r"is damaged \(.*data/.*: its CRC-32 does not match the archive\)"):
        run(damaged)
