"""Accuracy within a training wall-clock budget: rMD17 ethanol and 3BPA, our schedules and the peers.

    OMP_NUM_THREADS=1 python benchmarks/accuracy_budget.py --data ethanol 3bpa --budgets 10m 20m 60m
        [--schedules cosine plateau] [--models ours so3krates-torch mace] [--parallel] [--compile]
        [--run-dir /tmp/accuracy_budget] [--json benchmarks/results/accuracy_budget.json]

Data (../shared/data):
  ethanol  train on rmd17_ethanol/train.xyz (1000 frames; 5 % split off for validation), test on the
           disjoint ethanol_reduced_100_kcal.xyz (kcal/mol, converted once to eV)
  3bpa     3bpa/train_300K.xyz (500 frames) split with seed 0 into 400 for training (5 % of them
           for validation) and 100 held out for the test
Ours: `so3krates train --preset default --max-time BUDGET --threads 1 --schedule S` for each
--schedules entry (cosine: the budget-planned default; plateau: the recipe before it), then
`so3krates evaluate` of best.ckpt on the test file. The peers (So3krates-torch, MACE) are trained
with benchmarks/peers/accuracy.py's code (their own CLIs and defaults, stopped at the budget) when
benchmarks/peers/.venv exists (benchmarks/peers/setup.sh), on the same training file.
With --compile, ours trains with `so3krates train --compile` (the compiled step; its compilation
counts in the budget) and its rows are "ours (S, compiled)"; without it, with `--no-compile` (the eager
step: `so3krates train` alone compiles runs of 10 minutes or more).
--variants compares training options against each other: each entry is a string of extra
`so3krates train` options ("" for the defaults), e.g. --variants "" "--lr 4e-3 --forces-weight 1000";
each (schedule, variant) is one run, labelled with its options. --seeds repeats everything per seed.
With --parallel, all our runs of one dataset, budget and seed train at the same time (each on one
thread), so that the load of a shared machine falls on them alike; otherwise one after another.
Compiled runs each get an empty compile cache of their own, so compilation counts in every budget.
Results: one entry per (dataset, budget) in --json, with the load averages. Each row also has
`file_frames_per_s`: epochs finished x frames in the training file / training seconds, the same
measure of training throughput for all three models (each holds out its own validation frames, and
the peers' validation passes are inside their seconds; a peer's epochs are counted from its
checkpoint names, epoch-N being the N+1-th).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))
from results_file import record_run  # noqa: E402

DATA = Path(os.environ.get("SO3KRATES_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
OURS = Path(sys.executable).parent / "so3krates"
EV_PER_KCAL_MOL = 4.184 / 96.485332


def parse_budget(text: str) -> float:
    from so3krates.model.train import parse_duration
    return parse_duration(text)


def prepare(name: str, folder: Path):
    """(training file, test file in eV, test energy unit for `so3krates evaluate`)."""
    import numpy as np
    from ase.io import read, write
    folder.mkdir(parents=True, exist_ok=True)
    if name == "ethanol":
        return DATA / "rmd17_ethanol" / "train.xyz", DATA / "rmd17_ethanol" / "ethanol_reduced_100_kcal.xyz", "kcal/mol"
    frames = read(DATA / "3bpa" / "train_300K.xyz", index=":")
    order = np.random.default_rng(0).permutation(len(frames))
    train, test = folder / "3bpa_train.xyz", folder / "3bpa_test.xyz"
    write(train, [frames[k] for k in sorted(order[100:])], format="extxyz")
    write(test, [frames[k] for k in sorted(order[:100])], format="extxyz")
    return train, test, "eV"


def count_frames(path: Path) -> int:
    from ase.io import iread
    return sum(1 for _ in iread(path, index=":"))


def peer_copy(path: Path, folder: Path, unit: str) -> Path:
    """The file with REF_energy / REF_forces in eV (the peers' default keys)."""
    from ase.io import read, write
    factor = EV_PER_KCAL_MOL if unit == "kcal/mol" else 1.0
    frames = read(path, index=":")
    for a in frames:
        a.info["REF_energy"] = a.get_potential_energy() * factor
        a.arrays["REF_forces"] = a.get_forces() * factor
        a.calc = None
    out = folder / f"{path.stem}_ref.xyz"
    write(out, frames, format="extxyz")
    return out


def ours_command(train: Path, folder: Path, budget_s: float, schedule: str, seed: int, compiled: bool = False,
                 variant: str = ""):
    return [str(OURS), "train", "--train", str(train), "--out", str(folder), "--preset", "default", "--max-time",
            f"{int(budget_s)}s", "--threads", "1", "--seed", str(seed), "--schedule", schedule, "--quiet",
            "--overwrite"] + (["--compile"] if compiled else ["--no-compile"]) + shlex.split(variant)


def ours_row(folder: Path, test: Path, unit: str, proc) -> dict:
    row = {"returncode": proc.returncode}
    metrics = folder / "metrics.csv"
    if metrics.is_file():
        rows = list(csv.DictReader(metrics.open()))
        rates = sorted(float(r["train_structures_per_s"]) for r in rows)
        row.update(epochs=len(rows), steps=int(rows[-1]["step"]), final_lr=float(rows[-1]["lr"]),
                   train_s=float(rows[-1]["elapsed_s"]), structures_per_s_median=rates[len(rates) // 2])
    out = folder / "test.json"
    subprocess.run([str(OURS), "evaluate", str(folder / "best.ckpt"), str(test), "--energy-unit", unit, "--json",
                    str(out)], capture_output=True, check=False)
    if out.is_file():
        row["test"] = json.loads(out.read_text())
    summary = folder / "summary.txt"
    if summary.is_file():
        row["not_converged"] = "not converged" in summary.read_text()
    return row


def train_ours(args, name, train, test, unit, budget_s, seed, train_frames, run_dir, env) -> list:
    """One run per (schedule, variant), side by side with --parallel; their rows."""
    runs = {}
    for schedule in args.schedules:
        for number, variant in enumerate(args.variants):
            label = f"ours ({schedule}{', compiled' if args.compile else ''})" + (f" {variant}" if variant else "")
            folder = run_dir / (f"{name}_{int(budget_s)}s_ours_{schedule}{'_compiled' if args.compile else ''}"
                                + (f"_v{number}" if variant else "") + (f"_seed{seed}" if seed else ""))
            runs[label] = (folder, schedule, variant)
    procs = {}
    for label, (folder, schedule, variant) in runs.items():
        folder.mkdir(parents=True, exist_ok=True)
        run_env = dict(env, TORCHINDUCTOR_CACHE_DIR=str(folder / "inductor_cache")) if args.compile else env
        log = open(folder.parent / f"{folder.name}.log", "w")
        procs[label] = subprocess.Popen(ours_command(train, folder, budget_s, schedule, seed, args.compile, variant),
                                        stdout=log, stderr=subprocess.STDOUT, env=run_env)
        if not args.parallel:
            procs[label].wait()
    rows = []
    for label, proc in procs.items():
        proc.wait()
        row = {"model": label, **ours_row(runs[label][0], test, unit, proc)}
        if row.get("train_s"):
            row["file_frames_per_s"] = row["epochs"] * train_frames / row["train_s"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=["ethanol", "3bpa"], choices=["ethanol", "3bpa"])
    p.add_argument("--budgets", nargs="+", default=["10m", "20m", "60m"])
    p.add_argument("--schedules", nargs="+", default=["cosine"], choices=["cosine", "exponential", "plateau"])
    p.add_argument("--models", nargs="+", default=["ours", "so3krates-torch", "mace"],
                   choices=["ours", "so3krates-torch", "mace"])
    p.add_argument("--parallel", action="store_true")
    p.add_argument("--compile", action="store_true", help="ours with `so3krates train --compile` (without it: "
                   "--no-compile, the eager step, as in the rows before `train` chose by the budget)")
    p.add_argument("--variants", nargs="+", default=[""],
                   help='extra `so3krates train` options per run, "" for the defaults')
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--run-dir", default="/tmp/accuracy_budget")
    p.add_argument("--json", default=str(HERE / "results" / "accuracy_budget.json"))
    args = p.parse_args()
    run_dir = Path(args.run_dir)
    peers_venv = HERE / "peers" / ".venv"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for name in args.data:
        train, test, unit = prepare(name, run_dir / "data")
        train_frames = count_frames(train)
        for budget, seed in [(b, s) for b in args.budgets for s in args.seeds]:
            budget_s = parse_budget(budget)
            started = datetime.now(timezone.utc).isoformat(timespec="seconds")
            load_before = os.getloadavg()
            rows = []
            if "ours" in args.models:
                rows += train_ours(args, name, train, test, unit, budget_s, seed, train_frames, run_dir, env)
            peers = [m for m in args.models if m != "ours"]
            if peers and not peers_venv.is_dir():
                print(f"peers skipped: {peers_venv} does not exist (benchmarks/peers/setup.sh installs them)")
            elif peers:
                from accuracy import evaluate, train_peer
                peer_train = peer_copy(train, run_dir / "data", "eV")
                peer_test = peer_copy(test, run_dir / "data", unit)
                for model in peers:
                    path, info = train_peer(model, run_dir / f"{name}_{int(budget_s)}s_{model}", peer_train,
                                            budget_s, env, seed)
                    row = {"model": model, **info}
                    if info.get("latest_checkpoint_epoch") is not None and info.get("train_seconds"):
                        epochs = info["latest_checkpoint_epoch"] + 1
                        row["file_frames_per_s"] = epochs * train_frames / info["train_seconds"]
                    if path is not None:
                        row["test"] = evaluate(model, path, peer_test)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            result = {"command": "python benchmarks/accuracy_budget.py " + shlex.join(sys.argv[1:]),
                      "date": started, "parallel": args.parallel, "seed": seed, "train_data": str(train),
                      "test_data": str(test), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                      "rows": rows}
            key = {"data": name, "budget_s": budget_s, "models": sorted(r["model"] for r in rows)}
            if seed != 0:
                key["seed"] = seed
            record_run(args.json, result, key)
            print(f"wrote {args.json} ({name}, {budget}, seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
