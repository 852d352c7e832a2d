"""MD speed of a small molecule: OpenMM (TorchForce), the ASE engine with the TorchScript file, and the
ASE engine with the model compiled (`--compile`), the same model and Langevin settings, one process each.

    python benchmarks/md_speed.py [--model best.ckpt] [--structure ethanol] [--steps 2000] [--rounds 2]
        [--threads 1] [--dtype float32]

Each round runs every engine once (interleaved, so that a busy machine slows all of them alike) for
--steps NVT steps of 0.5 fs at 500 K (the engine registry's run_md, as `so3krates md` runs it), each in
its own process with an empty compile cache: the start-up (to the first energy, compilation included) is
a newcomer's, and the time per step, the slope of the process's clock over the second half of the run,
excludes it. Without --model a random default-preset network is exported.
Figures: ms per step (fastest round), ns/day, and each engine's ratio to OpenMM.
Results: benchmarks/results/md_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_file import record_run  # noqa: E402

ENGINES = {"openmm": ["--engine", "openmm"], "ase": ["--engine", "ase"],
           "ase compiled": ["--engine", "ase", "--compile"]}


def model_file(args, folder: Path) -> Path:
    from so3krates.export import export_model
    out = folder / f"model_{args.dtype}.pt"
    if args.model:
        export_model(args.model, out, args.dtype)
    else:
        import torch

        from so3krates.model import So3krates
        from so3krates.model.config import preset
        torch.manual_seed(0)
        export_model(So3krates(preset("default", elements=[1, 6, 7, 8])), out, args.dtype)
    return out


def run_once(model: Path, structure: str, engine: str, steps: int, threads: int, cache: Path) -> dict:
    """One process (this script with --worker) running the engine's MD; its own clock gives the start-up
    (process start to the step-0 row: loading, and compiling with the empty cache `cache`, a newcomer's)
    and the time per step (the slope over the rows of the second half of the run)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENMM_CPU_THREADS=str(threads),
               TORCHINDUCTOR_CACHE_DIR=str(cache))
    done = subprocess.run([sys.executable, __file__, "--worker", engine, "--model", str(model), "--structure",
                           structure, "--steps", str(steps)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{engine}: {done.stderr[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(args) -> int:
    import numpy as np

    from so3krates.allocator import is_preloaded, reexec_with_tcmalloc
    reexec_with_tcmalloc(sys.argv)   # as the `so3krates` command does when tcmalloc is installed

    from so3krates import engines
    from so3krates.engines import EngineSpec, MDSettings, initial_state
    from so3krates.md import read_structure
    began = time.perf_counter()
    settings = MDSettings(ensemble="nvt", temperature=500.0, steps=args.steps, log_every=50, traj_every=0,
                          compile=args.worker == "ase compiled")
    stamps = []

    class Clock:
        def row(self, step, *_, **__):
            stamps.append((step, time.perf_counter() - began))

        def frame(self, step, atoms):
            pass
    atoms = initial_state(read_structure(args.structure), 500.0, 0)
    engines.run_md(EngineSpec(args.worker.split()[0]), args.model, atoms, settings, progress=False, observer=Clock())
    steps, seconds = np.array(stamps).T
    half = steps >= steps[-1] / 2
    slope = np.polyfit(steps[half], seconds[half], 1)[0]
    print(json.dumps({"startup_s": float(seconds[0]), "step_ms": float(slope * 1e3),
                      "allocator": "tcmalloc" if is_preloaded() else "glibc"}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a checkpoint (default: a random default-preset network)")
    ap.add_argument("--structure", default="ethanol")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    ap.add_argument("--out", default=str(HERE / "results" / "md_speed.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)   # internal: one engine's run in its own process
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    load_before = os.getloadavg()
    runs = {name: [] for name in args.engines}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = model_file(args, folder)
        for r in range(args.rounds):
            for name in args.engines:
                cache = folder / f"inductor_cache_{r}_{name.replace(' ', '_')}"
                runs[name].append(run_once(model, args.structure, name, args.steps, args.threads, cache))
                print(f"round {r}: {name}: {runs[name][-1]['step_ms']:.2f} ms/step "
                      f"(start-up {runs[name][-1]['startup_s']:.1f} s)", flush=True)
    figures = {}
    for name, rows in runs.items():
        best = min(row["step_ms"] for row in rows)
        figures[name] = {"ms_per_step": round(best, 3), "ns_per_day": round(0.5e-6 * 86400e3 / best, 3),
                         "startup_s": [round(row["startup_s"], 1) for row in rows], "allocator": rows[0]["allocator"],
                         "ms_per_step_rounds": [round(row["step_ms"], 3) for row in rows]}
    if "openmm" in figures:
        for name in figures:
            figures[name]["speed_vs_openmm"] = round(figures["openmm"]["ms_per_step"] / figures[name]["ms_per_step"], 2)
    for name, f in figures.items():
        print(f"{name:>14}: {f['ms_per_step']:7.2f} ms/step  {f['ns_per_day']:6.2f} ns/day  "
              f"x{f.get('speed_vs_openmm', float('nan')):.2f} vs openmm  start-up {f['startup_s']} s")
    row = {"command": " ".join(["python", "benchmarks/md_speed.py", *sys.argv[1:]]),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
           "model": args.model or "random default preset", "figures": figures}
    record_run(args.out, row, {"structure": args.structure, "dtype": args.dtype, "threads": args.threads,
                               "steps": args.steps})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
