"""Stress training on periodic water: GFN2-xTB labels (energy, forces, stress) from `so3krates sample`,
a model trained with and without the stress term, errors on held-out frames, and NPT in LAMMPS.

1. sample: GFN2-xTB (tblite) Langevin MD of water boxes of --molecules molecules at several densities
   (--densities, x 1 g/cm^3; the stress labels then span a range of pressures), --frames each;
   the frames of the last --test-fraction of each density's trajectory are held out.
2. train: the same recipe twice, --stress-weight 0 and --stress-weight W, for --minutes each.
3. evaluate: energy, force and stress errors (eV/A^3, GPa) and the pressure error on the held-out frames.
4. NPT: `fix npt` at 1 bar and --temperature in LAMMPS (units metal) with each model for --npt-ps; the
   mean density next to the reference's: the GFN2-xTB equation of state from the labelled frames (the
   density at which the mean labelled pressure, kinetic part included, interpolates to 1 bar).

The issue's full benchmark (64 molecules, 30 min of training, 20 ps NPT):

    python benchmarks/stress_water.py --molecules 64 --frames 100 --minutes 30 --npt-ps 20

Writes benchmarks/results/stress_water.json (one run per size and budget).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from results_file import record_run  # noqa: E402

AMU_PER_G = 6.02214076e23          # g/mol -> amu per molecule; density below in g/cm^3


def density_g_cm3(atoms) -> float:
    return float(atoms.get_masses().sum() / AMU_PER_G / (atoms.get_volume() * 1e-24))


def sample_frames(args, out: Path):
    """Labelled frames per density (cached in out/)."""
    from ase.io import read
    from so3krates.model.sample import FrameFile, SampleSettings, sample
    from so3krates.structures import water_box
    train, test = [], []
    for k, scale in enumerate(args.densities):
        path = out / f"water_{args.molecules}_{scale:g}.xyz"
        if not path.is_file():
            settings = SampleSettings(temperature=args.temperature, frames=args.frames, stride=args.stride,
                                      equilibration=args.equilibration, seed=args.seed + k)
            part = path.with_suffix(".part")   # a complete file only: an interrupted one is sampled again
            frames_file = FrameFile(part)
            try:
                sample(water_box(args.molecules, seed=args.seed + k, density_scale=scale), settings, progress=False,
                       on_frame=frames_file.write)
            finally:
                frames_file.close()
            os.replace(part, path)
        frames = read(path, index=":")
        n_test = max(1, int(round(args.test_fraction * len(frames))))
        train += frames[:-n_test]
        test += frames[-n_test:]
    return train, test


def reference_equation_of_state(frames, temperature: float):
    """Mean GFN2-xTB pressure (GPa; virial part from the stress labels plus the ideal-gas part at the
    bath temperature) per density, and the density where it crosses 0 (linear interpolation)."""
    from ase.units import GPa, kB
    by_density = {}
    for f in frames:
        p = -np.trace(f.get_stress(voigt=False)) / 3.0 + len(f) * kB * temperature / f.get_volume()
        by_density.setdefault(round(density_g_cm3(f), 4), []).append(p / GPa)
    rho = np.array(sorted(by_density))
    pressure = np.array([np.mean(by_density[r]) for r in rho])
    zero = None
    if len(rho) > 1:
        slope, intercept = np.polyfit(rho, pressure, 1)
        zero = float(-intercept / slope) if slope > 0 else None
    return {"density_g_cm3": rho.tolist(), "mean_pressure_GPa": pressure.tolist(), "density_at_0_GPa": zero}


def npt_density(model: Path, atoms, args, workdir: Path):
    """Mean density (g/cm^3) over the second half of a LAMMPS NPT run at 1 bar."""
    from so3krates.lammps_pair.runner import THERMO_PRECISION, parse_thermo, run_lammps, setup_commands
    from so3krates.lammps_pair.system import lammps_system, write_data
    workdir.mkdir(parents=True, exist_ok=True)
    system = lammps_system(atoms)
    write_data(str(workdir / "data.lmp"), system)
    steps = int(round(args.npt_ps * 1000 / args.timestep))
    script = setup_commands(system, str(model), "data.lmp") + "\n".join([   # masses: in the data file
        f"velocity all create {args.temperature} {args.seed + 12345} mom yes rot yes dist gaussian",
        f"timestep {args.timestep / 1000}",
        f"fix baro all npt temp {args.temperature} {args.temperature} 0.1 iso 1.0 1.0 1.0",
        "thermo_style custom step temp press density vol pe",
        THERMO_PRECISION,
        "thermo 20",
        "",
    ])
    log = run_lammps(script, workdir, runs=[f"run {steps}"])
    thermo = parse_thermo(log)
    density = np.asarray(thermo["Density"])
    half = density[len(density) // 2:]
    return {"mean_density_g_cm3": float(half.mean()), "std_density_g_cm3": float(half.std()),
            "mean_pressure_bar": float(np.mean(thermo["Press"][len(density) // 2:])), "steps": steps}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--molecules", type=int, default=8)
    p.add_argument("--densities", type=float, nargs="+", default=[0.9, 1.0, 1.1])
    p.add_argument("--frames", type=int, default=12, help="labelled frames per density")
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--equilibration", type=int, default=6)
    p.add_argument("--temperature", type=float, default=300.0)
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--minutes", type=float, default=2.0, help="training budget per model")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--stress-weight", type=float, default=1000.0, help="the run with stresses (the other has 0)")
    p.add_argument("--only-stress", action="store_true", help="train only the run with stresses (not the --stress-weight 0 one)")
    p.add_argument("--npt-replicate", type=int, default=1,
                   help="NPT on the held-out start frame repeated N x N x N times (a larger box for steadier densities)")
    p.add_argument("--npt-ps", type=float, default=2.0)
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", nargs="+", default=["sample", "train", "evaluate", "npt"])
    p.add_argument("--out", help="work folder (frames and runs are reused from it; default: a temporary one)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "stress_water.json"))
    args = p.parse_args()
    import torch
    from so3krates.export import export_model
    from so3krates.model.checkpoint import atomic_write
    from so3krates.model.evaluate import evaluate
    from so3krates.model.train import TrainOptions, train
    torch.set_num_threads(1)
    out = Path(args.out or tempfile.mkdtemp(prefix="so3krates_stress_water_"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    t0 = time.perf_counter()
    train_frames, test_frames = sample_frames(args, out)
    sample_s = time.perf_counter() - t0
    from ase.io import write
    atomic_write(out / "train.xyz", lambda tmp: write(tmp, train_frames, format="extxyz"))
    atomic_write(out / "test.xyz", lambda tmp: write(tmp, test_frames, format="extxyz"))
    reference = reference_equation_of_state(train_frames + test_frames, args.temperature)
    print(f"{len(train_frames)} train / {len(test_frames)} test frames of {args.molecules} molecules "
          f"({sample_s:.0f} s of GFN2-xTB); reference mean pressure per density: "
          + ", ".join(f"{r:.3f} g/cm3: {q:+.3f} GPa" for r, q in zip(reference["density_g_cm3"],
                                                                    reference["mean_pressure_GPa"]))
          + (f"; 1 bar at {reference['density_at_0_GPa']:.3f} g/cm3" if reference["density_at_0_GPa"] else ""),
          flush=True)
    if args.stages == ["sample"]:
        return 0
    models = {}
    for weight in ((args.stress_weight,) if args.only_stress else (0.0, args.stress_weight)):
        name = f"stress_weight_{weight:g}"
        run = out / name
        if "train" in args.stages and not (run / "best.ckpt").is_file():
            train(TrainOptions(train=str(out / "train.xyz"), out=str(run), preset=args.preset,
                               max_time=60 * args.minutes, seed=args.seed, threads=1, progress=False,
                               valid_fraction=0.1, stress_weight=weight, warmup_steps=20,
                               batch_size=args.batch_size))
        row = {"stress_weight": weight}
        if "evaluate" in args.stages:
            row.update(evaluate(run / "best.ckpt", out / "test.xyz"))
            print(f"{name}: E MAE {row['energy_mae_meV_per_atom']:.2f} meV/atom, F MAE "
                  f"{row['forces_mae_meV_per_A']:.1f} meV/A, stress MAE {row['stress_mae_eV_per_A3']:.5f} eV/A^3 "
                  f"({row['stress_mae_GPa']:.3f} GPa), pressure MAE {row['pressure_mae_GPa']:.3f} GPa", flush=True)
        if "npt" in args.stages:
            export_model(run / "best.ckpt", run / "model.pt", "float64")
            start = test_frames[len(test_frames) // len(args.densities) * (len(args.densities) // 2)]
            start = start.repeat(args.npt_replicate)
            row["npt"] = npt_density(run / "model.pt", start, args, run / "npt")
            print(f"{name}: NPT ({args.npt_ps:g} ps, 1 bar, {args.temperature:g} K) mean density "
                  f"{row['npt']['mean_density_g_cm3']:.3f} +- {row['npt']['std_density_g_cm3']:.3f} g/cm3", flush=True)
        models[name] = row
    result = {
        "command": "python benchmarks/stress_water.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.gmtime(started)), "wall_s": round(time.time() - started),
        "load_average_end": list(os.getloadavg()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads 1",
        "reference": {"method": train_frames[0].info.get("level_of_theory"), "sample_s": round(sample_s),
                      "n_train": len(train_frames), "n_test": len(test_frames), **reference},
        "models": models, "work_folder": str(out),
    }
    result["npt_atoms"] = len(test_frames[0]) * args.npt_replicate ** 3
    key = {"molecules": args.molecules, "minutes": args.minutes, "npt_ps": args.npt_ps, "preset": args.preset}
    record_run(args.json, result, key)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
