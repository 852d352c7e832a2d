"""Accuracy against training wall-clock time on rMD17 ethanol (default preset, default recipe).

Trains on ../shared/data/rmd17_ethanol/train.xyz (950 train / 50 validation), saves EMA snapshots
after the given minutes, evaluates each on ethanol_reduced_100_kcal.xyz (a disjoint set, kcal/mol)
and writes benchmarks/results/accuracy_rmd17_ethanol.json.

    python benchmarks/accuracy_rmd17_ethanol.py --minutes 10 30 60 [--qkv-projections full]

A longer run continues the same one (same weights, optimizer, scheduler and RNG state) and
evaluates every snapshot, old and new (the result file keeps the latest run of each preset, q/k/v
form and longest budget):

    python benchmarks/accuracy_rmd17_ethanol.py --minutes 10 30 60 90 120 150 --out RUN --resume
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import record_run  # noqa: E402
from so3krates.model.evaluate import evaluate
from so3krates.model.train import TrainOptions, train

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SO3KRATES_SHARED_DATA", ROOT.parent / "shared" / "data")) / "rmd17_ethanol"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, nargs="+", default=[10, 30, 60])
    p.add_argument("--preset", default="default")
    p.add_argument("--out", help="run folder (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--qkv-projections", choices=["per_head", "full"], default=None,
                   help="the q/k/v projections' form (default: the preset's, per_head)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 2, the machine's cores)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out up to the largest --minutes")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "accuracy_rmd17_ethanol.json"))
    args = p.parse_args()
    train_file, test_file = DATA / "train.xyz", DATA / "ethanol_reduced_100_kcal.xyz"
    if not train_file.is_file() or not test_file.is_file():
        print(f"skipped: {DATA} does not hold train.xyz and ethanol_reduced_100_kcal.xyz")
        return 0
    if args.resume and not args.out:
        p.error("--resume needs --out, the run folder to continue")
    out = Path(args.out or tempfile.mkdtemp(prefix="so3krates_rmd17_"))
    times = sorted(60.0 * m for m in args.minutes)
    options = TrainOptions(train=str(train_file), out=str(out), valid_fraction=50 / 1000, preset=args.preset,
                           max_time=times[-1], seed=args.seed, threads=args.threads, progress=False, snapshot_times=times,
                           resume=args.resume,
                           model={"qkv_projections": args.qkv_projections} if args.qkv_projections else {})
    started = time.perf_counter()
    train(options)
    wall = time.perf_counter() - started
    state = torch.load(out / "last.ckpt", weights_only=True)["training"]
    history = state["history"]
    throughput = [r["train_structures_per_s"] for r in history]
    rows = []
    for t in times:
        snapshot = out / f"snapshot_{int(t)}s.ckpt"
        if not snapshot.exists():  # training ended (by epochs) before this time
            continue
        m = evaluate(snapshot, test_file, energy_unit="kcal/mol")
        rows.append({"minutes": t / 60.0, **m})
    result = {
        "command": "python benchmarks/accuracy_rmd17_ethanol.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_average_end": list(os.getloadavg()),
        "benchmark": "rMD17 ethanol: 950 train / 50 validation from train.xyz, test on ethanol_reduced_100_kcal.xyz",
        "preset": args.preset, "qkv_projections": args.qkv_projections or "preset default (per_head)", "recipe": {k: v for k, v in options.to_dict().items()
                                           if k in ("batch_size", "lr", "optimizer", "energy_weight", "forces_weight",
                                                    "warmup_steps", "ema_decay", "dtype")},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
                   f"{torch.get_num_threads()}",
        "epochs": len(history), "training_wall_s": round(wall, 1), "resumed": args.resume,
        "training_s_total": round(float(state["elapsed_s"]), 1),
        "train_structures_per_s_median": sorted(throughput)[len(throughput) // 2] if throughput else None,
        "results": rows, "run_folder": str(out),
    }
    print(f"{'minutes':>8} {'E MAE meV':>10} {'E RMSE meV':>11} {'F MAE meV/A':>12} {'F RMSE meV/A':>13}")
    for r in rows:
        print(f"{r['minutes']:8.1f} {r['energy_mae_meV']:10.2f} {r['energy_rmse_meV']:11.2f} "
              f"{r['forces_mae_meV_per_A']:12.2f} {r['forces_rmse_meV_per_A']:13.2f}")
    print(f"{len(history)} epochs, training throughput {result['train_structures_per_s_median']:.1f} structures/s "
          f"(median over epochs)")
    record_run(args.json, result, key={"preset": args.preset, "qkv_projections": args.qkv_projections or "per_head",
                                       "minutes": max(args.minutes)})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
