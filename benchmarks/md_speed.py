"""MD speed of a small molecule: OpenMM (TorchForce), the ASE engine with the TorchScript file, and the
ASE engine with the model compiled (`--compile`), the same model and Langevin settings, one process each.

    python benchmarks/md_speed.py [--model best.ckpt] [--structure ethanol] [--steps 2000] [--rounds 2]
        [--threads 1] [--dtype float32]

Each round runs every engine once (interleaved, so that a busy machine slows all of them alike) for
--steps NVT steps of 0.5 fs at 500 K, in fresh `so3krates md` processes, each round with an empty
compile cache (the first start-up, compilation included, is a newcomer's; the step time excludes it). Without --model a random default-preset network is exported.
Figures: ms per step (fastest round), ns/day, and each engine's ratio to OpenMM.
Results: benchmarks/results/md_speed.json.
"""
from __future__ import annotations

import argparse
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


def run_once(model: Path, structure: str, engine: str, steps: int, threads: int, folder: Path, cache: Path) -> dict:
    """`so3krates md` processes of 1, 1 and `steps` steps: the first one's time is the cold start-up
    (loading, compiling with an empty cache), the second's the start-up as the long run has it (PyTorch's
    compile cache now warm), subtracted from the long run's to give the time per step."""
    exe = Path(sys.executable).parent / "so3krates"
    # An empty compile cache for the first process: its start-up is a newcomer's (the next two reuse it).
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENMM_CPU_THREADS=str(threads),
               TORCHINDUCTOR_CACHE_DIR=str(cache))
    times = []
    for n in (1, 1, steps):
        cmd = [str(exe), "md", str(model), structure, *ENGINES[engine], "--ensemble", "nvt", "--temperature", "500",
               "--steps", str(n), "--log-every", "100", "--traj-every", "0", "--quiet"]
        began = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=folder)
        if done.returncode:
            raise RuntimeError(f"{engine}: {done.stderr[-500:]}")
        times.append(time.perf_counter() - began)
    step_ms = (times[2] - times[1]) / (steps - 1) * 1e3
    return {"startup_s": times[0], "step_ms": step_ms}


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
    args = ap.parse_args()
    load_before = os.getloadavg()
    runs = {name: [] for name in args.engines}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = model_file(args, folder)
        for r in range(args.rounds):
            for name in args.engines:
                cache = folder / f"inductor_cache_{r}_{name.replace(' ', '_')}"
                runs[name].append(run_once(model, args.structure, name, args.steps, args.threads, folder, cache))
                print(f"round {r}: {name}: {runs[name][-1]['step_ms']:.2f} ms/step "
                      f"(start-up {runs[name][-1]['startup_s']:.1f} s)", flush=True)
    figures = {}
    for name, rows in runs.items():
        best = min(row["step_ms"] for row in rows)
        figures[name] = {"ms_per_step": round(best, 3), "ns_per_day": round(0.5e-6 * 86400e3 / best, 3),
                         "startup_s": [round(row["startup_s"], 1) for row in rows],
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
