"""`so3krates stability` and `validate --stability`: real OpenMM runs of a trained and of broken models."""
import json

import numpy as np
import pytest
from ase.io import read

from so3krates.cli import main as cli
from so3krates.validation.stability import (DistanceHistogram, StabilitySettings, check_frames, hr_mae, hr_range_A,
                                            parse_stability_option, stability)

from conftest import ethanol

DOCUMENTED_KEYS = {"stable_fraction", "time_to_failure_ps", "median_time_to_failure_ps", "max_bond_deviation_A",
                   "hr_mae", "engine", "temperature_K", "time_ps", "replicas", "criterion"}


def quiet(*_):
    pass


@pytest.mark.slow   # 4,000 steps on OpenMM's Reference platform: 305 s at load 15-19 on 2 cores, ~35 s idle (estimate)
def test_trained_model_is_stable_at_300K_and_reports_the_documented_keys(trained_ethanol, tmp_path):
    out, report_path, plot = tmp_path / "replicas", tmp_path / "stability.json", tmp_path / "stability.png"
    training_data = trained_ethanol.parent / "ethanol.xyz"
    assert cli(["stability", str(trained_ethanol), "ethanol", "--temperature", "300", "--time", "1ps",
                "--replicas", "2", "--reference", str(training_data), "--out", str(out), "--json", str(report_path),
                "--plot", str(plot), "--quiet"]) == 0
    report = json.loads(report_path.read_text())
    assert set(report) >= DOCUMENTED_KEYS
    assert report["engine"] == "openmm" and report["criterion"] == "bonds" and report["replicas"] == 2
    assert report["stable_fraction"] == 1.0 and report["time_to_failure_ps"] == [None, None]
    assert report["median_time_to_failure_ps"] == 1.0
    assert all(0.0 < d < 0.5 for d in report["max_bond_deviation_A"])   # bonds vibrate, none breaks
    # the 300 K run samples a narrower h(r) than the 500 K training data, but the same peaks
    assert 0.0 < report["hr_mae"] < 0.5
    for k in range(2):   # each replica's trajectory, written as it ran: 1 ps every 100 fs
        frames = read(out / f"replica_{k}.xyz", ":")
        assert [f.info["step"] for f in frames] == list(range(0, 2001, 200))
    assert plot.stat().st_size > 10_000


def test_random_weights_are_unstable_with_the_failing_bond_named(export_random):
    report = stability(export_random("stability_random"), ethanol(), StabilitySettings(
        temperature=300, time_ps=1.0, replicas=1), progress=False, log=quiet)
    assert report["stable_fraction"] == 0.0 and report["passed"] is False
    (t,), (reason,) = report["time_to_failure_ps"], report["failures"]
    assert 0.0 < t < 1.0
    assert reason.startswith("bond ") and "from its" in reason, reason   # e.g. "bond C0-C1 is 2.09 A long, ..."
    assert report["max_bond_deviation_A"][0] > 0.5


def test_absurd_time_step_is_unstable_with_the_failing_bond_named(trained_ethanol):
    # 20 fs does not resolve the ~11 fs C-H vibration; checked every step
    report = stability(str(trained_ethanol), ethanol(), StabilitySettings(
        temperature=300, time_ps=2.0, replicas=1, timestep_fs=20.0, check_every=1, traj_every=0),
        progress=False, log=quiet)
    assert report["stable_fraction"] == 0.0
    assert report["failures"][0].startswith("bond "), report["failures"]
    assert report["time_to_failure_ps"][0] < 2.0


def test_compressed_start_fails_on_the_minimum_distance(trained_ethanol):
    atoms = ethanol()
    h = [i for i, z in enumerate(atoms.numbers) if z == 1]
    # move one hydrogen to 0.4 A from another (same direction as it already lies)
    direction = atoms.positions[h[1]] - atoms.positions[h[0]]
    atoms.positions[h[1]] = atoms.positions[h[0]] + 0.4 * direction / np.linalg.norm(direction)
    report = stability(str(trained_ethanol), atoms, StabilitySettings(temperature=300, time_ps=0.5, replicas=1),
                       progress=False, log=quiet)
    assert report["time_to_failure_ps"] == [0.0]
    assert "closer than the minimum distance 0.6 A" in report["failures"][0], report["failures"]
    assert f"H{h[0]}-H{h[1]}" in report["failures"][0] or f"H{h[1]}-H{h[0]}" in report["failures"][0]


def _hr(frames, r_max):
    h = DistanceHistogram(r_max)
    for f in frames:
        h.add(f)
    return h.density()


def test_hr_mae_is_zero_for_identical_inputs_and_grows_with_the_perturbation():
    base = [ethanol(rattle=0.05 * (k + 1)) for k in range(5)]
    r_max = hr_range_A(base[0])
    reference = _hr(base, r_max)
    assert np.sum(reference) * 0.05 == pytest.approx(1.0)   # a density: all N(N-1) pairs within range
    assert hr_mae(reference, _hr([f.copy() for f in base], r_max)) == 0.0
    maes = []
    for scale in (1.02, 1.1, 1.3):   # stretch every distance by a known factor
        stretched = []
        for f in base:
            f = f.copy()
            f.positions = (f.positions - f.positions.mean(0)) * scale
            stretched.append(f)
        maes.append(hr_mae(reference, _hr(stretched, r_max)))
    assert 0.0 < maes[0] < maes[1] < maes[2] <= 2.0


def test_checking_a_written_trajectory_in_two_parts_finds_what_one_pass_finds():
    """check_frames on a trajectory another program writes (a peer's MD): going on with the watch of an
    earlier call over the frames written since gives the same failure and figures as one pass."""
    start, settings = ethanol(), StabilitySettings(temperature=500.0, time_ps=1.0)
    frames = []
    for k in range(12):
        frame = ethanol(rattle=0.02 * (k % 3))
        if k >= 9:   # pull the first hydrogen away from its carbon: the run fails at frame 9
            frame.positions[3] += (frame.positions[3] - frame.positions[0]) * 0.3 * (k - 8)
        frame.info["step"] = k * settings.check_every
        frames.append(frame)
    failure, whole = check_frames(frames, start, settings)
    assert failure is not None and failure.step == 9 * settings.check_every and "bond" in failure.reason
    first, watch = check_frames(frames[:5], start, settings)
    assert first is None
    second, watch = check_frames(frames[5:], start, settings, watch=watch)
    assert (second.step, second.reason) == (failure.step, failure.reason)
    assert watch.times_ps == whole.times_ps and watch.bond_deviation_A == whole.bond_deviation_A
    assert np.array_equal(watch.hr.density(), whole.hr.density())


def test_periodic_cell_uses_the_rdf_criterion(export_random):
    from so3krates.structures import water_box
    report = stability(export_random("stability_random"), water_box(8), StabilitySettings(
        temperature=300, time_ps=0.02, replicas=1, check_every=5, traj_every=0), engine="ase", progress=False,
        log=quiet)
    assert report["criterion"] == "rdf" and report["max_bond_deviation_A"] == [None]


def test_stability_option_parses_and_refuses_bad_text():
    s = parse_stability_option("500K:20ps:4")
    assert (s.temperature, s.time_ps, s.replicas) == (500.0, 20.0, 4)
    assert parse_stability_option("300:500fs").time_ps == 0.5
    for bad in ("300K", "300K:soon", "300K:10ps:0"):
        with pytest.raises(ValueError, match="--stability|--replicas"):
            parse_stability_option(bad)


def test_validate_does_not_pass_a_model_whose_md_is_unstable(export_random, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    code = cli(["validate", export_random("stability_random"), "ethanol", "--engines", "openmm", "--steps", "20",
                "--stability", "300K:1ps", "--json", str(report_path), "--quiet"])
    out = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert code == 1 and report["passed"] is False
    assert report["stability"]["stable_fraction"] == 0.0
    assert any(f.startswith("stability (openmm, 300 K): replica 0 failed") for f in report["failures"])
    assert "FAILED" in out and "bond " in out


def test_replicas_in_parallel_processes_give_the_same_results_as_one_after_another(trained_ethanol, tmp_path):
    # ASE's Langevin is seeded, so a replica repeats bit for bit; each seed gives other bond
    # deviations, so comparing them per replica checks the order of the results too
    settings = StabilitySettings(temperature=300, time_ps=0.1, replicas=3, check_every=10, traj_every=50)
    lines = []
    one_by_one = stability(str(trained_ethanol), ethanol(), settings, engine="ase", progress=False, log=quiet)
    parallel = stability(str(trained_ethanol), ethanol(), settings, engine="ase", progress=False,
                         log=lines.append, jobs=2, out_dir=str(tmp_path / "replicas"))
    assert parallel["jobs"] == 2 and one_by_one["jobs"] == 1
    for key in ("stable_fraction", "time_to_failure_ps", "max_bond_deviation_A", "failures", "seeds"):
        assert parallel[key] == one_by_one[key], key
    assert [r.bond_deviation_A for r in parallel["_replicas"]] == [r.bond_deviation_A for r in one_by_one["_replicas"]]
    assert np.array_equal(parallel["_hr"]["simulation"], one_by_one["_hr"]["simulation"])
    assert [line.split(" (")[0] for line in lines if line.startswith("replica ")] == [
        f"replica {k}" for k in range(3)]
    for k in range(3):   # each process wrote its replica's files
        assert [f.info["step"] for f in read(tmp_path / "replicas" / f"replica_{k}.xyz", ":")] == [0, 50, 100, 150, 200]
    with pytest.raises(ValueError, match="--jobs"):
        stability(str(trained_ethanol), ethanol(), settings, engine="ase", progress=False, log=quiet, jobs=0)
