"""LAMMPS pair_style so3krates: time per MD step per atom on 1 and 2 MPI ranks, and against the
bare exported model on the same atoms.

    python benchmarks/lammps_scaling.py [--preset small] [--dtype float32] [--sizes 200 1000 5000 25000]

Water boxes (so3krates.structures.water_box, random-weight model: speed does not depend on the
weights). Each rank and the bare model use ONE torch thread, so "2 ranks" uses both cores of a
2-core machine. LAMMPS times are the loop time of a `run` after a warm-up `run` (TorchScript
optimises on its first calls); the bare model is `module.compute` on the periodic box with its
own neighbour search (what the pair style calls on one rank, and called as it calls it: with the
graph executor's optimisation off), median of the same number of calls.
Prints a table and writes benchmarks/results/lammps_scaling.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from so3krates.allocator import is_preloaded, reexec_with_tcmalloc
from so3krates.export import export_model, load_exported
from so3krates.lammps_pair import lmp_command, plugin_path
from so3krates.lammps_pair.runtime import subprocess_env
from so3krates.lammps_pair.system import lammps_system, write_data
from so3krates.model import So3krates
from so3krates.model.config import preset
from so3krates.structures import water_box

WARMUP_STEPS = 2
WORK_PER_SIZE = 4000   # timed steps = WORK_PER_SIZE / atoms, clamped to [2, 10]


def timed_steps(atoms: int) -> int:
    return max(2, min(10, round(WORK_PER_SIZE / atoms)))


def lammps_time(model: Path, data: Path, symbols, ranks: int, steps: int, workdir: Path) -> dict:
    script = "\n".join([
        "units metal", "atom_style atomic", "boundary p p p", "newton on",
        f"plugin load {plugin_path()}", f"read_data {data}",
        "pair_style so3krates", f"pair_coeff * * {model} {' '.join(symbols)}",
        "velocity all create 300 1", "timestep 0.0005", "fix integrate all nve", "thermo 1000",
        f"run {WARMUP_STEPS}", f"run {steps}", ""])
    (workdir / "in.lammps").write_text(script)
    env = subprocess_env()
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(lmp_command(ranks) + ["-nocite", "-in", "in.lammps", "-log", "none"], cwd=workdir,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    loop = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", proc.stdout)[-1]
    pair = re.findall(r"^Pair\s*\|\s*(\S+)\s*\|\s*(\S+)\s*\|\s*(\S+)", proc.stdout, re.M)[-1]
    ghosts = re.findall(r"Nghost:\s+(\S+) ave", proc.stdout)[-1]
    return {"step_ms": 1000 * float(loop[0]) / int(loop[1]), "pair_ms": 1000 * float(pair[2]) / int(loop[1]),
            "ghosts_per_rank": float(ghosts)}


def bare_model_time(module, atoms, steps: int) -> float:
    args = (torch.tensor(atoms.positions), torch.tensor(atoms.numbers), torch.tensor(atoms.cell.array),
            torch.tensor(atoms.pbc))
    # Called as the pair style calls it: graph-executor optimisation off (pair_so3krates.cpp).
    with torch.jit.optimized_execution(False):
        for _ in range(WARMUP_STEPS + 1):
            module.compute(*args)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            module.compute(*args)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    # The bare model here and the lmp processes must run on the same allocator (so3krates/allocator.py).
    reexec_with_tcmalloc(sys.argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 5000, 25000], help="approximate atom counts")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "lammps_scaling.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = preset(args.preset, elements=[1, 8], dtype=args.dtype)
        model = tmp / "model.pt"
        export_model(So3krates(cfg), model, args.dtype)
        module = load_exported(model)[0]
        print(f"preset {args.preset} ({cfg.num_layers} layers x {cfg.cutoff} A), {args.dtype}, 1 torch thread per "
              f"rank, torch {torch.__version__}, {os.cpu_count()} cores")
        header = (f"{'atoms':>7}{'steps':>6}{'bare ms':>10}{'1 rank ms':>11}{'2 ranks ms':>11}{'us/atom 1r':>12}"
                  f"{'us/atom 2r':>12}{'eff 2r':>8}{'pair/bare':>10}{'step/bare':>10}{'ghosts/rank 2r':>16}")
        print(header)
        for target in args.sizes:
            atoms = water_box(max(1, round(target / 3)))
            n = len(atoms)
            steps = timed_steps(n)
            system = lammps_system(atoms)
            write_data(str(tmp / "data.lmp"), system)
            bare = bare_model_time(module, atoms, steps)
            one = lammps_time(model, tmp / "data.lmp", system.type_symbols, 1, steps, tmp)
            two = lammps_time(model, tmp / "data.lmp", system.type_symbols, 2, steps, tmp)
            row = {"atoms": n, "timed_steps": steps, "bare_model_ms": bare,
                   "one_rank_ms": one["step_ms"], "one_rank_pair_ms": one["pair_ms"],
                   "two_ranks_ms": two["step_ms"], "two_ranks_pair_ms": two["pair_ms"],
                   "two_ranks_ghosts_per_rank": two["ghosts_per_rank"],
                   "one_rank_us_per_atom": 1000 * one["step_ms"] / n,
                   "two_ranks_us_per_atom": 1000 * two["step_ms"] / n,
                   "two_rank_efficiency": one["step_ms"] / (2 * two["step_ms"]),
                   "pair_over_bare": one["pair_ms"] / bare, "step_over_bare": one["step_ms"] / bare}
            rows.append(row)
            print(f"{n:>7}{steps:>6}{bare:>10.1f}{one['step_ms']:>11.1f}{two['step_ms']:>11.1f}"
                  f"{row['one_rank_us_per_atom']:>12.1f}{row['two_ranks_us_per_atom']:>12.1f}"
                  f"{row['two_rank_efficiency']:>8.2f}{row['pair_over_bare']:>10.3f}{row['step_over_bare']:>10.3f}"
                  f"{two['ghosts_per_rank']:>16.0f}", flush=True)
    flat = [r["one_rank_us_per_atom"] for r in rows if r["atoms"] >= 900]
    if len(flat) > 1:
        print(f"time per atom (1 rank) from ~1,000 atoms (999 and up): {min(flat):.1f} .. {max(flat):.1f} us "
              f"(spread {100 * (max(flat) / min(flat) - 1):.0f}%)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "command": "python benchmarks/lammps_scaling.py --preset {} --dtype {} --sizes {}".format(
            args.preset, args.dtype, " ".join(map(str, args.sizes))),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "allocator": "tcmalloc" if is_preloaded() else "glibc",
        "machine": platform.node(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "preset": args.preset, "dtype": args.dtype, "threads_per_rank": 1,
        "wall_time_s": time.perf_counter() - started,
        # other work on the machine distorts the timings; the 1-minute load before and after
        "load_average_start_end": [load_start, os.getloadavg()[0]], "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s; load average {load_start:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
