"""Peak memory per atom of one energy + forces evaluation, plain and fused exports.

    python benchmarks/memory.py [--sizes 1000 10000 50000] [--dtypes float32 float64] [--max-gib 12]

Exports the default preset (random weights, tabulated radial filters as `so3krates export` does)
with --fused 0 and --fused 1, then evaluates periodic water boxes of about the given numbers of
atoms, each in a fresh subprocess (1 thread, one at a time, plain and fused alternating): the
resident memory before the call (model loaded, structure built), the peak resident memory after
it (getrusage), and the time of the call. A run whose estimate (the per-atom peak of the same
variant at the previous size: resident memory before the call plus the call's increase per atom
times the atoms) exceeds --max-gib is skipped and listed as such. Writes
benchmarks/results/memory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def resident_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(model: str, molecules: int, calls: int) -> None:
    """Evaluate E + F `calls` times; print one JSON line."""
    import torch
    from so3krates.export import load_exported
    from so3krates.structures import water_box
    module, _ = load_exported(model)
    atoms = water_box(molecules)
    pos, z = torch.tensor(atoms.positions), torch.tensor(atoms.numbers)
    cell, pbc = torch.tensor(atoms.cell.array), torch.tensor(atoms.pbc)
    before = resident_mb()
    times = []
    with torch.jit.optimized_execution(False):   # as the engines run it
        for _ in range(calls):
            start = time.perf_counter()
            out = module.compute(pos, z, cell, pbc)
            times.append(time.perf_counter() - start)
            del out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"atoms": len(atoms), "rss_before_mb": before, "peak_rss_mb": peak, "times_s": times}))


def run_child(model: Path, molecules: int, calls: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = ["nice", "-n", "5", sys.executable, __file__, "--child", str(model), str(molecules), str(calls)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000], help="atoms (about)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--variants", nargs="+", default=["plain", "fused"], choices=["plain", "fused"])
    parser.add_argument("--max-gib", type=float, default=12.0, help="skip runs estimated above this peak")
    parser.add_argument("--calls", type=int, default=2, help="E+F calls per run below 20,000 atoms (1 above)")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "MOLECULES", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return

    import torch
    from so3krates.export import export_model
    from so3krates.model import So3krates
    from so3krates.model.config import preset
    from results_file import record_run

    torch.manual_seed(0)
    network = So3krates(preset("default", elements=[1, 8], dtype="float64", zbl_repulsion=False))
    rows = []
    with tempfile.TemporaryDirectory(prefix="so3krates-memory-") as tmp:
        for dtype in args.dtypes:
            models = {}
            for variant in args.variants:
                models[variant] = Path(tmp) / f"{dtype}-{variant}.pt"
                export_model(network, models[variant], dtype=dtype, fused=variant == "fused")
            previous = {}   # variant -> (resident MB before the call, call MB per atom) at the last size
            for size in args.sizes:
                for variant in args.variants:
                    before_mb, call_mb = previous.get(variant, (0.0, 0.0))
                    estimate_gib = (before_mb + call_mb * size) / 1024
                    if estimate_gib > args.max_gib:
                        row = {"dtype": dtype, "variant": variant, "size": size,
                               "skipped": f"estimated {estimate_gib:.1f} GiB > --max-gib {args.max_gib}"}
                    else:
                        calls = args.calls if size < 20000 else 1
                        row = {"dtype": dtype, "variant": variant, "size": size,
                               **run_child(models[variant], max(size // 3, 1), calls)}
                        if "peak_rss_mb" in row:
                            row["peak_mb_per_atom"] = row["peak_rss_mb"] / row["atoms"]
                            row["call_mb_per_atom"] = (row["peak_rss_mb"] - row["rss_before_mb"]) / row["atoms"]
                            row["ms_per_call"] = 1000 * row["times_s"][-1]
                            previous[variant] = (row["rss_before_mb"], row["call_mb_per_atom"])
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(f"\n{'dtype':8} {'variant':7} {'atoms':>7} {'peak MB':>9} {'MB/atom':>8} {'call MB/atom':>12} {'ms/call':>9}")
    for row in rows:
        if "peak_rss_mb" in row:
            print(f"{row['dtype']:8} {row['variant']:7} {row['atoms']:>7} {row['peak_rss_mb']:>9.0f} "
                  f"{row['peak_mb_per_atom']:>8.3f} {row['call_mb_per_atom']:>12.3f} {row['ms_per_call']:>9.0f}")
        else:
            print(f"{row['dtype']:8} {row['variant']:7} {row['size']:>7} {row.get('skipped') or row.get('error')}")
    result = {"command": "python benchmarks/memory.py " + " ".join(sys.argv[1:]),
              "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
              "torch": torch.__version__, "rows": rows}
    record_run(HERE / "results" / "memory.json", result,
               {"sizes": args.sizes, "dtypes": args.dtypes, "variants": args.variants})


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
