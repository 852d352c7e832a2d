"""Timing worker for benchmarks/so3lr/speed.py: one process per implementation and dtype.

    python speed_worker.py ours|reference DTYPE MODEL_FILE   (MODEL_FILE: our exported SO3LR; unused by reference)

Reads one request per stdin line: {"structure": path.xyz, "repeat": n}; answers one JSON line
{"ms": [...]} with the time of each energy+forces evaluation through the ASE calculator
(neighbour lists included), after one warm-up call on that structure.
"""
from __future__ import annotations

import json
import sys
import time

import torch
from ase.io import read


def calculator(kind: str, dtype: str, model_file: str):
    if kind == "ours":
        from so3krates.ase import So3kratesCalculator
        return So3kratesCalculator(model_file)
    from so3krates_torch.calculator.so3 import SO3LRCalculator
    return SO3LRCalculator(default_dtype=dtype)


def main() -> int:
    kind, dtype, model_file = sys.argv[1:4]
    out = sys.stdout
    sys.stdout = sys.stderr   # libraries' prints stay off the answer channel
    calc = calculator(kind, dtype, model_file)
    out.write(json.dumps({"ready": True, "threads": torch.get_num_threads()}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        atoms = read(request["structure"])
        atoms.calc = calc
        times = []
        for k in range(request["repeat"] + 1):
            atoms.rattle(1e-4, seed=k)   # new positions: no cached results
            t = time.perf_counter()
            atoms.get_potential_energy()
            atoms.get_forces()
            if k:                          # the first call is the warm-up
                times.append(1000 * (time.perf_counter() - t))
        out.write(json.dumps({"ms": times}) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
