"""`so3krates demo`: the whole product from nothing, on data it makes itself.

GFN2-xTB reference data for ethanol -> train a small model -> export (float64 and float32)
-> validate across ASE, OpenMM and LAMMPS (1 and 2 ranks) -> summary. A second run reuses the
cached data (and the trained model unless --retrain).
"""
from __future__ import annotations

import json
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="end-to-end demo: xTB data, training, export, cross-engine validation")
    p.add_argument("--out", default="demo_output", help="working folder (default: %(default)s)")
    p.add_argument("--molecule", default="ethanol")
    p.add_argument("--frames", type=int, default=600, help="GFN2-xTB frames to sample")
    p.add_argument("--train-time", default="4m", help="training wall-clock budget")
    p.add_argument("--preset", default="small")
    p.add_argument("--engines", default="ase,openmm,lammps,lammps:2")
    p.add_argument("--steps", type=int, default=2000, help="NVE steps of 0.5 fs in the validation")
    p.add_argument("--retrain", action="store_true", help="train again even if a model exists")
    p.set_defaults(func=main)


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def main(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings = {}

    t = _step(f"1. reference data: GFN2-xTB Langevin MD of {args.molecule} at 500 K")
    data, test = make_data(args, out)
    if data is None:
        return 1
    timings["data_s"] = time.perf_counter() - t

    t = _step(f"2. training ({args.preset} preset, {args.train_time})")
    best = train(args, data, out / "run")
    if best is None:
        return 1
    timings["train_s"] = time.perf_counter() - t

    t = _step("3. export and test-set errors")
    models, errors = export_and_evaluate(args, best, test, out)
    if errors is None:
        return 1
    timings["export_s"] = time.perf_counter() - t

    reports = {}
    for dtype, path in models.items():
        t = _step(f"4. cross-engine validation, {dtype} ({args.steps} NVE steps of 0.5 fs)")
        reports[dtype] = validate_model(args, path, out, dtype)
        timings[f"validate_{dtype}_s"] = time.perf_counter() - t

    summarise(errors, reports, out, time.perf_counter() - started, timings)
    return 0 if all(r["passed"] for r in reports.values()) else 1


def make_data(args, out: Path):
    """GFN2-xTB training and test frames (cached): (train path, test path), or (None, None)."""
    from so3krates.cli import main as cli
    data = out / f"{args.molecule}_gfn2xtb.xyz"
    test = out / f"{args.molecule}_gfn2xtb_test.xyz"
    if data.exists() and test.exists():
        print(f"reusing cached {data} and {test}")
        return data, test
    for path, frames, seed in ((data, args.frames, 1), (test, 100, 2)):
        if cli(["sample", args.molecule, "-o", str(path), "--method", "gfn2-xtb", "--temperature", "500",
                "--frames", str(frames), "--stride", "10", "--seed", str(seed)]):
            return None, None
    return data, test


def train(args, data: Path, run: Path):
    """The trained model's best.ckpt (reused unless --retrain; a cut run resumes), or None."""
    from so3krates.cli import main as cli
    best = run / "best.ckpt"
    if best.exists() and not args.retrain:
        print(f"reusing trained model {best} (--retrain to train again)")
        return best
    resume = ["--resume"] if (run / "last.ckpt").exists() else []
    if cli(["train", "--train", str(data), "--valid-fraction", "0.1", "--out", str(run), "--preset", args.preset,
            "--max-time", args.train_time, "--seed", "0"] + resume):
        return None
    return best


def export_and_evaluate(args, best: Path, test: Path, out: Path):
    """float64 and float32 exports, and the float64 export's test-set errors (None on failure)."""
    from so3krates.cli import main as cli
    from so3krates.export import export_model
    models = {dtype: out / f"{args.molecule}_{dtype}.pt" for dtype in ("float64", "float32")}
    for dtype, path in models.items():
        export_model(best, path, dtype=dtype)
        print(f"exported {path}")
    errors_json = out / "test_errors.json"
    if cli(["evaluate", str(models["float64"]), str(test), "--json", str(errors_json),
            "--plot", str(out / "parity.png")]):
        return models, None
    return models, json.loads(errors_json.read_text())


def validate_model(args, path: Path, out: Path, dtype: str) -> dict:
    from so3krates.engines import EngineSpec
    from so3krates.structures import read_structure
    from so3krates.validation import ValidationSettings, format_report, validate
    from so3krates.validation.validate import plot_report
    settings = ValidationSettings(steps=args.steps, timestep_fs=0.5, temperature=300.0, seed=0)
    report = validate(str(path), read_structure(args.molecule), EngineSpec.parse_list(args.engines), settings,
                      progress=False)
    print(format_report(report))
    (out / f"validation_{dtype}.json").write_text(
        json.dumps({k: v for k, v in report.items() if not k.startswith("_")}, indent=1))
    plot_report(report, str(out / f"validation_{dtype}.png"))
    return report


def summarise(errors: dict, reports: dict, out: Path, total_s: float, timings: dict) -> None:
    print("\n=== summary")
    print(f"test-set errors (float64 export, {errors['n_structures']} GFN2-xTB structures): "
          f"energy MAE {errors['energy_mae_meV']:.2f} meV ({errors['energy_mae_meV_per_atom']:.2f} meV/atom), "
          f"forces MAE {errors['forces_mae_meV_per_A']:.1f} meV/A")
    for dtype, report in reports.items():
        print(f"{dtype}: " + ("PASSED" if report["passed"] else "FAILED"))
        for label in report["engines"]:
            s, c = report["step0"][label], report["nve"][label]
            print(f"  {label:<10} step-0 max|dE| {s['max_abs_dE_meV']:.2e} meV, max|dF| {s['max_abs_dF_meV_per_A']:.2e} meV/A; "
                  f"NVE drift {c['drift_meV_per_atom_per_ps']:+.2e} meV/atom/ps")
    print(f"files: {out}/validation_float64.png, {out}/validation_float32.png, {out}/parity.png, "
          f"{out}/validation_*.json, {out}/run/learning_curve.png")
    print(f"total time {total_s:.0f} s " + json.dumps({k: round(v, 1) for k, v in timings.items()}))
