"""Timing worker: one long-lived process per virtual environment, driven by speed.py.

Reads one JSON request per line on stdin, answers one JSON line on the original stdout
(everything the libraries print goes to stderr). Request:
  {"model": "mace-small", "dtype": "float32", "structure": "water_1536.xyz",
   "budget_s": 3.0, "max_repeat": 10, "warmup": 2}
Answer: {"ok": true, "ase_ms": [...], "compute_ms": [...] (ours only)} or {"ok": false, "error": "..."}.

"ase_ms": one energy+forces(+stress when periodic) evaluation through the model's ASE calculator,
neighbour list included (ours: vesin; so3krates-torch and MACE: matscipy).
"compute_ms" (ours only): module.compute(positions, numbers, cell, pbc), built-in neighbour search.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

import torch
from ase.calculators.calculator import all_changes
from ase.io import read

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402


def timed(fn, warmup, budget_s, max_repeat):
    """Warm-up calls, then repeat until budget_s is spent (at least once): list of ms."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_repeat and (not times or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return times


def run(request, cache):
    key = (request["model"], request["dtype"])
    if key not in cache:
        if any(d != request["dtype"] for _, d in cache):
            cache.clear()  # keep one precision's models at a time
        cache[key] = models.build(request["model"], request["dtype"])
    calc, module = cache[key]
    atoms = read(request["structure"])
    periodic = bool(atoms.pbc.all())
    if hasattr(calc, "compute_stress"):  # so3krates-torch: stress only for periodic cells, as ours/MACE
        calc.compute_stress = periodic
    atoms.calc = calc
    props = ["energy", "forces"] + (["stress"] if periodic else [])
    warmup, budget, repeat = request["warmup"], request["budget_s"], request["max_repeat"]
    out = {"ok": True, "atoms": len(atoms),
           "ase_ms": timed(lambda: calc.calculate(atoms, props, all_changes), warmup, budget, repeat)}
    if module is not None and request.get("compute_path", True):
        dtype = torch.float64
        pos = torch.tensor(atoms.positions, dtype=dtype)
        z = torch.tensor(atoms.numbers)
        cell = torch.tensor(atoms.cell.array, dtype=dtype) if periodic else None
        pbc = torch.tensor(atoms.pbc) if periodic else None
        # The module is warm from the ASE calls: no further warm-up for large systems.
        out["compute_ms"] = timed(lambda: module.compute(pos, z, cell, pbc, None, None, -1, True, periodic),
                                  min(warmup, 1) if budget > 0 else 0, budget, repeat)
    return out


def cap_memory():
    """Private memory cap (RLIMIT_DATA also counts anonymous mmaps since Linux 4.7): a model that
    needs more fails with an allocation error, reported, instead of pulling the shared machine
    into the OOM killer."""
    gib = float(os.environ.get("BENCH_MEMORY_GIB", "0"))
    if gib > 0:
        import resource
        limit = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def release_free_memory():
    """Hand the heap freed by a request back to the OS, so that the two workers' peaks at the
    largest sizes do not add up on the shared machine: tcmalloc keeps freed pages otherwise
    (when preloaded), glibc may too."""
    import ctypes
    import gc
    gc.collect()
    process = ctypes.CDLL(None)
    for name, args in (("MallocExtension_ReleaseFreeMemory", ()), ("malloc_trim", (0,))):
        if hasattr(process, name):
            getattr(process, name)(*args)


def main():
    cap_memory()
    answer = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library prints go to stderr
    sys.stdout = sys.stderr
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    cache = {}
    answer.write(json.dumps({"ok": True, "ready": True, "torch": torch.__version__,
                             "threads": torch.get_num_threads()}) + "\n")
    answer.flush()
    for line in sys.stdin:
        try:
            result = run(json.loads(line), cache)
        except Exception as exc:  # report, keep serving
            traceback.print_exc()
            text = f"{type(exc).__name__}: {exc}"
            if "can't allocate memory" in text:  # TorchScript wraps the allocator's message deep inside
                text = "out of memory (over the worker's memory cap): " + text[text.index("can't allocate"):]
            result = {"ok": False, "error": text[:500]}
        release_free_memory()
        answer.write(json.dumps(result) + "\n")
        answer.flush()


if __name__ == "__main__":
    main()
