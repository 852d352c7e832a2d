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
"""
from __future__ import annotations

import argparse
import statistics
import time

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


def compare(paths, molecules: int, repeat: int, warmup: int = 2) -> None:
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
    medians = [1e3 * statistics.median(t) for t in times]
    print(f"water {len(atoms)} atoms, {torch.get_num_threads()} thread(s), median of {repeat}:")
    for path, ms in zip(paths, medians):
        print(f"  {path}: {ms:.1f} ms")
    print(f"  ratio second / first: {medians[1] / medians[0]:.3f}")
    print(f"  max |dE| {abs(results[0][0] - results[1][0]):.2e} eV, "
          f"max |dF| {np.abs(results[0][1] - results[1][1]).max():.2e} eV/A")


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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.write:
        write(args.write, args.dtype, args.seed, bool(args.fused))
    elif len(args.files) == 2:
        compare(args.files, args.molecules, args.repeat, args.warmup)
    else:
        ap.error("give two exported files, or --write PATH")


if __name__ == "__main__":
    main()
