"""CPU speed of so3krates (ours) next to So3krates-torch and MACE, in one run, interleaved.

    /work/main/.venv/bin/python benchmarks/peers/speed.py [--sizes ethanol 3bpa 192 1536 12288]
        [--dtypes float32 float64] [--cap-s 240] [--budget-s 3] [--out benchmarks/results/peers_speed.json]

Two long-lived timing workers (benchmarks/peers/worker.py): one in our venv (ours), one in
benchmarks/peers/.venv (the peers, see setup.sh). The driver asks them in turn, one at a time, so
all models share the same machine state: per structure and precision, round 1 in the order
ours-export, so3krates-torch, ours-eager, mace-small, mace-medium and (below --large atoms) a
round 2 in reverse order (below --one-round atoms); a model's figure is the median over both
rounds. Each request does warm-up calls (3 for TorchScript, else 1) and then repeats within
--budget-s seconds (at least once); from --large atoms: 1 warm-up and 1 timed call.

Time per evaluation: energy + forces (+ stress for the periodic water boxes, as the MACE
calculator always does) through each model's ASE calculator, neighbour list included. For ours
also module.compute(...) with the built-in TorchScript neighbour search. Weights are untrained.
A request running past --cap-s is killed and reported; a model whose extrapolated time
(linear in atoms from its previous size) would exceed the cap is skipped and reported.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
from results_file import record_run  # noqa: E402
SHARED_DATA = REPO.parent / "shared" / "data"
PEERS_PYTHON = HERE / ".venv" / "bin" / "python"
ORDER = ["ours-export", "so3krates-torch", "ours-eager", "mace-small", "mace-medium"]
REFERENCE = "ours-export"


class Worker:
    """A worker.py process in one venv; request() returns its answer or raises TimeoutError."""

    def __init__(self, python, threads, memory_gib):
        self.python, self.threads, self.memory_gib = str(python), threads, memory_gib
        self.start()

    def start(self):
        env = dict(os.environ, BENCH_THREADS=str(self.threads), BENCH_MEMORY_GIB=str(self.memory_gib))
        self.proc = subprocess.Popen([self.python, str(HERE / "worker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=sys.stderr, text=True, env=env)
        self.info = self._read(300)

    def _read(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.proc.kill()
            self.proc.wait()
            raise TimeoutError
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.python} exited (rc {self.proc.wait()}); see stderr above")
        return json.loads(line)

    def request(self, timeout, **req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        try:
            return self._read(timeout)
        except TimeoutError:
            self.start()  # a fresh worker for the next request
            raise
        except RuntimeError as exc:  # the worker died (e.g. killed for memory): report, go on
            self.start()
            return {"ok": False, "error": str(exc)}

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def structures(names, folder):
    """Write the benchmark structures as extxyz files: [(label, path, atoms)]."""
    from ase.build import molecule
    from ase.io import read, write
    from so3krates.structures import water_box
    out = []
    for name in names:
        if name == "ethanol":
            atoms = molecule("CH3CH2OH")
        elif name == "3bpa":
            path = SHARED_DATA / "3bpa" / "train_300K.xyz"
            if not path.is_file():
                print(f"3BPA skipped: {path} is absent", flush=True)
                continue
            frame = read(path, index=0)
            atoms = frame.__class__(numbers=frame.numbers, positions=frame.positions)  # isolated molecule
        else:
            atoms = water_box(max(int(name) // 3, 1))
        label = name if not name.isdigit() else f"water {len(atoms)}"
        path = Path(folder) / f"{label.replace(' ', '_')}.xyz"
        write(path, atoms, format="extxyz")
        out.append((label, str(path), len(atoms)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["ethanol", "3bpa", "192", "1536", "12288"],
                    help="ethanol, 3bpa, or a number of water atoms (rounded to whole molecules)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--models", nargs="+", default=ORDER)
    ap.add_argument("--budget-s", type=float, default=3.0, help="timing seconds per request after warm-up")
    ap.add_argument("--max-repeat", type=int, default=20)
    ap.add_argument("--one-round", type=int, default=1000, help="from this many atoms: one round only")
    ap.add_argument("--large", type=int, default=5000,
                    help="from this many atoms: 1 warm-up and 1 timed call per model; compute() for ours-export only")
    ap.add_argument("--cap-s", type=float, default=200.0, help="wall-clock cap of one request")
    ap.add_argument("--memory-gib", type=float, default=9.0,
                    help="private memory cap per worker; a model needing more is reported as out of memory")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per evaluation (default 1: on the shared 2-core machine, 2 threads "
                         "were 5-20x noisier whenever other jobs ran)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "peers_speed.json"))
    args = ap.parse_args()
    if not PEERS_PYTHON.is_file() and any(m not in ("ours-eager", "ours-export") for m in args.models):
        sys.exit(f"{PEERS_PYTHON} is missing: run benchmarks/peers/setup.sh first")
    order = [m for m in ORDER if m in args.models]
    workers = {"ours": Worker(sys.executable, args.threads, args.memory_gib)}
    if any(not m.startswith("ours") for m in order):
        workers["peers"] = Worker(PEERS_PYTHON, args.threads, args.memory_gib)
    rows, last = [], {}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for label, path, natoms in structures(args.sizes, tmp):
            large = natoms >= args.large
            rounds = [order] if natoms >= args.one_round else [order, order[::-1]]
            for dtype in args.dtypes:
                times = {m: {"ase_ms": [], "compute_ms": []} for m in order}
                status = {m: "ok" for m in order}
                for models in rounds:
                    for model in models:
                        if status[model] != "ok":
                            continue
                        prev = last.get((model, dtype))
                        if prev is not None:
                            calls = 2 if large else 3  # warm-up + timed calls, roughly
                            predicted = prev[0] / 1000 * natoms / prev[1] * calls
                            if predicted > args.cap_s:
                                status[model] = f"skipped: about {predicted:.0f} s predicted > cap {args.cap_s:.0f} s"
                                continue
                        worker = workers["ours" if model.startswith("ours") else "peers"]
                        # TorchScript (ours-export) needs 3 calls before its optimised graph runs.
                        warmup = 3 if model == "ours-export" and not large else 1
                        try:
                            ans = worker.request(args.cap_s, model=model, dtype=dtype, structure=path,
                                                 budget_s=0.0 if large else args.budget_s,
                                                 max_repeat=1 if large else args.max_repeat, warmup=warmup,
                                                 compute_path=model == "ours-export" or not large)
                        except TimeoutError:
                            status[model] = f"timeout: over the {args.cap_s:.0f} s cap"
                            continue
                        if not ans["ok"]:
                            status[model] = "error: " + ans["error"]
                            continue
                        for k in ("ase_ms", "compute_ms"):
                            times[model][k] += ans.get(k, [])
                for model in order:
                    ase = times[model]["ase_ms"]
                    row = {"system": label, "atoms": natoms, "dtype": dtype, "model": model, "status": status[model],
                           "ase_ms": statistics.median(ase) if ase else None, "ase_ms_all": ase, "rounds": len(rounds)}
                    if times[model]["compute_ms"]:
                        row["compute_ms"] = statistics.median(times[model]["compute_ms"])
                        row["compute_ms_all"] = times[model]["compute_ms"]
                    if ase:
                        last[(model, dtype)] = (row["ase_ms"], natoms)
                    rows.append(row)
                ref = next((r["ase_ms"] for r in rows[-len(order):] if r["model"] == REFERENCE), None)
                for r in rows[-len(order):]:
                    r["ratio_to_ours_export"] = r["ase_ms"] / ref if ref and r["ase_ms"] else None
                print_block(rows[-len(order):], time.time() - started)
                write_result(args, workers, rows, started, complete=False)
    for w in workers.values():
        w.close()
    write_result(args, workers, rows, started, complete=True)
    print(f"wrote {args.out}")


def allocator() -> str:
    """The workers inherit LD_PRELOAD: tcmalloc when it names it, else glibc (ours tunes it when
    the model loads, so3krates/allocator.py; the peers' runs untuned)."""
    from so3krates.allocator import is_preloaded
    return "tcmalloc" if is_preloaded() else "glibc"


def write_result(args, workers, rows, started, complete):
    """Written after every block too, so a worker that dies (e.g. the kernel's OOM killer, which
    the per-worker memory cap cannot prevent when the workers together exceed the machine) does
    not lose what was measured before it."""
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "complete": complete,
        "machine": platform.node(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "threads": args.threads, "memory_cap_gib": args.memory_gib, "elapsed_s": round(time.time() - started, 1),
        "workers": {k: w.info for k, w in workers.items()},
        "versions": peer_versions(),
        "method": ("ms per energy+forces(+stress if periodic) through each model's ASE calculator, neighbour "
                   "list included (ours vesin, peers matscipy); compute_ms: ours' module.compute with its "
                   "built-in neighbour search; median over warm repeats; untrained weights; "
                   "ratio = model ms / ours-export ms (ASE path)"),
        "models": describe_models(),
        "rows": rows,
    }
    # One file for the benchmark; this variant (sizes, dtypes, models, allocator) replaces its earlier run.
    key = {"sizes": args.sizes, "dtypes": args.dtypes, "models": None if args.models == ORDER else args.models}
    result["allocator"] = allocator()
    if result["allocator"] != "glibc":
        key["allocator"] = result["allocator"]
    record_run(args.out, result, key)


def print_block(rows, elapsed):
    r0 = rows[0]
    print(f"\n{r0['system']} ({r0['atoms']} atoms) {r0['dtype']}   [{elapsed:.0f} s elapsed]")
    for r in rows:
        ms = f"{r['ase_ms']:10.1f}" if r["ase_ms"] else f"{'-':>10}"
        ratio = f"{r['ratio_to_ours_export']:7.2f}x" if r.get("ratio_to_ours_export") else " " * 8
        extra = f"  compute() {r['compute_ms']:.1f} ms" if "compute_ms" in r else ""
        note = "" if r["status"] == "ok" else "  " + r["status"]
        print(f"  {r['model']:<16}{ms} ms {ratio}{extra}{note}", flush=True)


def peer_versions():
    lock = HERE / "requirements-lock.txt"
    pins = {}
    if lock.is_file():
        for line in lock.read_text().splitlines():
            name, _, version = line.partition("==")
            if name.lower() in ("torch", "so3krates-torch", "mace-torch", "e3nn", "matscipy", "ase"):
                pins[name.lower()] = version
    return pins


def describe_models():
    sys.path.insert(0, str(HERE))
    import models
    return {"ours": dict(models.SO3LR_SIZE, note="identical to our 'default' preset (checked when built)"),
            "so3krates-torch": models.SO3KRATES_TORCH_SIZE,
            "mace": dict(models.MACE_SETTINGS, hidden_irreps=models.MACE_SIZES,
                         interaction="RealAgnosticResidualInteractionBlock", model="ScaleShiftMACE")}


if __name__ == "__main__":
    main()
