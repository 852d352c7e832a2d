"""Stable MD, measured (issue 19): train at equal wall-clock, then Langevin replicas at high temperature.

    python benchmarks/stability.py                                   # the whole benchmark (hours)
    python benchmarks/stability.py --datasets rmd17_ethanol --models ours --budget 12m \
        --time 5ps --replicas 4 --run-dir /tmp/stability_bench     # a reduced run
    add --jobs N to run N replicas at a time (one process each, for a machine with N free cores)

For each dataset (rMD17 ethanol at 500 K, 3BPA at 600 K; ../shared/data) and each model:
  1. train on the dataset's training file with the model's own CLI and default recipe for --budget
     of wall-clock at --threads threads (ours: `so3krates train --preset default --max-time`; peers:
     benchmarks/peers/accuracy.py's train_peer, their CLIs stopped at the budget, in their own venv
     made by benchmarks/peers/setup.sh);
  2. run --replicas Langevin replicas of --time at the dataset's temperature from its first frame and
     apply the failure criteria of `so3krates stability` (so3krates/validation/stability.py): ours in
     OpenMM (`stability()`, the float32 export on OpenMM's CPU platform), or with --compile in the ase
     engine through torch.compile (the same float32 file's weights, about twice the steps per second
     of a small molecule); peers through their ASE
     calculators (benchmarks/stability_peer_md.py in their venv, the same criteria applied to the
     written frames by `check_frames`, every PEER_POLL_S while it runs: a replica is stopped at its
     first failure, as ours are);
  3. report stable_fraction, the median time to failure, h(r) MAE against the training data and the
     MD speed in ns/day.
A run folder that already holds a trained model (best.ckpt / the peer's model file) is reused
(--reuse), so the MD part can be re-run without training again.
Results: benchmarks/results/stability.json (one run per dataset, model, budget, time and replicas).
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))
from results_file import record_run  # noqa: E402

DATA = Path(os.environ.get("SO3KRATES_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASETS = {   # name: (training file, temperature K)
    "rmd17_ethanol": (DATA / "rmd17_ethanol" / "train.xyz", 500.0),
    "3bpa": (DATA / "3bpa" / "train_300K.xyz", 600.0),
}
MODELS = ("ours", "so3krates-torch", "mace")
PEER_MODEL_FILE = {"mace": "mace.model", "so3krates-torch": "so3krates_torch.model"}
PEER_POLL_S = 60.0   # seconds between the checks of a running peer replica


def parse_budget(text: str) -> float:
    text = text.strip().lower()
    factor = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], 1)
    return float(text.rstrip("smh")) * factor


def train_ours(folder: Path, train: Path, budget_s: float, threads: int, seed: int, reuse: bool,
               compile: bool = False) -> Path:
    checkpoint = folder / "best.ckpt"
    if not (reuse and checkpoint.is_file()):
        cmd = [str(Path(sys.executable).parent / "so3krates"), "train", "--train", str(train), "--out", str(folder),
               "--preset", "default", "--valid-fraction", "0.05", "--max-time", f"{int(budget_s)}s",
               "--threads", str(threads), "--seed", str(seed), "--quiet", "--overwrite"]
        cmd += ["--compile"] if compile else []
        subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    model = folder / "model_float32.pt"
    from so3krates.export import export_model
    export_model(checkpoint, model, "float32")
    return model


def peer_data(train: Path, folder: Path) -> Path:
    """The training file with REF_energy / REF_forces, the peers' default keys."""
    from ase.io import read, write
    out = folder / "train_ref.xyz"
    if not out.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        frames = read(train, index=":")
        for a in frames:
            a.info["REF_energy"] = a.get_potential_energy()
            a.arrays["REF_forces"] = a.get_forces()
            a.calc = None
            a.info.pop("energy", None)
        write(out, frames, format="extxyz")
    return out


def train_peer(name: str, folder: Path, train: Path, budget_s: float, threads: int, seed: int, reuse: bool) -> Path:
    from accuracy import train_peer as train_with_budget
    model = folder / PEER_MODEL_FILE[name]
    if not (reuse and model.is_file()):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        model, info = train_with_budget(name, folder, peer_data(train, folder.parent / "data"), budget_s, env, seed)
        if model is None:
            raise RuntimeError(f"{name} training failed: {info}")
    return model


def stability_ours(model: Path, start, settings, train: Path, folder: Path, jobs: int) -> dict:
    from so3krates.validation.stability import format_report, json_report, plot_report, stability
    report = stability(str(model), start, settings, engine="ase" if settings.compile else "openmm",
                       reference=str(train),
                       out_dir=str(folder / "replicas"), progress=False, jobs=jobs)
    print(format_report(report), flush=True)
    plot_report(report, str(folder / "stability.png"))
    return json_report(report)


def stability_peer(kind: str, model: Path, start, settings, train: Path, folder: Path, jobs: int) -> dict:
    """The peer's MD in its venv, `jobs` replicas at a time (one thread each); the same criteria on
    its frames."""
    from ase.io import read, write

    from so3krates.validation.stability import (StabilityWatch, check_frames, hr_mae, hr_range_A,
                                                reference_histogram)
    python = HERE / "peers" / ".venv" / "bin" / "python"
    folder.mkdir(parents=True, exist_ok=True)
    start_file = folder / "start.xyz"
    write(start_file, start)
    reference = reference_histogram(str(train), start, hr_range_A(start))
    times, reasons, deviations, walls, simulated, simulated_ps, histograms = [], [], [], [], [], [], []
    running, began = {}, {}
    poll_s = PEER_POLL_S

    def start_replica(k: int) -> None:
        began[k] = time.perf_counter()
        followers[k] = Follower(k)
        running[k] = subprocess.Popen(
            [str(python), str(HERE / "stability_peer_md.py"), "--kind", kind, str(model), str(start_file), "--out",
             str(folder / f"replica_{k}.xyz"), "--temperature", str(settings.temperature), "--time-ps",
             str(settings.time_ps), "--timestep", str(settings.timestep_fs), "--friction",
             str(settings.friction_per_ps), "--seed", str(settings.seed + k), "--check-every", str(settings.check_every)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))

    class Follower:
        """Replica k's trajectory as it is written: new complete frames are read from where the last
        read stopped and checked by one watch, so a check costs only the frames since the last one."""

        def __init__(self, k: int):
            self.path, self.offset, self.failure, self.last_step = folder / f"replica_{k}.xyz", 0, None, 0
            self.watch = StabilityWatch(start, settings, reference.density())

        def update(self) -> None:
            if self.failure is not None or not self.path.is_file():
                return
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                text = fh.read().decode()
            lines, frames, used, i = text.split("\n")[:-1], [], 0, 0   # [:-1]: a line still being written
            while i < len(lines) and i + 2 + int(lines[i]) <= len(lines):
                n = int(lines[i])
                block = "\n".join(lines[i:i + 2 + n]) + "\n"
                frames.append(read(io.StringIO(block), format="extxyz"))
                used, i = used + len(block.encode()), i + 2 + n
            self.offset += used
            if frames:
                self.last_step = int(frames[-1].info["step"])
            self.failure = check_frames(frames, start, settings, watch=self.watch)[0]

    followers = {}

    def wait(k: int) -> Tuple[float, float]:
        """Wait for replica k, stopping every running replica at its first failure (the peer script runs
        its whole time unless the molecule flies apart, and a failed replica's remaining hours tell
        nothing). Returns the MD wall time and the picoseconds it simulated."""
        while running[k].poll() is None:
            try:
                running[k].wait(timeout=poll_s)
            except subprocess.TimeoutExpired:
                pass
            for j in list(running):
                followers[j].update()
                if running[j].poll() is None and followers[j].failure is not None:
                    running[j].terminate()
        stdout, stderr = running[k].communicate()
        stopped = running.pop(k).returncode == -signal.SIGTERM
        if "wall_s" not in stdout and not stopped:
            raise RuntimeError(f"{kind} MD failed: {stderr[-600:]}")
        followers[k].update()
        wall = float(stdout.split("wall_s")[-1]) if "wall_s" in stdout else time.perf_counter() - began[k]
        return wall, followers[k].last_step * settings.timestep_fs / 1000.0

    for k in range(min(jobs, settings.replicas)):
        start_replica(k)
    for k in range(settings.replicas):
        wall, md_ps = wait(k)
        if k + jobs < settings.replicas:
            start_replica(k + jobs)
        walls.append(wall)
        simulated_ps.append(md_ps)
        failure, watch_k = followers[k].failure, followers[k].watch
        failed_ps = None if failure is None else failure.step * settings.timestep_fs / 1000.0
        times.append(failed_ps)
        reasons.append(None if failure is None else failure.reason)
        deviations.append(max(watch_k.bond_deviation_A) if watch_k.bond_deviation_A else None)
        simulated.append(settings.time_ps if failure is None else failed_ps)
        histograms.append(watch_k.hr)
        print(f"{kind} replica {k}: " + ("stable" if failure is None else f"failed at {failed_ps:g} ps: "
                                                                         f"{failure.reason}"), flush=True)
    pooled = histograms[0].merged(histograms[1:])
    return {"engine": "ase (peer calculator)", "temperature_K": settings.temperature, "time_ps": settings.time_ps,
            "replicas": settings.replicas, "criterion": "bonds",
            "stable_fraction": sum(t is None for t in times) / len(times), "time_to_failure_ps": times,
            "median_time_to_failure_ps": float(np.median(simulated)), "max_bond_deviation_A": deviations,
            "failures": reasons, "hr_mae": hr_mae(pooled.density(), reference.density()),
            "ns_per_day": sum(simulated_ps) / 1000.0 / (sum(walls) / 86400.0), "wall_s": sum(walls),
            "jobs": min(jobs, settings.replicas)}


def main() -> int:
    from ase.io import read

    from so3krates.validation.stability import StabilitySettings, parse_time_ps
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--budget", default="60m", help="training wall-clock per model: 60m, 1h, 3600")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time", default="100ps", help="per replica")
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--timestep", type=float, default=0.5, help="fs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="replicas run at the same time (one process each)")
    ap.add_argument("--compile", action="store_true", help="ours: train with --compile and run the MD in the ase "
                    "engine through torch.compile (instead of OpenMM with the TorchScript file)")
    ap.add_argument("--run-dir", default="/tmp/stability_bench")
    ap.add_argument("--reuse", action="store_true", help="reuse models already trained in --run-dir")
    ap.add_argument("--out", default=str(HERE / "results" / "stability.json"))
    args = ap.parse_args()
    budget_s = parse_budget(args.budget)
    time_ps = parse_time_ps(args.time)
    run_dir = Path(args.run_dir)
    for dataset in args.datasets:
        train, temperature = DATASETS[dataset]
        if not train.is_file():
            print(f"skipped {dataset}: {train} is missing")
            continue
        start = read(train, index=0)
        start.calc = None
        start.pbc, start.cell = False, np.zeros((3, 3))   # molecules: their 50 A box plays no part
        settings = StabilitySettings(temperature=temperature, time_ps=time_ps, replicas=args.replicas,
                                     timestep_fs=args.timestep, seed=args.seed, compile=args.compile)
        for name in args.models:
            folder = run_dir / dataset / name
            load_before = os.getloadavg()
            began = time.perf_counter()
            print(f"{dataset} / {name}: training for {budget_s:g} s ...", flush=True)
            if name == "ours":
                model = train_ours(folder, train, budget_s, args.threads, args.seed, args.reuse, args.compile)
                train_wall = time.perf_counter() - began
                report = stability_ours(model, start, settings, train, folder, args.jobs)
            else:
                model = train_peer(name, folder, train, budget_s, args.threads, args.seed, args.reuse)
                train_wall = time.perf_counter() - began
                report = stability_peer(name, model, start, settings, train, folder / "md", args.jobs)
            row = {"command": " ".join(["python", "benchmarks/stability.py", *sys.argv[1:]]),
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                              f"{args.threads} thread(s)",
                   "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
                   "train_data": str(train), "training_wall_s_incl_reused": round(train_wall, 1),
                   "reused_model": bool(args.reuse), "model_file": str(model), **report}
            key = {"dataset": dataset, "model": name, "budget_s": budget_s, "time_ps": time_ps,
                   "replicas": args.replicas, **({"compiled": True} if args.compile and name == "ours" else {})}
            record_run(args.out, row, key)
            print(f"{dataset} / {name}: stable fraction {report['stable_fraction']:.2f}, median time to failure "
                  f"{report['median_time_to_failure_ps']:g} ps, h(r) MAE {report['hr_mae']:.4f}, "
                  f"{report['ns_per_day']:.3g} ns/day", flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
