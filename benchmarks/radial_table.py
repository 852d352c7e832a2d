"""Tabulated radial filters (model/radial_table.py): error against the exact filters, speed, file size.

    python benchmarks/radial_table.py [--checkpoint best.ckpt] [--points 1024 2048 4096]
        [--atoms 1536] [--threads 1]

Error: float64 exports with each table size against the exact export (`--radial-table 0`) of the
same weights, on rattled ethanol and on a periodic water box: largest energy and force
differences. Weights: the checkpoint if given (e.g. the rMD17 ethanol run of
benchmarks/accuracy_rmd17_ethanol.py), else random weights of the default preset. Speed: energy +
forces + virial of a float32 export on `--atoms` water atoms through `compute` (built-in neighbour
search, graph-executor optimisation off, as the ASE calculator and LAMMPS call it), exact and
tabulated interleaved, fastest of `--repeat` after warm-up. Writes benchmarks/results/radial_table.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from ase.build import molecule

from so3krates.allocator import is_preloaded, reexec_with_tcmalloc
from so3krates.export import export_model, load_exported
from so3krates.model import So3krates
from so3krates.model.checkpoint import network_from_checkpoint
from so3krates.model.config import preset
from so3krates.structures import water_box

ROOT = Path(__file__).resolve().parents[1]


def structures():
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=1)
    return {"ethanol": ethanol, "water 192": water_box(64)}


def run(module, atoms, forces=True):
    periodic = bool(atoms.pbc.any())
    with torch.jit.optimized_execution(False):
        out = module.compute(torch.tensor(atoms.positions), torch.tensor(atoms.numbers),
                             torch.tensor(atoms.cell.array) if periodic else None,
                             torch.tensor(atoms.pbc) if periodic else None, None, None, -1, forces, periodic)
    return {k: v.detach() for k, v in out.items()}


def main():
    reexec_with_tcmalloc(sys.argv)  # time with the allocator the so3krates command uses
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="weights to tabulate (default: random default-preset weights)")
    ap.add_argument("--points", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--atoms", type=int, default=1536)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "radial_table.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        network, _ = network_from_checkpoint(args.checkpoint)
    else:
        torch.manual_seed(0)
        network = So3krates(preset("default", elements=[1, 6, 7, 8]))
    tmp = Path(tempfile.mkdtemp(prefix="so3krates_table_"))

    def exported(points, dtype):
        path = tmp / f"model_{points}_{dtype}.pt"
        export_model(network, path, dtype=dtype, radial_table=points)
        return load_exported(path)[0], path.stat().st_size / 2**20

    errors = []
    exact64, _ = exported(0, "float64")
    systems = structures()
    reference = {name: run(exact64, atoms) for name, atoms in systems.items()}
    print(f"{'points':>7} {'structure':>10} {'max |dE| eV':>12} {'max |dF| eV/A':>14} {'/ max |F|':>10} {'file MB f64':>12}")
    for points in args.points:
        module, size = exported(points, "float64")
        for name, atoms in systems.items():
            out, ref = run(module, atoms), reference[name]
            d_f = float((out["forces"] - ref["forces"]).abs().max())
            row = {"points": points, "structure": name, "max_abs_energy_error_eV": abs(float(out["energy"] - ref["energy"])),
                   "max_abs_force_error_eV_per_A": d_f, "relative_to_max_force": d_f / float(ref["forces"].abs().max()),
                   "file_MiB_float64": size}
            errors.append(row)
            print(f"{points:7d} {name:>10} {row['max_abs_energy_error_eV']:12.1e} {d_f:14.1e} "
                  f"{row['relative_to_max_force']:10.1e} {size:12.1f}")

    atoms = water_box(max(1, args.atoms // 3))
    timed = {p: exported(p, "float32") for p in [0] + args.points}
    for module, _ in timed.values():  # warm-up (first calls allocate and page in)
        run(module, atoms)
        run(module, atoms)
    times = {p: [] for p in timed}
    for _ in range(args.repeat):
        for p, (module, _) in timed.items():
            start = time.perf_counter()
            run(module, atoms)
            times[p].append(1000 * (time.perf_counter() - start))
    speed = []
    print(f"\nwater {len(atoms)} atoms, float32, {args.threads} thread(s), allocator "
          f"{'tcmalloc' if is_preloaded() else 'glibc'}")
    print(f"{'points':>7} {'ms':>9} {'exact / this':>13} {'file MB f32':>12}")
    for p, t in times.items():
        row = {"points": p, "ms": min(t), "ms_all": t, "speedup_over_exact": min(times[0]) / min(t),
               "file_MiB_float32": timed[p][1]}
        speed.append(row)
        print(f"{p if p else 'exact':>7} {row['ms']:9.1f} {row['speedup_over_exact']:12.2f}x {row['file_MiB_float32']:12.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "command": "python benchmarks/radial_table.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
        "cpu_count": os.cpu_count(), "threads": args.threads, "load_average_end": list(os.getloadavg()),
        "allocator": "tcmalloc" if is_preloaded() else "glibc",
        "weights": args.checkpoint or "random, default preset", "errors_float64": errors,
        "speed_float32": {"atoms": len(atoms), "rows": speed}}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
