"""SO3LR through our export (ASE calculator) next to So3krates-torch's SO3LRCalculator, interleaved.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/so3lr/speed.py [--sizes alanine-dipeptide 1536 12288]
        [--dtypes float32 float64] [--threads 1] [--repeat 3] [--out benchmarks/results/so3lr_speed.json]

One worker per implementation and dtype (benchmarks/so3lr/speed_worker.py; ours in this venv,
the reference in benchmarks/peers/.venv, see setup.sh), all started with the same thread count.
Per structure the driver asks ours and the reference in turn, round 1 ours first and round 2
reference first; each figure is the median time of an energy + forces evaluation (neighbour lists
included: ours vesin, the reference matscipy) over both rounds (`--repeat` calls each after one
warm-up). Water boxes: so3krates.structures.water_box (periodic, ~1 g/cm3); alanine dipeptide:
the bundled structure, in vacuum. Our file: `so3krates pretrained so3lr` with the default radial
table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
from results_file import record_run  # noqa: E402

PEERS_PYTHON = REPO / "benchmarks" / "peers" / ".venv" / "bin" / "python"


class Worker:
    def __init__(self, python, kind, dtype, model_file, threads):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen([str(python), str(HERE / "speed_worker.py"), kind, dtype, str(model_file)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = json.loads(self.proc.stdout.readline())

    def time(self, structure, repeat):
        self.proc.stdin.write(json.dumps({"structure": str(structure), "repeat": repeat}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("worker died (see its stderr above)")
        return json.loads(line)["ms"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def structures(sizes, folder):
    from ase.io import write
    from so3krates.structures import read_structure, water_box
    for name in sizes:
        atoms = read_structure(name) if not name.isdigit() else water_box(int(name) // 3)
        path = Path(folder) / f"{name}.xyz"
        write(path, atoms)
        yield name, len(atoms), path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["alanine-dipeptide", "1536", "12288"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "so3lr_speed.json"))
    args = ap.parse_args()
    rows = []
    key = {"sizes": args.sizes, "dtypes": args.dtypes, "threads": args.threads}

    def save() -> None:   # after every row: a run cut short keeps what it measured
        result = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/so3lr/speed.py " + " ".join(sys.argv[1:]),
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
                  "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "threads": args.threads,
                  "rows": rows}
        record_run(args.out, result, key)

    with tempfile.TemporaryDirectory() as tmp:
        from so3krates.cli import main as cli
        for dtype in args.dtypes:
            model_file = Path(tmp) / f"so3lr_{dtype}.pt"
            cli(["pretrained", "so3lr", "-o", str(model_file), "--dtype", dtype])
            ours = Worker(sys.executable, "ours", dtype, model_file, args.threads)
            ref = Worker(PEERS_PYTHON, "reference", dtype, model_file, args.threads)
            for name, natoms, path in structures(args.sizes, tmp):
                repeat = args.repeat if natoms < 5000 else 1
                a = ours.time(path, repeat)
                b = ref.time(path, repeat)
                b += ref.time(path, repeat)     # round 2: reference first
                a += ours.time(path, repeat)
                row = {"structure": name, "atoms": natoms, "dtype": dtype, "ours_ms": statistics.median(a),
                       "reference_ms": statistics.median(b), "ours_all_ms": a, "reference_all_ms": b}
                row["speedup"] = row["reference_ms"] / row["ours_ms"]
                rows.append(row)
                save()
                print(f"{name:>18s} {natoms:6d} atoms {dtype}: ours {row['ours_ms']:9.1f} ms, "
                      f"So3krates-torch {row['reference_ms']:9.1f} ms, speed-up {row['speedup']:.2f}x", flush=True)
            ours.close()
            ref.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
