"""Two exported files, timed interleaved on the same water box: the way to measure a code change.

An exported file carries its own TorchScript code, so a file written before a change keeps the old
code. Write one with the current code, change the code, write another, compare:

    python benchmarks/compare_exports.py --write before.pt [--dtype float64] [--seed 0] [--fused 0|1]
    ... edit model/ ...
    python benchmarks/compare_exports.py --write after.pt [--dtype float64] [--seed 0]
    python benchmarks/compare_exports.py before.pt after.pt [--molecules 512] [--repeat 8] [--threads 1]

--write exports the default preset with random weights from --seed (the same seed gives the same
weights as long as the parameters are unchanged). The comparison runs energy + forces + stress
through the ASE calculator (vesin neighbour list), both files in turn, --repeat times after --warmup
(2) warm-up calls each, and prints the medians, their ratio and the largest energy and force
differences between the two files.

A change of the operator library (ops/, libso3krates_ops.so) cannot be compared in one process
(one library registers the operator). With --libraries OLD.so NEW.so each file runs in a child
process with its library (SO3KRATES_OPS_LIBRARY), the two alternating for --rounds rounds, and the
medians are over all rounds; --allocator tcmalloc|glibc sets the children's allocator (LD_PRELOAD).
--record LABEL adds the figures to benchmarks/results/compare_exports.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import all_changes


def write(path: str, dtype: str, seed: int, fused: bool = True) -> None:
    from so3krates.export import export_model
    from so3krates.model import So3krates
    from so3krates.model.config import preset
    torch.manual_seed(seed)
    network = So3krates(preset("default", elements=[1, 6, 7, 8], dtype=dtype))
    export_model(network, path, dtype=dtype, fused=fused)
    print(f"wrote {path} ({dtype}, default preset, seed {seed}, fused {int(fused)})")


def compare(paths, molecules: int, repeat: int, warmup: int = 2) -> dict:
    from so3krates.ase import So3kratesCalculator
    from so3krates.export import load_exported
    from so3krates.structures import water_box
    atoms = water_box(molecules)
    props = ["energy", "forces", "stress"]
    calcs = [So3kratesCalculator(load_exported(p)[0]) for p in paths]
    results = []
    for calc in calcs:
        for _ in range(max(warmup, 1)):
            calc.calculate(atoms, props, all_changes)
        results.append((calc.results["energy"], calc.results["forces"].copy()))
    times = [[] for _ in calcs]
    for _ in range(repeat):
        for calc, t in zip(calcs, times):
            start = time.perf_counter()
            calc.calculate(atoms, props, all_changes)
            t.append(time.perf_counter() - start)
    return report(paths, len(atoms), times, results, f"median of {repeat}")


def report(paths, num_atoms: int, times, results, how: str) -> dict:
    """Print the medians, their ratio and the differences; return them as a record."""
    medians = [1e3 * statistics.median(t) for t in times]
    d_energy = abs(results[0][0] - results[1][0])
    d_forces = float(np.abs(results[0][1] - results[1][1]).max())
    print(f"water {num_atoms} atoms, {torch.get_num_threads()} thread(s), {how}:")
    for path, ms in zip(paths, medians):
        print(f"  {path}: {ms:.1f} ms")
    print(f"  ratio second / first: {medians[1] / medians[0]:.3f}")
    print(f"  max |dE| {d_energy:.2e} eV, max |dF| {d_forces:.2e} eV/A")
    return {"atoms": num_atoms, "ms": medians, "ratio": medians[1] / medians[0], "max_dE_eV": d_energy,
            "max_dF_eV_per_A": d_forces, "calls": [len(t) for t in times]}


def child(path: str, molecules: int, repeat: int, warmup: int, forces_out: str) -> None:
    """One file in this process (with the operator library of SO3KRATES_OPS_LIBRARY): its call times
    as a JSON line, its forces into forces_out (.npy)."""
    from so3krates.ase import So3kratesCalculator
    from so3krates.export import load_exported
    from so3krates.structures import water_box
    atoms = water_box(molecules)
    props = ["energy", "forces", "stress"]
    calc = So3kratesCalculator(load_exported(path)[0])
    for _ in range(max(warmup, 1)):
        calc.calculate(atoms, props, all_changes)
    times, cpu_times = [], []
    for _ in range(repeat):
        start, cpu_start = time.perf_counter(), time.process_time()
        calc.calculate(atoms, props, all_changes)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    np.save(forces_out, calc.results["forces"])
    print(json.dumps({"atoms": len(atoms), "times": times, "cpu_times": cpu_times, "energy": calc.results["energy"]}))


def compare_in_children(paths, libraries, allocator: str, molecules: int, repeat: int, warmup: int, rounds: int,
                        threads: int) -> dict:
    """Each file in its own processes with its own operator library, alternating for `rounds` rounds."""
    from so3krates.allocator import OPT_OUT, tcmalloc_library, with_tcmalloc
    from so3krates.fused import LIBRARY_ENV
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", OPT_OUT)}
    if allocator == "tcmalloc":
        if tcmalloc_library() is None:
            raise SystemExit("error: --allocator tcmalloc: no tcmalloc on this system (Debian: apt-get install "
                             "libtcmalloc-minimal4)")
        base = with_tcmalloc(base)
    else:
        base[OPT_OUT] = "0"
    times, cpu_times = [[] for _ in paths], [[] for _ in paths]
    results = [None, None]
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for n, (path, library) in enumerate(zip(paths, libraries)):
                forces = str(Path(tmp) / f"forces{n}.npy")
                cmd = [sys.executable, __file__, "--child", path, "--forces-out", forces, "--molecules", str(molecules),
                       "--repeat", str(repeat), "--warmup", str(warmup), "--threads", str(threads)]
                done = subprocess.run(cmd, env={**base, LIBRARY_ENV: str(Path(library).resolve())},
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"error: {path} with {library} failed: {done.stderr.strip().splitlines()[-1]}")
                out = json.loads(done.stdout.strip().splitlines()[-1])
                times[n].extend(out["times"])
                cpu_times[n].extend(out["cpu_times"])
                results[n] = (out["energy"], np.load(forces))
    how = f"{allocator}, median of {rounds} rounds x {repeat} calls, one process per file and round"
    result = report(paths, out["atoms"], times, results, how)
    # On a loaded machine the process's CPU time (1 thread) moves less than the wall-clock time.
    cpu = [1e3 * statistics.median(t) for t in cpu_times]
    print(f"  CPU time: {cpu[0]:.1f} ms, {cpu[1]:.1f} ms, ratio second / first: {cpu[1] / cpu[0]:.3f}")
    result.update(cpu_ms=cpu, cpu_ratio=cpu[1] / cpu[0], all_ms=[[1e3 * x for x in t] for t in times])
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="two exported files to compare")
    ap.add_argument("--write", metavar="PATH", help="export the current code's model to PATH instead")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fused", type=int, choices=[0, 1], default=1, help="with --write: the export's --fused")
    ap.add_argument("--molecules", type=int, default=512, help="water molecules in the box")
    ap.add_argument("--repeat", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per file first (at least 1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--libraries", nargs=2, metavar=("OLD", "NEW"),
                    help="operator libraries (libso3krates_ops.so) of the two files: each file in its own processes")
    ap.add_argument("--allocator", choices=["glibc", "tcmalloc"], default="glibc",
                    help="with --libraries: the children's allocator")
    ap.add_argument("--rounds", type=int, default=2, help="with --libraries: processes per file, alternating")
    ap.add_argument("--record", metavar="LABEL", help="add the figures to benchmarks/results/compare_exports.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--forces-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.molecules, args.repeat, args.warmup, args.forces_out)
        return
    if args.write:
        write(args.write, args.dtype, args.seed, bool(args.fused))
        return
    if len(args.files) != 2:
        ap.error("give two exported files, or --write PATH")
    if args.libraries:
        result = compare_in_children(args.files, args.libraries, args.allocator, args.molecules, args.repeat,
                                     args.warmup, args.rounds, args.threads)
    else:
        result = compare(args.files, args.molecules, args.repeat, args.warmup)
    if args.record:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results_file import record_run
        from so3krates.export import read_metadata
        dtype = read_metadata(args.files[1]).get("dtype")
        result.update(command="python benchmarks/compare_exports.py " + " ".join(sys.argv[1:]),
                      date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), files=args.files, libraries=args.libraries,
                      machine=f"{os.cpu_count()} cores, {args.threads} torch thread(s)",
                      load_average_end=list(os.getloadavg()))
        out = Path(__file__).resolve().parent / "results" / "compare_exports.json"
        record_run(out, result, {"label": args.record, "atoms": result["atoms"], "dtype": dtype,
                                 "allocator": args.allocator if args.libraries else "this process"})
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
