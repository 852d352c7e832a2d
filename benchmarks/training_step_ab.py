"""The compiled training step with its parameters listed once against walking the module tree every
step (as `so3krates train` did before 2026-12-04), interleaved in one process.

    OMP_NUM_THREADS=1 python benchmarks/training_step_ab.py [--data ethanol 3bpa] [--rounds 6] [--steps 100]

For each dataset (default preset and batch size, 1 thread, `--compile`) one Trainer compiles its step
once; then `--rounds` rounds of `--steps` steps alternate between the two variants (the order flips
every round), so machine load falls on both alike. "walked" rebuilds the lists and dicts of parameters
that the clip, the EMA update and the compiled call take before each step, which is what those calls
did on their own before; "listed" uses the lists made once (Trainer.trained, Trainer.averaged,
CompiledForces.params). Prints the median ms per step of each, their ratio, and the time of the
walk alone (2,000 repeats: steadier than the A/B on a noisy machine). 3BPA is the
training part of accuracy_budget.py's split of ../shared/data/3bpa/train_300K.xyz.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def measure(name: str, rounds: int, steps: int, folder: Path) -> dict:
    import torch
    from accuracy_budget import prepare
    from so3krates.model.train import TrainOptions, Trainer

    train = prepare(name, folder / "data")[0]
    trainer = Trainer(TrainOptions(train=str(train), out=str(folder / name), epochs=1000, compile=True,
                                   progress=False, overwrite=True, threads=1))
    if trainer.compiled is None:
        raise SystemExit(f"error: the step of {name} was not compiled ({trainer.step_note})")
    order, bs = torch.randperm(len(trainer.train_graphs), generator=trainer.generator), trainer.options.batch_size
    batches = [order[k * bs:(k + 1) * bs] for k in range(len(order) // bs)]
    start = time.perf_counter()
    trainer._step(batches[0])
    compile_s = time.perf_counter() - start
    listed = (trainer.trained, trainer.averaged, trainer.compiled.params, trainer.compiled.buffers)
    network = trainer.potential.network

    def walk():
        return (list(trainer.potential.parameters()), list(trainer.ema.parameters()),
                dict(network.named_parameters()), dict(network.named_buffers()))

    def walked(batch):
        trainer.trained, trainer.averaged, trainer.compiled.params, trainer.compiled.buffers = walk()
        trainer._step(batch)

    def once(batch):
        trainer.trained, trainer.averaged, trainer.compiled.params, trainer.compiled.buffers = listed
        trainer._step(batch)

    for _ in range(200):
        walk()
    start = time.perf_counter()
    for _ in range(2000):
        walk()
    walk_ms = 1000 * (time.perf_counter() - start) / 2000   # the walk alone: a steady figure, unlike the A/B

    for k in range(20):   # warm-up
        once(batches[k % len(batches)])
    times = {"walked": [], "listed": []}
    for r in range(rounds):
        variants = [("walked", walked), ("listed", once)]
        for label, step in (variants if r % 2 == 0 else variants[::-1]):
            start = time.perf_counter()
            for k in range(steps):
                step(batches[k % len(batches)])
            times[label].append(1000 * (time.perf_counter() - start) / steps)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {"data": name, "compile_s": compile_s, "ms_per_step": medians, "walk_ms": walk_ms,
            "walked_over_listed": medians["walked"] / medians["listed"], "rounds": times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["ethanol", "3bpa"], choices=["ethanol", "3bpa"])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data:
            r = measure(name, args.rounds, args.steps, Path(tmp))
            ms = r["ms_per_step"]
            print(f"{name}: compilation and first step {r['compile_s']:.0f} s; ms per step (median of "
                  f"{args.rounds} rounds of {args.steps}): walked {ms['walked']:.2f}, listed {ms['listed']:.2f}, "
                  f"walked / listed {r['walked_over_listed']:.3f}; the walk alone {r['walk_ms']:.2f} ms "
                  f"({100 * r['walk_ms'] / ms['listed']:.1f} % of a step)", flush=True)


if __name__ == "__main__":
    main()
