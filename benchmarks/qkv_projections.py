"""Energy + forces speed of per-head (block-diagonal, the reference) against full F x F q/k/v
projections, ZBL on, on a periodic water box; also per-head without ZBL, for the cost of ZBL.

    python benchmarks/qkv_projections.py [--molecules 512] [--repeat 7] [--threads 1]
        [--dtypes float32 float64] [--out benchmarks/results/qkv_projections.json]

Default preset (F 128, degrees 1-4, 3 layers, 4 heads, 4.5 A), random weights from --seed, each
variant exported with the default tabulated radial filters and run through the ASE calculator
(vesin neighbour list; energy + forces), the variants interleaved, two warm-up calls each, median
of --repeat. Prints and writes (JSON) wall-clock and CPU (process) ms per call and their ratios to
the per-head form; on a shared machine the CPU time is the steadier of the two.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from ase.calculators.calculator import all_changes

VARIANTS = {
    "per-head, ZBL": dict(qkv_projections="per_head", zbl_repulsion=True),
    "full, ZBL": dict(qkv_projections="full", zbl_repulsion=True),
    "per-head, no ZBL": dict(qkv_projections="per_head", zbl_repulsion=False),
}


def run(dtype: str, molecules: int, repeat: int, seed: int, workdir: Path):
    from so3krates.ase import So3kratesCalculator
    from so3krates.export import export_model, load_exported
    from so3krates.model import So3krates
    from so3krates.model.config import preset
    from so3krates.structures import water_box
    atoms = water_box(molecules, seed=seed)
    calcs = {}
    for name, options in VARIANTS.items():
        torch.manual_seed(seed)
        path = workdir / f"{name.replace(', ', '_').replace(' ', '_')}_{dtype}.pt"
        export_model(So3krates(preset("default", elements=[1, 6, 7, 8], dtype=dtype, **options)), path, dtype=dtype)
        calcs[name] = So3kratesCalculator(load_exported(path)[0])
    for calc in calcs.values():
        for _ in range(2):
            calc.calculate(atoms, ["energy", "forces"], all_changes)
    times = {name: [] for name in calcs}
    cpu = {name: [] for name in calcs}
    for _ in range(repeat):
        for name, calc in calcs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            calc.calculate(atoms, ["energy", "forces"], all_changes)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    cpu_ms = {name: 1e3 * statistics.median(t) for name, t in cpu.items()}
    base, base_cpu = ms["per-head, ZBL"], cpu_ms["per-head, ZBL"]
    return {"dtype": dtype, "atoms": len(atoms),
            "variants": {name: {"ms": round(v, 1), "ratio_to_per_head": round(v / base, 3),
                                "cpu_ms": round(cpu_ms[name], 1),
                                "cpu_ratio_to_per_head": round(cpu_ms[name] / base_cpu, 3),
                                "all_ms": [round(1e3 * t, 1) for t in times[name]]} for name, v in ms.items()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--molecules", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--out", default="benchmarks/results/qkv_projections.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes:
            r = run(dtype, args.molecules, args.repeat, args.seed, Path(tmp))
            results.append(r)
            print(f"water {r['atoms']} atoms, {dtype}, {args.threads} thread(s), median of {args.repeat}:")
            for name, v in r["variants"].items():
                print(f"  {name:18s} {v['ms']:8.1f} ms ({v['ratio_to_per_head']:.3f}x per-head), "
                      f"CPU {v['cpu_ms']:8.1f} ms ({v['cpu_ratio_to_per_head']:.3f}x)")
    record = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.platform()}",
              "torch": torch.__version__, "threads": args.threads,
              "allocator": "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc",
              "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
