"""Training: the validation loss goes down, resume == uninterrupted, checkpoints load with weights_only."""
import hashlib
import json
import math

import numpy as np
import pytest
import torch

from so3krates.cli import main as cli
from so3krates.model.checkpoint import network_from_checkpoint
from so3krates.model.data import Structure, neighbor_pairs
from so3krates.model.train import (TrainOptions, Trainer, build_config, default_batch_size, energy_shifts,
                                   parse_duration, train)

from conftest import hot_ethanol_frames


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24 GFN2-xTB frames of ethanol at 800 K (about a second of tblite)."""
    return hot_ethanol_frames(tmp_path_factory.mktemp("data") / "ethanol.xyz", frames=24, seed=5)


def options(data, out, **kw):
    base = dict(train=str(data), out=str(out), preset="tiny", valid_fraction=0.25, batch_size=2, lr=1e-2,
                warmup_steps=1, ema_decay=0.5, epochs=3, seed=7, progress=False, threads=1)
    return TrainOptions(**{**base, **kw})


def test_training_lowers_validation_loss(data, tmp_path):
    trainer = Trainer(options(data, tmp_path / "run", epochs=8))
    before = trainer.validate()["loss"]
    best = trainer.run()
    after = torch.load(best, weights_only=True)
    history = after["training"]["history"] if "training" in after else None
    assert history is None   # best.ckpt holds weights only
    rows = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["training"]["history"]
    assert len(rows) == 8
    assert min(r["valid_loss"] for r in rows) < 0.85 * before, (before, [r["valid_loss"] for r in rows])
    # The lines of metrics.csv are the epochs; the learning curve and the config are written.
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 9
    assert (tmp_path / "run" / "learning_curve.png").stat().st_size > 1000
    assert "preset: tiny" in (tmp_path / "run" / "config.yaml").read_text()


def test_resume_equals_uninterrupted_and_checkpoints_are_weights_only(data, tmp_path):
    """A run planned for 3 epochs, stopped after 1 (as by Ctrl-C) and resumed, keeps its
    learning-rate plan: the same weights and learning rates as the uninterrupted run."""
    train(options(data, tmp_path / "full", epochs=3))
    cut = Trainer(options(data, tmp_path / "cut", epochs=3))
    cut.options.epochs = 1
    cut.run()
    train(options(data, tmp_path / "cut", epochs=3, resume=True))
    a = torch.load(tmp_path / "full" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.ckpt", weights_only=True)
    for key in ("state_dict",):
        for name, value in a[key].items():
            torch.testing.assert_close(value, b[key][name], rtol=1e-6, atol=1e-7)
    for name, value in a["training"]["train_state_dict"].items():
        torch.testing.assert_close(value, b["training"]["train_state_dict"][name], rtol=1e-6, atol=1e-7)
    assert a["training"]["epoch"] == b["training"]["epoch"] == 3
    assert [r["lr"] for r in a["training"]["history"]] == [r["lr"] for r in b["training"]["history"]]
    assert a["training"]["schedule"]["total_steps"] == b["training"]["schedule"]["total_steps"] == 27
    # Provenance: the training data hash, and the config, are inside the checkpoint.
    assert a["metadata"]["training_data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    network, payload = network_from_checkpoint(tmp_path / "full" / "best.ckpt")
    assert payload["config"]["features"] == 16 and network.config.elements == [1, 6, 8]
    # The per-element shifts were fitted: the model's energies are near the data's.
    assert float(network.energy_shift.sum()) != 0.0


def test_resume_after_a_time_limit_in_the_middle_of_an_epoch(data, tmp_path):
    train(options(data, tmp_path / "full", epochs=2))
    trainer = Trainer(options(data, tmp_path / "cut", epochs=2))
    trainer.options.max_time = 1e-9   # stops after the first batch
    trainer.run()
    assert torch.load(tmp_path / "cut" / "last.ckpt", weights_only=True)["training"]["batch_in_epoch"] == 1
    train(options(data, tmp_path / "cut", epochs=2, resume=True))
    a = torch.load(tmp_path / "full" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "last.ckpt", weights_only=True)["state_dict"]
    for name, value in a.items():
        torch.testing.assert_close(value, b[name], rtol=1e-6, atol=1e-7)


def test_resume_needs_only_the_run_folder(data, tmp_path, monkeypatch):
    """`so3krates train --out RUN --resume` continues an interrupted run with its own data, budget and
    threads, to the weights of the uninterrupted run."""
    train(options(data, tmp_path / "full", epochs=3, seed=3))
    end_epoch = Trainer._end_epoch

    def interrupted_after_one(self):
        end_epoch(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_end_epoch", interrupted_after_one)
    with pytest.raises(KeyboardInterrupt):
        train(options(data, tmp_path / "cut", epochs=3, seed=3))
    monkeypatch.setattr(Trainer, "_end_epoch", end_epoch)
    assert torch.load(tmp_path / "cut" / "last.ckpt", weights_only=True)["training"]["epoch"] == 1
    assert cli(["train", "--out", str(tmp_path / "cut"), "--resume", "--quiet"]) == 0
    a = torch.load(tmp_path / "full" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.ckpt", weights_only=True)
    assert b["training"]["epoch"] == 3 and b["training"]["options"]["threads"] == 1
    assert b["training"]["options"]["train"] == str(data.resolve())
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(value, b["state_dict"][name], rtol=1e-6, atol=1e-7)
    # Without --resume, no data is an error that says which flag to give.
    assert cli(["train", "--out", str(tmp_path / "new"), "--epochs", "1", "--quiet"]) == 1


def test_the_default_batch_holds_about_100_atoms(data, tmp_path):
    """Without --batch-size: 8 structures of up to 13 atoms, fewer for larger ones, 4 at the least;
    the number chosen is the run's (config.yaml) and is said in the start-up summary."""
    def molecules(atoms):
        return [Structure(np.zeros((atoms, 3)), np.ones(atoms, int), np.zeros((3, 3)), np.zeros(3, bool), 0.0, None)]
    assert [default_batch_size(molecules(n)) for n in (3, 9, 12, 13, 15, 20, 27, 64, 1000)] == [8, 8, 8, 8, 7, 5,
                                                                                                4, 4, 4]
    trainer = Trainer(options(data, tmp_path / "run", batch_size=None, epochs=1))
    assert trainer.options.batch_size == 8 and trainer.n_batches == 3   # 18 ethanol frames
    assert "batch_size: 8" in (tmp_path / "run" / "config.yaml").read_text()
    assert "3 batches of up to 8 (default for 9 atoms a structure" in trainer.startup_summary()


def test_cli_train_and_refusals(data, tmp_path):
    out = tmp_path / "cli"
    assert cli(["train", "--train", str(data), "--out", str(out), "--preset", "tiny", "--epochs", "1",
                "--batch-size", "8", "--valid-fraction", "0.2", "--quiet"]) == 0
    assert (out / "best.ckpt").is_file()
    assert cli(["train", "--train", str(data), "--out", str(out), "--epochs", "1", "--quiet"]) == 1  # exists
    assert cli(["train", "--train", str(data), "--out", str(tmp_path / "x"), "--resume", "--epochs", "1"]) == 1
    assert cli(["train", "--train", str(data), "--out", str(tmp_path / "y"), "--quiet"]) == 1  # no budget
    # A run's config.yaml is a valid --config for a new run.
    assert cli(["train", "--train", str(data), "--out", str(tmp_path / "z"), "--config", str(out / "config.yaml"),
                "--epochs", "1", "--quiet"]) == 0
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90
    with pytest.raises(ValueError, match="duration"):
        parse_duration("ten minutes")


def test_adam_by_default_and_a_run_started_with_amsgrad_resumes_with_it(data, tmp_path, capsys):
    """Adam is the default since 2026-12-04; a run started with AMSGrad (the default before) keeps it on
    --resume, with its optimizer state (AMSGrad's running maximum of the second moments)."""
    common = ["--train", str(data), "--preset", "tiny", "--valid-fraction", "0.25", "--batch-size", "4", "--quiet"]
    assert cli(["train", "--out", str(tmp_path / "new"), "--epochs", "1"] + common) == 0
    assert torch.load(tmp_path / "new" / "last.ckpt", weights_only=True)["training"]["options"]["optimizer"] == "adam"
    assert cli(["train", "--out", str(tmp_path / "old"), "--epochs", "1", "--optimizer", "amsgrad"] + common) == 0
    assert cli(["train", "--train", str(data), "--out", str(tmp_path / "old"), "--epochs", "2", "--resume",
                "--quiet"]) == 0
    resumed = torch.load(tmp_path / "old" / "last.ckpt", weights_only=True)["training"]
    assert resumed["options"]["optimizer"] == "amsgrad" and len(resumed["history"]) == 2
    states = resumed["optimizer"]["state"].values()
    assert states and all("max_exp_avg_sq" in state for state in states)
    # Asking for the other optimizer on resume is refused, naming both.
    assert cli(["train", "--train", str(data), "--out", str(tmp_path / "old"), "--epochs", "3", "--resume",
                "--optimizer", "adam", "--quiet"]) == 1
    assert "--optimizer 'adam' (the run has 'amsgrad')" in capsys.readouterr().err


def test_energy_shifts_by_least_squares_and_isolated_atoms():
    mu = {1: -13.6, 8: -2035.0, 6: -1025.0}
    molecules = [[1, 1], [8, 8], [1, 1, 8], [6, 8], [6, 1, 1, 1, 1]]
    structures = [Structure(np.zeros((len(z), 3)), np.array(z), np.zeros((3, 3)), np.zeros(3, bool),
                            sum(mu[k] for k in z), None) for z in molecules]
    np.testing.assert_allclose(energy_shifts(structures, [1, 6, 8], None), [mu[1], mu[6], mu[8]])
    atoms = [Structure(np.zeros((1, 3)), np.array([z]), np.zeros((3, 3)), np.zeros(3, bool), e, None)
             for z, e in mu.items()]
    np.testing.assert_allclose(energy_shifts(structures, [1, 8], atoms), [mu[1], mu[8]])
    with pytest.raises(ValueError, match=r"atomic number\(s\) \[7\]"):
        energy_shifts(structures, [1, 7], atoms)


def test_average_neighbour_count_from_the_data(data):
    from so3krates.model.data import read_dataset
    structures = read_dataset(data)
    config = build_config(TrainOptions(train=str(data), epochs=1, preset="tiny",
                                       model={"message_normalization": "avg_neighbors"}), structures)
    brute = np.mean([[np.sum((np.linalg.norm(s.positions - p, axis=1) < config.cutoff)) - 1 for p in s.positions]
                     for s in structures])
    assert config.avg_num_neighbors == pytest.approx(brute)
    assert math.isclose(len(neighbor_pairs(structures[0], config.cutoff)[0]) % 2, 0)


def test_budgeted_run_reaches_the_floor_summarises_and_evaluates_the_test_set(data, tmp_path):
    """--epochs 3 with the default warm-up of 200 steps (27 steps in all): warm-up ends inside the
    budget, the last step uses the floor lr; throughput in metrics.csv; the summary and --test."""
    trainer = Trainer(options(data, tmp_path / "run", epochs=3, warmup_steps=200, min_lr=1e-4, test=str(data)))
    used = []
    step = trainer._step
    trainer._step = lambda indices: (step(indices), used.append(trainer.optimizer.param_groups[0]["lr"]))
    trainer.run()
    assert len(used) == 3 * trainer.n_batches == 27
    assert used[-1] == pytest.approx(1e-4, rel=1e-9) and max(used) > 0.9e-2
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    last = dict(zip(header, rows[-1].split(",")))
    assert float(last["train_atoms_per_s"]) == pytest.approx(9 * float(last["train_structures_per_s"]))
    summary = (tmp_path / "run" / "summary.txt").read_text()
    for part in ("18 training, 6 validation, 24 test structures", "not periodic", "forces in 18",
                 "H 108, C 36, O 18", "least squares", "parameters", "9 batches of up to 2 per epoch",
                 "cosine decay planned over the budget", "reached at step 27", "structures/s", "atoms/s",
                 "test (24 structures"):
        assert part in summary, (part, summary)
    errors = json.loads((tmp_path / "run" / "test_errors.json").read_text())
    assert errors["n_structures"] == 24 and errors["forces_mae_meV_per_A"] > 0
    assert f"{errors['energy_mae_meV']:.2f} meV" in summary


def test_cli_schedule_device_and_test_flags(data, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli(["train", "--train", str(data), "--out", str(out), "--preset", "tiny", "--epochs", "1",
                "--schedule", "plateau", "--device", "cpu", "--quiet"]) == 0
    assert "schedule: plateau" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert cli(["train", "--train", str(data), "--out", str(tmp_path / "gpu"), "--preset", "tiny", "--epochs",
                    "1", "--device", "cuda", "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "--device cuda: no CUDA device is available" in err and "--device cpu" in err
        assert len(err.strip().splitlines()) == 1
    assert cli(["train", "--train", str(data), "--out", str(tmp_path / "t"), "--preset", "tiny", "--epochs", "1",
                "--test", str(tmp_path / "missing.xyz"), "--quiet"]) == 1
    assert not (tmp_path / "t" / "last.ckpt").exists()   # refused before training


def test_kept_freed_memory_gives_the_same_loss_and_gradients(data, tmp_path):
    """The training step with glibc keeping freed memory (the default) and without it
    (SO3KRATES_MALLOC_TUNING=0), each in its own process: the same loss and gradients, bit for bit."""
    import os
    import subprocess
    import sys
    script = (
        "import sys, torch\n"
        "from so3krates.model.train import TrainOptions, Trainer, loss_terms\n"
        "from so3krates.model.data import collate\n"
        f"t = Trainer(TrainOptions(train={str(data)!r}, out=sys.argv[1], preset='tiny', epochs=1, seed=3, "
        "threads=1, progress=False))\n"
        "b = collate(t.train_graphs[:8])\n"
        "out = t.potential.evaluate_edges(b['positions'], b['species'], b['idx_i'], b['idx_j'], b['shifts'], "
        "b['batch'], b['num_graphs'], -1, True, False, True)\n"
        "loss = loss_terms(out, b, t.options)[0]\n"
        "loss.backward()\n"
        "import so3krates.allocator as a\n"
        "torch.save({'tuned': a._tuned, 'loss': loss.detach(), "
        "'grads': [p.grad for p in t.potential.parameters()]}, sys.argv[2])\n")
    results = []
    for tuning in ("", "0"):
        out = tmp_path / f"grads{tuning}.pt"
        env = dict(os.environ, SO3KRATES_MALLOC_TUNING=tuning, OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, "-c", script, str(tmp_path / f"run{tuning}"), str(out)], env=env, check=True)
        results.append(torch.load(out, weights_only=True))
    assert results[0]["tuned"] is True and results[1]["tuned"] is False
    assert torch.equal(results[0]["loss"], results[1]["loss"])
    grads = [(a, b) for a, b in zip(results[0]["grads"], results[1]["grads"]) if a is not None or b is not None]
    assert len(grads) > 10 and all(torch.equal(a, b) for a, b in grads)


def test_fused_optimizer_and_foreach_ema_match_the_per_tensor_loop(data, tmp_path):
    """The training step's optimizer (torch's fused Adam/AMSGrad kernel) and EMA update (one foreach
    call) against the per-tensor loops they replace: the same weights to float32 round-off after
    five steps on fixed batches."""
    runs = []
    for fused in (True, False):
        t = Trainer(options(data, tmp_path / f"run{fused}", dtype="float32"))
        assert t.optimizer.defaults["fused"] is True
        start = [p.detach().clone() for p in t.potential.parameters()]
        if not fused:
            t.optimizer = torch.optim.Adam(t.potential.parameters(), lr=t.options.lr,
                                           amsgrad=t.options.optimizer == "amsgrad", foreach=False)
        for k in range(5):
            ema = [p.detach().clone() for p in t.ema.parameters()]
            t._step(torch.arange(2 * k, 2 * k + 2))
            if not fused:   # the EMA as the loop over tensors it was
                decay = min(t.options.ema_decay, (1.0 + t.schedule.steps) / (10.0 + t.schedule.steps))
                for pe, e, p in zip(t.ema.parameters(), ema, t.potential.parameters()):
                    pe.copy_(e.lerp(p.detach(), 1.0 - decay))
        weights = [p.detach().clone() for p in t.potential.parameters()]
        assert sum(not torch.equal(a, b) for a, b in zip(start, weights)) > 10   # the steps moved the weights
        runs.append(weights + [p.detach().clone() for p in t.ema.parameters()])
    for a, b in zip(*runs):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()


def test_weight_decay_is_decoupled_and_only_on_the_weight_matrices(data, tmp_path):
    """--weight-decay: one step from the same weights on the same batch differs from the plain AMSGrad step
    by exactly lr * wd * w on each weight matrix (AdamW's decoupled decay) and not at all elsewhere."""
    runs = []
    for wd in (0.0, 0.1):
        t = Trainer(options(data, tmp_path / f"wd{wd}", dtype="float64", weight_decay=wd))
        start = [p.detach().clone() for p in t.potential.parameters()]
        t._step(torch.arange(0, 2))
        runs.append(([p.detach().clone() for p in t.potential.parameters()], start,
                     t.optimizer.param_groups[0]["lr"]))
    (plain, start, lr), (decayed, start_wd, _) = runs
    assert all(torch.equal(a, b) for a, b in zip(start, start_wd))
    # (a parameter the loss does not reach, e.g. a charge embedding, gets no gradient: optimizers skip it)
    matrices = [k for k, p in enumerate(start) if p.ndim >= 2 and not torch.equal(p, plain[k])]
    assert len(matrices) > 5 and len(matrices) < len(start)
    for k, (a, b, w) in enumerate(zip(plain, decayed, start)):
        if k in matrices:
            assert torch.allclose(a - b, lr * 0.1 * w, rtol=1e-9, atol=1e-15)
            assert (a - b).abs().max() > 0
        else:
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="--weight-decay"):
        TrainOptions(train=str(data), epochs=1, weight_decay=-1.0).validate()
