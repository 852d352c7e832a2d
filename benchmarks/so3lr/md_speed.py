"""ns/day of SO3LR water in OpenMM and LAMMPS (1 rank), interleaved, through the engines of `so3krates md`.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/so3lr/md_speed.py [--sizes 192 648] [--dtypes float32 float64]
        [--steps 10 40] [--out benchmarks/results/so3lr_md_speed.json]

Our file: `so3krates pretrained so3lr` (default radial table). Water: so3krates.structures.water_box
(periodic, ~1 g/cm3; 192 atoms = 12.4 A cube, the smallest OpenMM takes with SO3LR's 12 A long-range
cutoff). NVE, 0.5 fs, one torch thread (OpenMM: TorchForce on the Reference platform for float64, CPU
for float32, as `so3krates md` picks; LAMMPS: the pair style in-process, `threads` from
OMP_NUM_THREADS). The set-up (model load, context, LAMMPS start) is taken out: each engine runs
`--steps` A and B steps and the time per step is (t_B - t_A) / (B - A). Order per size and dtype:
OpenMM, LAMMPS, LAMMPS, OpenMM; each figure is the mean of its two measurements.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
from results_file import record_run  # noqa: E402


def seconds_per_step(engine: str, model_file: str, atoms, steps) -> float:
    from so3krates.engines import EngineSpec, MDSettings, run_md
    times = []
    for n in steps:
        settings = MDSettings(ensemble="nve", temperature=300.0, timestep_fs=0.5, steps=n, log_every=n, traj_every=0)
        result = run_md(EngineSpec(engine, 1), model_file, atoms.copy(), settings, progress=False)
        times.append(result.wall_time_s)
    return (times[1] - times[0]) / (steps[1] - steps[0])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", type=int, default=[192, 648])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--steps", nargs=2, type=int, default=[10, 40])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "so3lr_md_speed.json"))
    args = ap.parse_args()
    import torch
    from so3krates.engines import initial_state
    from so3krates.structures import water_box
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = []
    key = {"sizes": args.sizes, "dtypes": args.dtypes, "steps": args.steps}

    def save() -> None:   # after every row: a run cut short keeps what it measured
        record_run(args.out, {
            "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/so3lr/md_speed.py " + " ".join(sys.argv[1:]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "threads": torch.get_num_threads(),
            "rows": rows}, key)

    with tempfile.TemporaryDirectory() as tmp:
        from so3krates.cli import main as cli
        for dtype in args.dtypes:
            model_file = str(Path(tmp) / f"so3lr_{dtype}.pt")
            cli(["pretrained", "so3lr", "-o", model_file, "--dtype", dtype])
            for size in args.sizes:
                atoms = initial_state(water_box(size // 3, seed=1), 300.0, 0)
                measured = {"openmm": [], "lammps": []}
                for engine in ("openmm", "lammps", "lammps", "openmm"):
                    measured[engine].append(seconds_per_step(engine, model_file, atoms, args.steps))
                row = {"atoms": len(atoms), "dtype": dtype, "timestep_fs": 0.5}
                for engine, values in measured.items():
                    per_step = sum(values) / len(values)
                    row[f"{engine}_ms_per_step"] = 1000 * per_step
                    row[f"{engine}_ms_per_step_all"] = [1000 * v for v in values]
                    row[f"{engine}_ns_per_day"] = 0.5e-6 / per_step * 86400
                rows.append(row)
                save()
                print(f"{len(atoms):5d} atoms {dtype}: OpenMM {row['openmm_ns_per_day']:.3f} ns/day "
                      f"({row['openmm_ms_per_step']:.0f} ms/step), LAMMPS {row['lammps_ns_per_day']:.3f} ns/day "
                      f"({row['lammps_ms_per_step']:.0f} ms/step)", flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
