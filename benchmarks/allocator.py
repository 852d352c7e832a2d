"""glibc's default malloc, glibc tuned in process (what loading a model does, so3krates/allocator.py)
and tcmalloc (when the system has it) for one energy+forces evaluation of the model.

Each (allocator, size) runs in a fresh process (an allocator is chosen at process start), the
allocators interleaved size by size; per process: `repeat` calls after one warm-up, fastest kept,
with the user and system CPU time, minor page faults and peak RSS of that process.

    python benchmarks/allocator.py --sizes 1000 5000 10000 [--edge-pass fused|plain]
        [--allocators glibc glibc-tuned tcmalloc]

The model is the default export's: radial filters tabulated and the fused edge operator
(--edge-pass fused, the default since issue 20), or the plain PyTorch edge pass.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(n: int, preset_name: str, dtype: str, repeat: int, edge_pass: str) -> dict:
    import tempfile

    import torch
    from so3krates.allocator import tune_glibc_malloc
    from so3krates.export import export_model, load_model
    from so3krates.model.config import preset
    from so3krates.model.network import So3krates
    from so3krates.structures import water_box
    torch.set_num_threads(1)
    tune_glibc_malloc()   # as loading an exported model does with SO3KRATES_MALLOC_TUNING=1
    torch.manual_seed(0)
    network = So3krates(preset(preset_name, elements=[1, 8], dtype=dtype))
    with tempfile.TemporaryDirectory() as tmp:
        export_model(network, f"{tmp}/model.pt", dtype=dtype, fused=edge_pass == "fused")
        module, _ = load_model(f"{tmp}/model.pt")
    atoms = water_box(max(n // 3, 1))
    args = (torch.tensor(atoms.positions), torch.tensor(atoms.numbers), torch.tensor(atoms.cell.array),
            torch.tensor([True, True, True]))
    module.compute(*args)
    best = None
    for _ in range(repeat):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        module.compute(*args)
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        row = {"ms": 1e3 * (t1 - t0), "user_ms": 1e3 * (r1.ru_utime - r0.ru_utime),
               "sys_ms": 1e3 * (r1.ru_stime - r0.ru_stime), "page_faults": r1.ru_minflt - r0.ru_minflt}
        best = row if best is None or row["ms"] < best["ms"] else best
    best.update(atoms=len(atoms), us_per_atom=1e3 * best["ms"] / len(atoms),
                peak_rss_MB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    p.add_argument("--preset", default="default")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--edge-pass", choices=["fused", "plain"], default="fused")
    p.add_argument("--allocators", nargs="+", choices=["glibc", "glibc-tuned", "tcmalloc"],
                   default=["glibc", "glibc-tuned", "tcmalloc"])
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "allocator.json"))
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.preset, args.dtype, args.repeat, args.edge_pass)))
        return 0
    from so3krates.allocator import OPT_OUT, TUNING_OPT_OUT, tcmalloc_library, with_tcmalloc
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", OPT_OUT, TUNING_OPT_OUT)}
    envs = {"glibc": {**base, OPT_OUT: "0"}, "glibc-tuned": {**base, OPT_OUT: "0", TUNING_OPT_OUT: "1"}}
    if tcmalloc_library() is not None:
        envs["tcmalloc"] = with_tcmalloc(base)
    else:
        print("no tcmalloc on this system (Debian: apt-get install libtcmalloc-minimal4): glibc only")
    envs = {name: env for name, env in envs.items() if name in args.allocators}
    rows = []
    print(f"{'atoms':>6} {'allocator':>11} {'ms':>9} {'us/atom':>8} {'user ms':>8} {'sys ms':>8} {'faults':>9} "
          f"{'peak MB':>8}", flush=True)
    for n in args.sizes:
        for name, env in envs.items():
            cmd = [sys.executable, __file__, "--worker", str(n), "--preset", args.preset, "--dtype", args.dtype,
                   "--repeat", str(args.repeat), "--edge-pass", args.edge_pass]
            r = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
            r["allocator"] = name
            rows.append(r)
            print(f"{r['atoms']:6d} {name:>11} {r['ms']:9.0f} {r['us_per_atom']:8.0f} {r['user_ms']:8.0f} "
                  f"{r['sys_ms']:8.0f} {r['page_faults']:9d} {r['peak_rss_MB']:8.0f}", flush=True)
    result = {"command": "python benchmarks/allocator.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": f"{os.cpu_count()} cores, 1 torch thread",
              "load_average_end": list(os.getloadavg()), "preset": args.preset, "dtype": args.dtype,
              "edge_pass": args.edge_pass, "tcmalloc": tcmalloc_library(), "rows": rows}
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from results_file import record_run
    record_run(args.json, result, {"sizes": args.sizes, "dtype": args.dtype, "edge_pass": args.edge_pass,
                                   "allocators": list(envs)})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
