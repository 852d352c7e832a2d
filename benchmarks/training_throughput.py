"""Training throughput: structures per second of the training step (forward, forces by autograd,
loss, second backward, optimizer and EMA update) on fixed batches, variants measured interleaved.

    python benchmarks/training_throughput.py [--data ethanol 3bpa] [--steps 20] [--rounds 3] [--profile]

For each dataset (default preset, batch 16) the same `--steps` batches (a seeded shuffle of the
training set) are timed in `--rounds` rounds; each round runs every variant once, each in a fresh
process (an allocator setting cannot be undone inside one), so machine load falls on all alike:
  glibc, 1 thread          SO3KRATES_MALLOC_TUNING=0: glibc malloc as it starts (freed blocks over the
                           mmap threshold go back to the kernel and are page-faulted in again)
  glibc-tuned, 1 thread    what `so3krates train` now sets for itself (so3krates.allocator.
                           keep_freed_memory: mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=max)
  glibc-tuned, 2 threads   the same on 2 torch threads
  compiled, 1 thread       glibc-tuned with `so3krates train --compile` (model/compiled_step.py); its
                           three warm-up steps hold the compilation (with an empty
                           compile cache each round), reported as warm-up seconds
  before 12-03, 1 thread   glibc-tuned with the step as it was before 2026-12-03, rebuilt here by
                           patching the worker: the float32 radial basis with its subnormal numbers
                           (not clamped), the harmonics evaluated term by term, the per-tensor
                           Adam loop (the per-tensor EMA loop is not restored)
Figures: wall-clock and process CPU time per structure (on one thread CPU time is less sensitive
to a busy machine; on 2 threads it is the sum over both, so compare 2 threads by wall-clock).
Written to benchmarks/results/training_throughput.json. `--profile` prints the torch.profiler
table of three steps instead (one thread, tuned).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_file import record_run  # noqa: E402

DATA = Path(os.environ.get("SO3KRATES_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
DATASETS = {"ethanol": DATA / "rmd17_ethanol" / "train.xyz", "3bpa": DATA / "3bpa" / "train_300K.xyz"}
BEFORE = "before 12-03, 1 thread"
COMPILED = "compiled, 1 thread"
VARIANTS = {"glibc, 1 thread": ("0", 1), "glibc-tuned, 1 thread": ("", 1), "glibc-tuned, 2 threads": ("", 2),
            BEFORE: ("", 1), COMPILED: ("", 1)}


def restore_the_step_before_12_03() -> None:
    """The three changes of 2026-12-03, undone in this process (see the docstring)."""
    import torch

    from so3krates.model import radial, spherical_harmonics as sh

    def basis_unclamped(self, r):
        log_x = -self.gamma * r.unsqueeze(-1)
        return torch.exp(self.log_binom + self.k * log_x + self.n_minus_k * torch.log(-torch.expm1(log_x)))

    def harmonics_term_by_term(self, u):
        x, y, z = u[:, 0], u[:, 1], u[:, 2]
        return torch.stack([p for l in self.degrees for p in sh._degree(l, x, y, z)], dim=-1)

    radial.BernsteinBasis.forward = basis_unclamped
    sh.SphericalHarmonics.forward = harmonics_term_by_term


def worker(name: str, threads: int, steps: int, profile: bool, mode: str) -> None:
    """One variant in this process: prints {"wall": s, "cpu": s, "structures": n, "atoms": n}."""
    import torch

    before = mode == "before"
    if before:
        restore_the_step_before_12_03()

    from so3krates.model.train import TrainOptions, Trainer
    with tempfile.TemporaryDirectory(prefix="so3krates_throughput_") as tmp:
        trainer = Trainer(TrainOptions(train=str(DATASETS[name]), out=tmp + "/run", preset="default", epochs=1,
                                       threads=threads, progress=False, seed=0, compile=mode == "compiled"))
        if before:
            trainer.optimizer = torch.optim.Adam(trainer.potential.parameters(), lr=trainer.options.lr, amsgrad=True,
                                                 foreach=False)
        order = torch.randperm(len(trainer.train_graphs), generator=torch.Generator().manual_seed(0))
        batches = [order[16 * k:16 * (k + 1)] for k in range(steps)]
        warm = time.perf_counter()
        for b in batches[:3]:   # warm-up: the first calls allocate (and compile)
            trainer._step(b)
        warm = time.perf_counter() - warm
        if profile:
            from torch.profiler import ProfilerActivity, profile as torch_profile
            with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                for b in batches[:3]:
                    trainer._step(b)
            print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25))
            return
        wall, cpu = time.perf_counter(), time.process_time()
        for b in batches:
            trainer._step(b)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        atoms = sum(trainer.train_sizes[k] for b in batches for k in b.tolist())
        print(json.dumps({"wall": wall, "cpu": cpu, "structures": sum(len(b) for b in batches), "atoms": atoms,
                          "warm_up_s": warm}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--steps", type=int, default=20, help="batches of 16 per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="VARIANT",
                   help=f"a subset of: {'; '.join(VARIANTS)} (default: all)")
    p.add_argument("--json", default=str(HERE / "results" / "training_throughput.json"))
    p.add_argument("--worker", nargs=3, metavar=("DATA", "THREADS", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.steps, args.profile, args.worker[2])
        return 0
    missing = [name for name in args.data if not DATASETS[name].is_file()]
    if missing:
        print(f"skipped: {', '.join(str(DATASETS[m]) for m in missing)} not found")
        return 0
    if args.profile:
        for name in args.data:
            print(f"--- {name}", flush=True)
            subprocess.run([sys.executable, __file__, "--worker", name, "1", "eager", "--steps", "3", "--profile"],
                           env=dict(os.environ, OMP_NUM_THREADS="1"), check=True)
        return 0
    rows, ratios, load_before = [], [], os.getloadavg()
    for name in args.data:
        totals = {v: {"wall": 0.0, "cpu": 0.0, "structures": 0, "atoms": 0, "warm_up_s": 0.0} for v in args.variants}
        for _ in range(args.rounds):
            for variant in args.variants:
                tuning, threads = VARIANTS[variant]
                env = dict(os.environ, OMP_NUM_THREADS=str(threads), SO3KRATES_MALLOC_TUNING=tuning)
                if variant == COMPILED:   # an empty compile cache each round: the compile time of a first run
                    env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="so3krates_inductor_")
                out = subprocess.run([sys.executable, __file__, "--worker", name, str(threads),
                                      {BEFORE: "before", COMPILED: "compiled"}.get(variant, "eager"),
                                      "--steps", str(args.steps)],
                                     env=env, capture_output=True, text=True, check=True)
                for key, value in json.loads(out.stdout.strip().splitlines()[-1]).items():
                    totals[variant][key] += value
        for variant, t in totals.items():
            row = {"data": name, "variant": variant, "structures": t["structures"],
                   "atoms_per_structure": t["atoms"] / t["structures"],
                   "structures_per_s_wall": t["structures"] / t["wall"],
                   "structures_per_s_cpu": t["structures"] / t["cpu"],
                   "atoms_per_s_wall": t["atoms"] / t["wall"], "warm_up_s_per_round": t["warm_up_s"] / args.rounds}
            rows.append(row)
            print(f"{name:8s} {variant:24s} {row['structures_per_s_wall']:7.1f} structures/s wall, "
                  f"{row['structures_per_s_cpu']:7.1f} per CPU second, {row['atoms_per_s_wall']:8.0f} atoms/s wall, "
                  f"warm-up {row['warm_up_s_per_round']:.1f} s",
                  flush=True)
        now = "glibc-tuned, 1 thread"
        for slow, fast, label, key in ((BEFORE, now, "now / before 12-03", "now_over_before"),
                                       (now, COMPILED, "compiled / eager", "compiled_over_eager")):
            if slow in totals and fast in totals:
                ratio = {"data": name, f"{key}_wall": totals[slow]["wall"] / totals[fast]["wall"],
                         f"{key}_cpu": totals[slow]["cpu"] / totals[fast]["cpu"]}
                ratios.append(ratio)
                print(f"{name:8s} {label} (1 thread): {ratio[key + '_wall']:.2f}x wall, "
                      f"{ratio[key + '_cpu']:.2f}x per CPU second", flush=True)
    import torch
    result = {"command": "python benchmarks/training_throughput.py " + " ".join(sys.argv[1:]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()), "torch": torch.__version__,
              "steps": args.steps, "rounds": args.rounds, "rows": rows, "ratios": ratios}
    record_run(args.json, result, {"data": sorted(args.data), "variants": sorted(args.variants)})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
