"""LAMMPS pair_style so3krates: time per MD step per atom on 1 and 2 MPI ranks, and against the
bare exported model on the same atoms.

    python benchmarks/lammps_scaling.py [--preset small] [--dtype float32] [--sizes 1000 5000 25000]
        [--baseline-plugin OLD.so --baseline-model OLD.pt]

The 2-rank runs report the pair style's own end-of-run figures: computed/owned atoms (max over
ranks) and the halo traffic per rank and step. --baseline-*: an older plugin and a model file
it reads (the same weights: the model here is built after torch.manual_seed(0)), timed on one rank
interleaved with the current one (the "before" of a change); with --baseline-two-ranks also on 2
ranks (the 2-rank CPU time of before and now; the baseline model may be the current file when the
old plugin reads it, e.g. a plugin from before stage_layer took num_pairs).

Water boxes (so3krates.structures.water_box, random-weight model: speed does not depend on the
weights). Each rank and the bare model use ONE torch thread, so "2 ranks" uses both cores of a
2-core machine. LAMMPS times are the loop time of a `run` after a warm-up `run` (TorchScript
optimises on its first calls); the bare model is `module.compute` on the periodic box with its
own neighbour search (what the format-1 pair style called on one rank, and as it called it: with
the graph executor's optimisation off), fastest of the same number of calls. Every LAMMPS
configuration runs --repeats times, interleaved, and the fastest run counts.
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

# Warm-up steps before the timed run: TorchScript's profiling executor optimises each stage method
# over its first calls, and the heap grows to its working size; with 2 warm-up steps and 2 timed
# steps the 2-rank figures at 5,000 atoms moved by 0.15 between runs.
WARMUP_STEPS = 4
WORK_PER_SIZE = 20000   # timed steps = WORK_PER_SIZE / atoms, clamped to [3, 20]


def timed_steps(atoms: int) -> int:
    return max(3, min(20, round(WORK_PER_SIZE / atoms)))


def lammps_time(model: Path, data: Path, symbols, ranks: int, steps: int, workdir: Path, plugin=None) -> dict:
    script = "\n".join([
        "units metal", "atom_style atomic", "boundary p p p", "newton on",
        f"plugin load {plugin or plugin_path()}", f"read_data {data}",
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
    out = {"step_ms": 1000 * float(loop[0]) / int(loop[1]), "pair_ms": 1000 * float(pair[2]) / int(loop[1]),
           "ghosts_per_rank": float(ghosts)}
    cpu_use = re.findall(r"(\S+)% CPU use with", proc.stdout)
    if cpu_use:   # CPU time of the timed loop (mean over ranks): what other jobs on the cores do not inflate
        out["step_cpu_ms"] = out["step_ms"] * float(cpu_use[-1]) / 100
    model_cpu = re.findall(r"CPU time per step without the exchanges = (\S+) ms max over ranks, (\S+) ms summed "
                           r"over ranks; in the halo exchanges (\S+) ms", proc.stdout)
    if model_cpu:
        out.update(pair_cpu_max_ms=float(model_cpu[-1][0]), pair_cpu_sum_ms=float(model_cpu[-1][1]),
                   exchange_cpu_ms=float(model_cpu[-1][2]))
    work = re.findall(r"so3krates: computed/owned atoms = (\S+)", proc.stdout)
    halo = re.findall(r"(\S+) halo atoms read .*; (\d+) halo exchanges, (\S+) bytes", proc.stdout)
    if work and halo:
        out.update(computed_over_owned=float(work[-1]), halo_atoms_per_rank=float(halo[-1][0]),
                   halo_exchanges=int(halo[-1][1]), halo_bytes_per_rank_step=float(halo[-1][2]))
    return out


def bare_model_time(module, atoms, steps: int) -> float:
    args = (torch.tensor(atoms.positions), torch.tensor(atoms.numbers), torch.tensor(atoms.cell.array),
            torch.tensor(atoms.pbc))
    # Called as the (format 1) pair style called it: graph-executor optimisation off.
    with torch.jit.optimized_execution(False):
        for _ in range(WARMUP_STEPS + 1):
            module.compute(*args)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            module.compute(*args)
            times.append(time.perf_counter() - start)
    return 1000 * min(times)


NETWORK_BYTES_PER_S = 5e9    # assumed off-node bandwidth per rank (InfiniBand class) for the paper model
NETWORK_LATENCY_S = 5e-6     # assumed per message


def paper_model(row: dict, density: float, num_layers: int, total_atoms: int = 1_000_000,
                ranks=(8, 64, 512)) -> list:
    """Expected efficiency for `total_atoms` water atoms on `ranks` from one measured row (1 and 2
    ranks; the pair style's CPU times when reported, else wall times). The 2-rank run splits the
    cubic box into two slabs: 2 faces of L^2 between the ranks. What a rank computes beyond half the
    1-rank work (halo rows, pairs across the faces computed on both sides; from the median over
    repeats of both ranks' CPU time over the 1-rank CPU time where measured, else the busier rank's
    step beyond half the 1-rank step) is taken as a cost per unit face area. With P
    ranks each rank owns a cube of side l = (N / (P rho))^(1/3) with 6 such faces; the off-node halo
    traffic (bytes scale with the face area) and 6 messages per exchange are added at the assumed
    bandwidth and latency."""
    n2 = row["atoms"]
    side = (n2 / density) ** (1 / 3)
    if "two_ranks_pair_cpu_max_ms" in row:   # CPU times: not inflated by other jobs on the cores
        one, two = row["one_rank_pair_cpu_ms"], row["two_ranks_pair_cpu_max_ms"]
    else:
        one, two = row["one_rank_ms"], row["two_ranks_ms"]
    per_atom_ms = one / n2
    extra_ms = max(0.0, two - one / 2)
    if "two_ranks_work_over_one_median" in row:
        # the work both ranks add to the 1-rank work (median over repeats), shared by the two ranks:
        # steadier than the difference of two single runs on a machine whose speed drifts
        extra_ms = max(0.0, (row["two_ranks_work_over_one_median"] - 1) * one / 2)
    per_area_ms = extra_ms / (2 * side * side)
    bytes_per_area = (row.get("two_ranks_halo_bytes_per_rank_step") or 0.0) / (2 * side * side)
    out = []
    for p in ranks:
        owned = total_atoms / p
        l = (owned / density) ** (1 / 3)
        area = 6 * l * l
        compute_ms = per_atom_ms * owned
        network_ms = 1000 * (bytes_per_area * area / NETWORK_BYTES_PER_S
                             + 6 * 2 * (num_layers - 1) * NETWORK_LATENCY_S)
        step_ms = compute_ms + per_area_ms * area + network_ms
        out.append({"ranks": p, "atoms_per_rank": owned, "subdomain_A": l, "step_ms": step_ms,
                    "halo_bytes_per_rank_step": bytes_per_area * area, "efficiency": compute_ms / step_ms})
    return out


def main():
    # The bare model here and the lmp processes must run on the same allocator (so3krates/allocator.py).
    reexec_with_tcmalloc(sys.argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 25000], help="approximate atom counts")
    ap.add_argument("--baseline-plugin", help="an older plugin .so, timed on one rank against the current one")
    ap.add_argument("--baseline-model", help="the model file for --baseline-plugin (same weights)")
    ap.add_argument("--baseline-two-ranks", action="store_true",
                    help="also time the baseline plugin on 2 ranks (needs --baseline-plugin)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="each LAMMPS configuration is run this many times, interleaved; the fastest counts "
                         "(other jobs on a shared machine only ever slow a run down)")
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
        torch.manual_seed(0)
        export_model(So3krates(cfg), model, args.dtype)
        module = load_exported(model)[0]
        print(f"preset {args.preset} ({cfg.num_layers} layers x {cfg.cutoff} A), {args.dtype}, 1 torch thread per "
              f"rank, torch {torch.__version__}, {os.cpu_count()} cores")
        header = (f"{'atoms':>7}{'steps':>6}{'bare ms':>10}{'1 rank ms':>11}{'2 ranks ms':>11}{'us/atom 1r':>12}"
                  f"{'us/atom 2r':>12}{'eff 2r':>8}{'pair/bare':>10}{'step/bare':>10}{'ghosts/rank 2r':>16}"
                  f"{'comp/owned':>11}{'halo/rank':>10}{'halo kB':>9}{'1r/before':>10}{'cpu 1r/bef':>11}"
                  f"{'cpu eff 2r':>11}{'work 2r/1r':>10}")
        print(header)
        for target in args.sizes:
            atoms = water_box(max(1, round(target / 3)))
            n = len(atoms)
            density = n / atoms.get_volume()
            steps = timed_steps(n)
            system = lammps_system(atoms)
            write_data(str(tmp / "data.lmp"), system)
            bare = bare_model_time(module, atoms, steps)
            runs = {"before": [], "before_two": [], "one": [], "two": []}
            for _ in range(args.repeats):
                if args.baseline_plugin:
                    runs["before"].append(lammps_time(Path(args.baseline_model), tmp / "data.lmp", system.type_symbols,
                                                      1, steps, tmp, plugin=args.baseline_plugin))
                runs["one"].append(lammps_time(model, tmp / "data.lmp", system.type_symbols, 1, steps, tmp))
                if args.baseline_plugin and args.baseline_two_ranks:
                    runs["before_two"].append(lammps_time(Path(args.baseline_model), tmp / "data.lmp",
                                                          system.type_symbols, 2, steps, tmp, plugin=args.baseline_plugin))
                runs["two"].append(lammps_time(model, tmp / "data.lmp", system.type_symbols, 2, steps, tmp))
            fastest = {k: min(v, key=lambda r: r["step_ms"]) if v else None for k, v in runs.items()}
            before, one, two = fastest["before"], fastest["one"], fastest["two"]
            before_two = fastest["before_two"]
            row = {"atoms": n, "timed_steps": steps, "bare_model_ms": bare,
                   "one_rank_ms": one["step_ms"], "one_rank_pair_ms": one["pair_ms"],
                   "two_ranks_ms": two["step_ms"], "two_ranks_pair_ms": two["pair_ms"],
                   "two_ranks_ghosts_per_rank": two["ghosts_per_rank"],
                   "one_rank_us_per_atom": 1000 * one["step_ms"] / n,
                   "two_ranks_us_per_atom": 1000 * two["step_ms"] / n,
                   "two_rank_efficiency": one["step_ms"] / (2 * two["step_ms"]),
                   "pair_over_bare": one["pair_ms"] / bare, "step_over_bare": one["step_ms"] / bare,
                   "two_ranks_computed_over_owned": two.get("computed_over_owned"),
                   "two_ranks_halo_atoms_per_rank": two.get("halo_atoms_per_rank"),
                   "two_ranks_halo_exchanges": two.get("halo_exchanges"),
                   "two_ranks_halo_bytes_per_rank_step": two.get("halo_bytes_per_rank_step")}
            # Per repeat: the 1-rank and 2-rank runs of one repeat ran one after the other, so their
            # ratio is steadier than that of the fastest runs, which may come from different minutes of
            # a shared machine whose speed drifts by +-25 %; the median over repeats is the headline.
            per_repeat = [o["step_ms"] / (2 * t["step_ms"]) for o, t in zip(runs["one"], runs["two"])]
            row.update(two_rank_efficiency_per_repeat=per_repeat,
                       two_rank_efficiency_median=statistics.median(per_repeat))
            if all("pair_cpu_max_ms" in r for r in runs["one"] + runs["two"]):
                cpu_per_repeat = [o["pair_cpu_max_ms"] / (2 * t["pair_cpu_max_ms"]) for o, t in zip(runs["one"], runs["two"])]
                work_per_repeat = [t["pair_cpu_sum_ms"] / o["pair_cpu_max_ms"] for o, t in zip(runs["one"], runs["two"])]
                row.update(two_rank_cpu_efficiency_per_repeat=cpu_per_repeat,
                           two_rank_cpu_efficiency_median=statistics.median(cpu_per_repeat),
                           two_ranks_work_over_one_median=statistics.median(work_per_repeat))
            if "pair_cpu_max_ms" in two:
                # the 2-rank efficiency in CPU time: 1-rank work over twice the busier rank's work
                # (exchanges excluded: on a loaded machine their waiting is mostly the other rank's
                # time slice; their cost is in the wall-clock efficiency and the paper model)
                row.update(one_rank_pair_cpu_ms=one["pair_cpu_max_ms"], two_ranks_pair_cpu_max_ms=two["pair_cpu_max_ms"],
                           two_ranks_exchange_cpu_ms=two["exchange_cpu_ms"],
                           # the work of both ranks over the 1-rank work (1.00: nothing computed twice)
                           two_ranks_work_over_one=two["pair_cpu_sum_ms"] / one["pair_cpu_max_ms"],
                           two_rank_cpu_efficiency=one["pair_cpu_max_ms"] / (2 * two["pair_cpu_max_ms"]))
            if before:
                row.update(before_one_rank_ms=before["step_ms"], one_rank_over_before=one["step_ms"] / before["step_ms"])
                if "step_cpu_ms" in before and "step_cpu_ms" in one:
                    row.update(before_one_rank_cpu_ms=before["step_cpu_ms"], one_rank_cpu_ms=one["step_cpu_ms"],
                               one_rank_cpu_over_before=one["step_cpu_ms"] / before["step_cpu_ms"])
            if before_two and "pair_cpu_max_ms" in before_two and "pair_cpu_max_ms" in two:
                row.update(before_two_ranks_pair_cpu_max_ms=before_two["pair_cpu_max_ms"],
                           before_two_rank_cpu_efficiency=one["pair_cpu_max_ms"] / (2 * before_two["pair_cpu_max_ms"]),
                           two_ranks_cpu_over_before=two["pair_cpu_max_ms"] / before_two["pair_cpu_max_ms"],
                           # per repeat (interleaved): the ratio within a repeat is the steadier one
                           two_ranks_cpu_over_before_per_repeat=[
                               t["pair_cpu_max_ms"] / b["pair_cpu_max_ms"] for t, b in zip(runs["two"], runs["before_two"])])
            rows.append(row)
            print(f"{n:>7}{steps:>6}{bare:>10.1f}{one['step_ms']:>11.1f}{two['step_ms']:>11.1f}"
                  f"{row['one_rank_us_per_atom']:>12.1f}{row['two_ranks_us_per_atom']:>12.1f}"
                  f"{row['two_rank_efficiency']:>8.2f}{row['pair_over_bare']:>10.3f}{row['step_over_bare']:>10.3f}"
                  f"{two['ghosts_per_rank']:>16.0f}{two.get('computed_over_owned', float('nan')):>11.2f}"
                  f"{two.get('halo_atoms_per_rank', float('nan')):>10.0f}"
                  f"{two.get('halo_bytes_per_rank_step', float('nan')) / 1000:>9.0f}"
                  f"{row.get('one_rank_over_before', float('nan')):>10.3f}"
                  f"{row.get('one_rank_cpu_over_before', float('nan')):>11.3f}"
                  f"{row.get('two_rank_cpu_efficiency', float('nan')):>11.2f}"
                  f"{row.get('two_ranks_work_over_one', float('nan')):>10.2f}", flush=True)
            print(f"{'':>7} per repeat (1 and 2 ranks run one after the other): 2-rank efficiency "
                  + " ".join(f"{e:.2f}" for e in per_repeat) + f", median {row['two_rank_efficiency_median']:.2f}"
                  + (f"; in CPU time median {row['two_rank_cpu_efficiency_median']:.2f}, work of both ranks / "
                     f"1 rank median {row['two_ranks_work_over_one_median']:.2f}"
                     if "two_rank_cpu_efficiency_median" in row else ""), flush=True)
            if "two_ranks_cpu_over_before" in row:
                print(f"{'':>7} 2 ranks before: CPU {row['before_two_ranks_pair_cpu_max_ms']:.1f} ms (max over ranks), "
                      f"CPU efficiency {row['before_two_rank_cpu_efficiency']:.2f}; now / before in CPU time "
                      f"{row['two_ranks_cpu_over_before']:.3f} (fastest runs), per repeat "
                      + " ".join(f"{r:.3f}" for r in row["two_ranks_cpu_over_before_per_repeat"]), flush=True)
    model_rows = paper_model(rows[-1], density, cfg.num_layers) if rows else []
    for m in model_rows:
        print(f"paper model, 1,000,000 water atoms on {m['ranks']} ranks: {m['atoms_per_rank']:,.0f} atoms per rank "
              f"({m['subdomain_A']:.0f} A cube), {m['step_ms']:.0f} ms/step, halo {m['halo_bytes_per_rank_step'] / 1e6:.1f} "
              f"MB per rank and step, efficiency {m['efficiency']:.2f}")
    flat = [r["one_rank_us_per_atom"] for r in rows if r["atoms"] >= 900]
    if len(flat) > 1:
        print(f"time per atom (1 rank) from ~1,000 atoms (999 and up): {min(flat):.1f} .. {max(flat):.1f} us "
              f"(spread {100 * (max(flat) / min(flat) - 1):.0f}%)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "command": "python benchmarks/lammps_scaling.py --preset {} --dtype {} --sizes {}{}".format(
            args.preset, args.dtype, " ".join(map(str, args.sizes)),
            f" --baseline-plugin {args.baseline_plugin} --baseline-model {args.baseline_model}"
            if args.baseline_plugin else "") + (" --baseline-two-ranks" if args.baseline_two_ranks else ""),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "allocator": "tcmalloc" if is_preloaded() else "glibc",
        "machine": platform.node(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "preset": args.preset, "dtype": args.dtype, "threads_per_rank": 1, "repeats": args.repeats,
        "wall_time_s": time.perf_counter() - started,
        # other work on the machine distorts the timings; the 1-minute load before and after
        "load_average_start_end": [load_start, os.getloadavg()[0]], "rows": rows,
        "paper_model": {"from_atoms": rows[-1]["atoms"] if rows else None, "network_bytes_per_s": NETWORK_BYTES_PER_S,
                        "network_latency_s": NETWORK_LATENCY_S, "rows": model_rows}}, indent=1) + "\n")
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s; load average {load_start:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
