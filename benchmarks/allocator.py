"""glibc's default malloc, glibc tuned in process (what loading a model does, so3krates/allocator.py)
and tcmalloc (when the system has it) for one energy+forces evaluation of the model.

Each (allocator, size) runs in a fresh process (an allocator is chosen at process start), the
allocators interleaved size by size; per process: `repeat` calls after one warm-up, fastest kept,
with the user and system CPU time, minor page faults and peak RSS of that process.

    python benchmarks/allocator.py --sizes 1000 5000 10000 [--edge-pass fused|plain]
        [--allocators glibc glibc-untuned tcmalloc] [--engines compute ase openmm lammps]

Engines (each in its own fresh process too): `compute` (the exported module's compute() with its
own neighbour search), `ase` (So3kratesCalculator: vesin's pairs), `openmm` (a TorchForce in a CPU
Context: getState with energy and forces), `lammps` (the pair style in-process through the LAMMPS
library: `run 0`). Each call moves the atoms by 1e-4 A so that nothing is cached.

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


def engine_call(engine: str, model_path: str, atoms, args):
    """A function that evaluates energy and forces of `atoms` (moved a little each time) in `engine`."""
    import numpy as np
    rng = np.random.default_rng(0)
    if engine == "compute":
        from so3krates.export import load_model
        module, _ = load_model(model_path)
        return lambda: module.compute(*args)
    if engine == "ase":
        from so3krates.ase import So3kratesCalculator
        atoms.calc = So3kratesCalculator(model_path)

        def call():
            atoms.positions += rng.normal(scale=1e-4, size=atoms.positions.shape)
            atoms.get_forces()
        return call
    if engine == "openmm":
        import openmm
        from openmm import unit
        from so3krates.openmm_plugin.system import build_system, platform_for
        system, frame = build_system(model_path, atoms)
        context = openmm.Context(system, openmm.VerletIntegrator(0.0005), *platform_for(model_path, "CPU"))
        positions = np.asarray(frame.positions_nm)

        def call():
            context.setPositions(positions + rng.normal(scale=1e-5, size=positions.shape))
            context.getState(getEnergy=True, getForces=True).getForces(asNumpy=True).value_in_unit(
                unit.kilojoule_per_mole / unit.nanometer)
        return call
    if engine == "lammps":
        import os as _os
        import tempfile as _tempfile
        from so3krates.lammps_pair.runner import new_lammps, setup_commands
        from so3krates.lammps_pair.system import lammps_system, write_data
        folder = _tempfile.mkdtemp(prefix="so3krates-allocator-")
        system = lammps_system(atoms)
        write_data(_os.path.join(folder, "data.lmp"), system)
        lmp = new_lammps(log="none")
        for line in setup_commands(system, model_path, _os.path.join(folder, "data.lmp")).splitlines():
            if line.strip():
                lmp.command(line)
        lmp.command("displace_atoms all random 1e-4 1e-4 1e-4 1 units box")

        def call():
            lmp.command("displace_atoms all random 1e-4 1e-4 1e-4 2 units box")
            lmp.command("run 0 post no")
        return call
    raise ValueError(f"unknown engine {engine!r}")


def worker(n: int, preset_name: str, dtype: str, repeat: int, edge_pass: str, engine: str = "compute") -> dict:
    import tempfile

    import torch
    from so3krates.allocator import tune_glibc_malloc
    from so3krates.export import export_model
    from so3krates.model.config import preset
    from so3krates.model.network import So3krates
    from so3krates.structures import water_box
    torch.set_num_threads(1)
    tune_glibc_malloc()   # as loading an exported model does (unless SO3KRATES_MALLOC_TUNING=0)
    torch.manual_seed(0)
    network = So3krates(preset(preset_name, elements=[1, 8], dtype=dtype))
    tmp = tempfile.mkdtemp(prefix="so3krates-allocator-")
    export_model(network, f"{tmp}/model.pt", dtype=dtype, fused=edge_pass == "fused")
    atoms = water_box(max(n // 3, 1))
    args = (torch.tensor(atoms.positions), torch.tensor(atoms.numbers), torch.tensor(atoms.cell.array),
            torch.tensor([True, True, True]))
    call = engine_call(engine, f"{tmp}/model.pt", atoms, args)
    call()
    best = None
    for _ in range(repeat):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        call()
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        row = {"ms": 1e3 * (t1 - t0), "user_ms": 1e3 * (r1.ru_utime - r0.ru_utime),
               "sys_ms": 1e3 * (r1.ru_stime - r0.ru_stime), "page_faults": r1.ru_minflt - r0.ru_minflt}
        best = row if best is None or row["ms"] < best["ms"] else best
    best.update(engine=engine, atoms=len(atoms), us_per_atom=1e3 * best["ms"] / len(atoms),
                peak_rss_MB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    p.add_argument("--preset", default="default")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--edge-pass", choices=["fused", "plain"], default="fused")
    p.add_argument("--allocators", nargs="+", choices=["glibc", "glibc-untuned", "tcmalloc"],
                   default=["glibc", "glibc-untuned", "tcmalloc"])
    p.add_argument("--engines", nargs="+", choices=["compute", "ase", "openmm", "lammps"], default=["compute"])
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "allocator.json"))
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-engine", default="compute", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.preset, args.dtype, args.repeat, args.edge_pass, args.worker_engine)))
        return 0
    from so3krates.allocator import OPT_OUT, TUNING_OPT_OUT, tcmalloc_library, with_tcmalloc
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", OPT_OUT, TUNING_OPT_OUT)}
    # "glibc": what a machine without tcmalloc gets (tuned in process when the model is loaded, the
    # default); "glibc-untuned": glibc as it starts (SO3KRATES_MALLOC_TUNING=0)
    envs = {"glibc": {**base, OPT_OUT: "0"}, "glibc-untuned": {**base, OPT_OUT: "0", TUNING_OPT_OUT: "0"}}
    if tcmalloc_library() is not None:
        envs["tcmalloc"] = with_tcmalloc(base)
    else:
        print("no tcmalloc on this system (Debian: apt-get install libtcmalloc-minimal4): glibc only")
    envs = {name: env for name, env in envs.items() if name in args.allocators}
    rows = []
    print(f"{'engine':>8} {'atoms':>6} {'allocator':>11} {'ms':>9} {'us/atom':>8} {'user ms':>8} {'sys ms':>8} {'faults':>9} "
          f"{'peak MB':>8}", flush=True)
    for n in args.sizes:
        for engine, (name, env) in [(e, a) for e in args.engines for a in envs.items()]:
            cmd = [sys.executable, __file__, "--worker", str(n), "--preset", args.preset, "--dtype", args.dtype,
                   "--repeat", str(args.repeat), "--edge-pass", args.edge_pass, "--worker-engine", engine]
            proc = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{engine} worker failed: {proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["allocator"] = name
            rows.append(r)
            print(f"{engine:>8} {r['atoms']:6d} {name:>11} {r['ms']:9.0f} {r['us_per_atom']:8.0f} {r['user_ms']:8.0f} "
                  f"{r['sys_ms']:8.0f} {r['page_faults']:9d} {r['peak_rss_MB']:8.0f}", flush=True)
    result = {"command": "python benchmarks/allocator.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": f"{os.cpu_count()} cores, 1 torch thread",
              "load_average_end": list(os.getloadavg()), "preset": args.preset, "dtype": args.dtype,
              "edge_pass": args.edge_pass, "tcmalloc": tcmalloc_library(), "rows": rows}
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from results_file import record_run
    key = {"sizes": args.sizes, "dtype": args.dtype, "edge_pass": args.edge_pass, "allocators": list(envs)}
    if args.engines != ["compute"]:
        key["engines"] = args.engines
    record_run(args.json, result, key)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
