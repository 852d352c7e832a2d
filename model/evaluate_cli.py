"""`so3krates evaluate`: energy and force errors of a model on labelled data, and a parity plot."""
from __future__ import annotations


def register(subparsers) -> None:
    from .train_cli import add_reader_flags
    p = subparsers.add_parser("evaluate", help="energy/force/stress errors of a checkpoint or exported model on data")
    p.add_argument("model", help="checkpoint (best.ckpt) or exported model file")
    p.add_argument("data", help="labelled data: extended XYZ, sGDML npz or DeePMD folder")
    add_reader_flags(p)
    p.add_argument("--json", help="write the metrics as JSON")
    p.add_argument("--plot", help="write a parity plot (PNG)")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=main)


def main(args) -> int:
    from .evaluate import evaluate
    m = evaluate(args.model, args.data, batch_size=args.batch_size, json_path=args.json, plot_path=args.plot,
                 energy_key=args.energy_key, forces_key=args.forces_key, energy_unit=args.energy_unit or "eV",
                 length_unit=args.length_unit or "A")
    print(f"{m['n_structures']} structures: energy MAE {m['energy_mae_meV']:.3f} meV "
          f"({m['energy_mae_meV_per_atom']:.3f} meV/atom), RMSE {m['energy_rmse_meV']:.3f} meV")
    if m["forces_mae_meV_per_A"] is not None:
        print(f"forces MAE {m['forces_mae_meV_per_A']:.2f} meV/A, RMSE {m['forces_rmse_meV_per_A']:.2f} meV/A "
              f"({m['n_structures_with_forces']} structures with forces)")
    if m["n_structures_with_stress"]:
        print(f"stress MAE {m['stress_mae_eV_per_A3']:.5f} eV/A^3 ({m['stress_mae_GPa']:.4f} GPa), RMSE "
              f"{m['stress_rmse_eV_per_A3']:.5f} eV/A^3 ({m['stress_rmse_GPa']:.4f} GPa), pressure MAE "
              f"{m['pressure_mae_GPa']:.4f} GPa ({m['n_structures_with_stress']} structures with stress)")
    return 0
