"""`so3krates train --compile`: the compiled step (model/compiled_step.py) against the eager one."""
import dataclasses
import math
import sys

import pytest
import torch

from so3krates.model.compiled_step import CompiledForces
from so3krates.model.data import collate
from so3krates.model.train import TrainOptions, Trainer, loss_terms

from conftest import hot_ethanol_frames


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 GFN2-xTB frames of ethanol at 800 K."""
    return hot_ethanol_frames(tmp_path_factory.mktemp("data") / "ethanol.xyz", frames=12, seed=2)


def test_compiled_step_gives_the_eager_loss_gradients_forces_and_virial(data, tmp_path):
    """A batch smaller than the compiled shape (so padding atoms and pairs are in it): energies, forces,
    virial, loss and every weight gradient equal the eager step's to float64 round-off; then
    `train --compile` runs on it. (One test: each compilation takes a minute or more.)"""
    trainer = Trainer(TrainOptions(train=str(data), out=str(tmp_path / "run"), preset="tiny", dtype="float64",
                                   batch_size=4, epochs=2, seed=3, threads=1, progress=False, compile=True))
    compiled = trainer.compiled
    assert isinstance(compiled, CompiledForces) and trainer.step_note.startswith("compiled with torch.compile")
    batch = collate(trainer.train_graphs[:1])
    params = list(trainer.potential.parameters())
    results = []
    for evaluate in (lambda: trainer.potential.evaluate_edges(batch["positions"], batch["species"], batch["idx_i"],
                                                              batch["idx_j"], batch["shifts"], batch["batch"],
                                                              batch["num_graphs"], -1, True, True, True),
                     lambda: compiled.evaluate(batch, compute_virial=True)):
        out = evaluate()
        loss = loss_terms(out, batch, trainer.options)[0] + (out["virial"] ** 2).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        results.append((out, loss.detach(), grads))
    (eager, eager_loss, eager_grads), (comp, comp_loss, comp_grads) = results
    assert compiled.max_atoms == 4 * 9 + 1 and batch["positions"].shape[0] == 9   # three structures' worth of padding
    for key in ("energy", "forces", "virial"):
        assert torch.allclose(comp[key], eager[key], rtol=1e-10, atol=1e-12), key
    assert torch.allclose(comp_loss, eager_loss, rtol=1e-10)
    pairs = [(a, b) for a, b in zip(eager_grads, comp_grads) if a is not None]
    assert len(pairs) > 10 and all(b is not None for _, b in pairs)
    scale = max(float(a.abs().max()) for a, _ in pairs)
    assert max(float((a - b).abs().max()) for a, b in pairs) < 1e-9 * scale

    # The run itself takes the compiled path (the same shape: no second compilation) and learns.
    before = [p.detach().clone() for p in params]
    trainer.run()
    assert trainer.compiled is compiled and len(trainer.history) == 2
    assert all(math.isfinite(row["train_loss"]) for row in trainer.history)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.potential.parameters()))
    assert "training step: compiled with torch.compile" in (tmp_path / "run" / "summary.txt").read_text()

    # No reference to None lost per step: with inductor's cpp_wrapper, PyTorch 2.9's compiled backward
    # lost 14 a step, and a 20-minute run (40,000 steps) died at exit in none_dealloc (SIGABRT).
    trainer._step(torch.arange(4))
    none_references = sys.getrefcount(None)
    for _ in range(20):
        trainer._step(torch.arange(4))
    assert sys.getrefcount(None) - none_references > -40


def test_a_failed_compilation_falls_back_to_the_eager_step_and_says_so(data, tmp_path, capsys):
    """If torch.compile fails on the first step (e.g. no C++ compiler: simulated by a function that
    raises as inductor does), the run reports it and trains eagerly."""
    trainer = Trainer(TrainOptions(train=str(data), out=str(tmp_path / "run"), preset="tiny", batch_size=4,
                                   epochs=1, seed=3, threads=1, progress=False, compile=True))

    def no_compiler(*args):
        raise RuntimeError("InductorError: CppCompileError: C++ compile error\nfull log ...")
    trainer.compiled.function = no_compiler
    trainer.out.mkdir(parents=True, exist_ok=True)
    trainer._step(torch.arange(4))
    assert trainer.compiled is None and trainer.schedule.steps == 1
    assert "--compile: uncompiled: torch.compile failed (RuntimeError: InductorError: CppCompileError" in \
        capsys.readouterr().out


def test_without_a_flag_the_step_is_compiled_for_long_runs_of_similar_sizes_only(data, tmp_path):
    """`so3krates train` with neither --compile nor --no-compile compiles when the run is long enough to
    repay the compilation, on a CPU, for structures of similar sizes (the padding stays small); the
    start-up summary says which and how to change it. (Nothing is compiled here: that happens at the first step.)"""
    from so3krates.cli import build_parser
    from so3krates.model.compiled_step import AUTO_MIN_SECONDS, AUTO_MIN_STEPS, automatic_choice
    from so3krates.model.train_cli import options_from_args

    def trainer(name, **options):
        return Trainer(TrainOptions(train=str(data), out=str(tmp_path / name), preset="tiny", batch_size=4, seed=3,
                                    threads=1, progress=False, **options))
    short = trainer("short", epochs=2)
    assert short.compiled is None
    assert short.step_note.startswith("eager PyTorch (automatic: a run shorter than 10 minutes") and \
        short.step_note.endswith("--compile to change)")
    long = trainer("long", max_time=AUTO_MIN_SECONDS)
    assert isinstance(long.compiled, CompiledForces) and "(automatic: a long run; --no-compile to change)" in \
        long.step_note
    assert trainer("long_epochs", epochs=AUTO_MIN_STEPS // long.n_batches + 1).compiled is not None
    assert trainer("both", epochs=2, max_time=2 * AUTO_MIN_SECONDS).compiled is None   # ends after 2 epochs
    refused = trainer("refused", max_time=AUTO_MIN_SECONDS, compile=False)
    assert refused.compiled is None and refused.step_note == "eager PyTorch (--no-compile)"
    assert trainer("asked", epochs=1, compile=True).compiled is not None

    graphs = long.train_graphs
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert automatic_choice(cpu, AUTO_MIN_SECONDS, None, graphs, 4) == (True, "a long run")
    assert automatic_choice(gpu, AUTO_MIN_SECONDS, None, graphs, 4)[0] is False
    # A batch of the largest structures with 3x the mean pairs: the padding would cost what compiling gains.
    big = dataclasses.replace(graphs[0], idx_i=graphs[0].idx_i.repeat(30), idx_j=graphs[0].idx_j.repeat(30))
    ok, why = automatic_choice(cpu, AUTO_MIN_SECONDS, None, list(graphs) + [big] * 4, 4)
    assert not ok and why.startswith("structures of very different sizes")

    parser = build_parser()
    command = ["train", "--train", str(data), "--out", str(tmp_path / "cli"), "--epochs", "1"]
    assert options_from_args(parser.parse_args(command)).compile is None
    assert options_from_args(parser.parse_args(command + ["--compile"])).compile is True
    assert options_from_args(parser.parse_args(command + ["--no-compile"])).compile is False
