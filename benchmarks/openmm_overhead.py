"""OpenMM step time (CPU platform) against the bare exported model, same structures, same run.

    python benchmarks/openmm_overhead.py [--preset default] [--dtype float32] [--sizes 9 1000 10000] [--repeat 3]

For each system: the median time of one `compute` (energy + forces) of the exported model, and of
one VerletIntegrator step of an OpenMM Context holding only the so3krates TorchForce; ratio =
OpenMM / bare. Writes benchmarks/results/openmm_overhead.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from ase.build import molecule

import so3krates.openmm  # noqa: F401
from so3krates.export import export_model, load_exported
from so3krates.model import So3krates
from so3krates.model.config import preset
from so3krates.structures import water_box


def median_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main():
    import openmm
    from so3krates.openmm_plugin.system import build_system

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--sizes", type=int, nargs="+", default=[9, 300, 1000, 3000, 10000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model.pt"
        export_model(So3krates(preset(args.preset, elements=[1, 6, 8], dtype=args.dtype)), path, args.dtype)
        bare, _ = load_exported(path)
        print(f"preset {args.preset}, {args.dtype}, OpenMM CPU platform, {os.cpu_count()} threads")
        print(f"{'system':<12}{'atoms':>7}{'bare ms':>10}{'openmm step ms':>16}{'ratio':>8}")
        for n in args.sizes:
            atoms = molecule("CH3CH2OH") if n <= 9 else water_box(n // 3)
            name = "ethanol" if n <= 9 else "water"
            pos = torch.tensor(atoms.positions)
            z = torch.tensor(atoms.numbers)
            cell = torch.tensor(atoms.cell.array) if atoms.pbc.any() else None
            pbc = torch.tensor(atoms.pbc) if atoms.pbc.any() else None
            system, frame = build_system(path, atoms)
            integrator = openmm.VerletIntegrator(0.0005)
            context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
            context.setPositions(frame.positions_nm)
            # interleave the two measurements to even out machine noise
            bare_ms, step_ms = [], []
            for _ in range(args.repeat):
                bare_ms.append(median_time(lambda: bare.compute(pos, z, cell, pbc), 1))
                step_ms.append(median_time(lambda: integrator.step(1), 1))
            b, s = statistics.median(bare_ms), statistics.median(step_ms)
            rows.append({"system": name, "atoms": len(atoms), "bare_ms": b, "openmm_step_ms": s, "ratio": s / b})
            print(f"{name:<12}{len(atoms):>7}{b:>10.1f}{s:>16.1f}{s / b:>8.3f}", flush=True)
    out = Path(__file__).parent / "results" / "openmm_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"command": "python benchmarks/openmm_overhead.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
        "cpu_count": os.cpu_count(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
