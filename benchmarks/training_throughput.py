"""Training throughput: structures per second of the training step (forward, forces by autograd,
loss, second backward, optimizer and EMA update) on fixed batches, variants measured interleaved.

    OMP_NUM_THREADS=1 python benchmarks/training_throughput.py [--data ethanol 3bpa] [--threads 1]
        [--steps 20] [--rounds 3] [--profile]

Each dataset's Trainer (default preset, batch 16) is built once; the same `--steps` batches (a seeded
shuffle of the training set) are then timed in `--rounds` rounds, each round running every variant
once, so machine load falls on all variants alike:
  glibc        the allocator as the process starts (glibc malloc: freed blocks over the mmap
               threshold go back to the kernel and are page-faulted in again by the next step)
  glibc-tuned  glibc with mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=max), what `so3krates train`
               sets for itself (so3krates.allocator.keep_freed_memory)
Figures: wall-clock and process CPU time per structure (CPU time is less sensitive to a busy
machine on one thread). Written to benchmarks/results/training_throughput.json (one entry per
thread count). `--profile` prints the torch.profiler table of three steps instead.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_file import record_run  # noqa: E402

DATA = Path(os.environ.get("SO3KRATES_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
DATASETS = {"ethanol": DATA / "rmd17_ethanol" / "train.xyz", "3bpa": DATA / "3bpa" / "train_300K.xyz"}
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}


def set_glibc(tuned: bool) -> None:
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if tuned:
        mallopt(M_MMAP_MAX, 0)
        mallopt(M_TRIM_THRESHOLD, -1)
    else:
        for key, value in GLIBC_DEFAULTS.items():
            mallopt(key, value)
        ctypes.CDLL(None).malloc_trim(0)


VARIANTS = {"glibc": lambda: set_glibc(False), "glibc-tuned": lambda: set_glibc(True)}


def trainer_for(path: Path, threads: int, folder: str):
    from so3krates.model.train import TrainOptions, Trainer
    return Trainer(TrainOptions(train=str(path), out=folder, preset="default", epochs=1, threads=threads,
                                progress=False, seed=0))


def time_steps(trainer, batches):
    wall, cpu = time.perf_counter(), time.process_time()
    for b in batches:
        trainer._step(b)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20, help="batches of 16 per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--json", default=str(HERE / "results" / "training_throughput.json"))
    args = p.parse_args()
    missing = [name for name in args.data if not DATASETS[name].is_file()]
    if missing:
        print(f"skipped: {', '.join(str(DATASETS[m]) for m in missing)} not found")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="so3krates_throughput_") as tmp:
        for name in args.data:
            trainer = trainer_for(DATASETS[name], args.threads, f"{tmp}/{name}")
            order = torch.randperm(len(trainer.train_graphs), generator=torch.Generator().manual_seed(0))
            batches = [order[16 * k:16 * (k + 1)] for k in range(args.steps)]
            atoms = sum(trainer.train_sizes[k] for b in batches for k in b.tolist())
            structures = sum(len(b) for b in batches)
            time_steps(trainer, batches[:3])   # warm-up: first calls allocate
            if args.profile:
                from torch.profiler import ProfilerActivity, profile
                with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                    time_steps(trainer, batches[:3])
                print(f"--- {name}")
                print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25))
                continue
            totals = {v: [0.0, 0.0] for v in VARIANTS}
            for _ in range(args.rounds):
                for variant, apply in VARIANTS.items():
                    apply()
                    time_steps(trainer, batches[:1])
                    w, c = time_steps(trainer, batches)
                    totals[variant][0] += w
                    totals[variant][1] += c
            for variant, (w, c) in totals.items():
                n = structures * args.rounds
                row = {"data": name, "variant": variant, "structures": n, "atoms_per_structure": atoms / structures,
                       "structures_per_s_wall": n / w, "structures_per_s_cpu": n / c,
                       "atoms_per_s_wall": atoms * args.rounds / w}
                rows.append(row)
                print(f"{name:8s} {variant:12s} {row['structures_per_s_wall']:7.1f} structures/s wall, "
                      f"{row['structures_per_s_cpu']:7.1f} per CPU second, {row['atoms_per_s_wall']:8.0f} atoms/s wall",
                      flush=True)
    if args.profile:
        return 0
    result = {"command": "python benchmarks/training_throughput.py " + " ".join(sys.argv[1:]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": args.threads,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_average_end": list(os.getloadavg()), "torch": torch.__version__, "rows": rows}
    record_run(args.json, result, {"threads": args.threads})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
