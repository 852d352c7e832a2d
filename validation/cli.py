"""`so3krates validate`."""
from __future__ import annotations

import json

from so3krates.engines import EngineSpec
from so3krates.structures import read_structure

from .stability import parse_stability_option
from .validate import ValidationSettings, format_report, plot_report, validate


def register(subparsers) -> None:
    p = subparsers.add_parser("validate", help="cross-engine agreement and energy conservation of a model file")
    p.add_argument("model", help="exported model file")
    p.add_argument("structure", help="structure file or ASE molecule name (e.g. ethanol)")
    p.add_argument("--engines", default="ase,openmm,lammps,lammps:2",
                   help="comma-separated ENGINE[:RANKS][@MODEL] (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--temperature", type=float, default=300.0, help="K, initial Maxwell-Boltzmann velocities")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stability", metavar="TEMPERATURE:TIME[:REPLICAS]",
                   help="also run Langevin replicas checked for unphysical MD (so3krates stability), e.g. 300K:10ps; "
                        "a model that fails does not pass")
    p.add_argument("--json", help="write every figure to this JSON file")
    p.add_argument("--plot", help="write total energy and divergence against time to this image")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from so3krates.model.outputs import check_output_file
    engines = EngineSpec.parse_list(args.engines)
    if args.steps < 1 or not args.timestep > 0 or not args.temperature >= 0:
        raise ValueError(f"--steps must be >= 1 (got {args.steps}), --timestep > 0 (got {args.timestep:g}) and "
                         f"--temperature >= 0 (got {args.temperature:g})")
    check_output_file(args.json, "--json")   # before the run, not after it
    check_output_file(args.plot, "--plot")
    check = parse_stability_option(args.stability) if args.stability else None
    settings = ValidationSettings(steps=args.steps, timestep_fs=args.timestep, temperature=args.temperature,
                                  seed=args.seed, stability=check)
    report = validate(args.model, read_structure(args.structure), engines, settings, progress=not args.quiet)
    print(format_report(report))
    if args.json:
        from so3krates.model.checkpoint import atomic_write
        text = json.dumps({k: v for k, v in report.items() if not k.startswith("_")}, indent=1)
        atomic_write(args.json, lambda tmp: open(tmp, "w").write(text))
    if args.plot:
        plot_report(report, args.plot)
    return 0 if report["passed"] else 1
