"""Time one energy+forces evaluation of the exported model on the CPU.

    python benchmarks/model_speed.py [--preset default] [--sizes 9 100 1000 10000] [--repeat 5]

Prints milliseconds per evaluation (median of --repeat after a warm-up) for ethanol and
periodic water boxes, float32 and float64, and writes benchmarks/results/model_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
from so3krates.model.config import preset
from so3krates.structures import water_box


def systems(sizes):
    out = []
    for n in sizes:
        if n <= 9:
            out.append(("ethanol", molecule("CH3CH2OH")))
        else:
            atoms = water_box(max(n // 3, 1))
            out.append((f"water {len(atoms)}", atoms))
    return out


def time_neighbours(module, atoms, repeat):
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array) if atoms.pbc.any() else None
    pbc = torch.tensor(atoms.pbc) if atoms.pbc.any() else None
    module.neighbors(pos, cell, pbc)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        module.neighbors(pos, cell, pbc)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def time_model(module, atoms, repeat):
    pos = torch.tensor(atoms.positions)
    z = torch.tensor(atoms.numbers)
    cell = torch.tensor(atoms.cell.array) if atoms.pbc.any() else None
    pbc = torch.tensor(atoms.pbc) if atoms.pbc.any() else None
    times = []
    with torch.jit.optimized_execution(False):  # as the ASE calculator and the LAMMPS pair style run it
        module.compute(pos, z, cell, pbc)  # warm-up
        for _ in range(repeat):
            t = time.perf_counter()
            module.compute(pos, z, cell, pbc)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main():
    # Time the model with the allocator the so3krates command uses (so3krates/allocator.py).
    reexec_with_tcmalloc(sys.argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--sizes", type=int, nargs="+", default=[9, 100, 1000, 10000])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "model_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        modules = {}
        for dtype in ("float32", "float64"):
            net = So3krates(preset(args.preset, elements=[1, 6, 7, 8], dtype=dtype))
            export_model(net, f"{tmp}/{dtype}.pt", dtype=dtype)
            modules[dtype] = load_exported(f"{tmp}/{dtype}.pt")[0]
        print(f"preset {args.preset}, {args.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}")
        print(f"{'system':<14}{'atoms':>7}{'float32 ms':>12}{'float64 ms':>12}{'f32 us/atom':>13}"
              f"{'neighbours ms':>15}")
        for name, atoms in systems(args.sizes):
            ms = {d: time_model(m, atoms, args.repeat) for d, m in modules.items()}
            nl = time_neighbours(modules["float32"], atoms, args.repeat)
            rows.append({"system": name, "atoms": len(atoms), "float32_ms": ms["float32"], "float64_ms": ms["float64"],
                         "neighbour_search_ms": nl})
            print(f"{name:<14}{len(atoms):>7}{ms['float32']:>12.2f}{ms['float64']:>12.2f}"
                  f"{1000 * ms['float32'] / len(atoms):>13.1f}{nl:>15.2f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "command": "python benchmarks/model_speed.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "allocator": "tcmalloc" if is_preloaded() else "glibc", "machine": platform.node(),
        "cpu_count": os.cpu_count(), "threads": args.threads, "preset": args.preset, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
