"""`so3krates stability`: independent Langevin replicas, watched for unphysical MD (stability.py)."""
from __future__ import annotations

import json

from so3krates import engines
from so3krates.structures import read_structure

from .stability import StabilitySettings, format_report, json_report, parse_time_ps, plot_report, stability


def register(subparsers) -> None:
    p = subparsers.add_parser("stability", help="is the model's MD physically sound? Langevin replicas checked for "
                                                "broken bonds, atoms too close and non-finite energies")
    p.add_argument("model", help="exported model file")
    p.add_argument("structure", help="starting structure: a file or an ASE molecule name (e.g. ethanol)")
    p.add_argument("--temperature", type=float, default=500.0, help="K (default %(default)s)")
    p.add_argument("--time", default="100ps", help="length of each replica: 100ps, 500fs, 1ns (default %(default)s)")
    p.add_argument("--replicas", type=int, default=4, help="independent runs, seeds SEED, SEED+1, ... (default %(default)s)")
    p.add_argument("--timestep", type=float, default=0.5, help="fs (default %(default)s)")
    p.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps (default %(default)s)")
    p.add_argument("--engine", default="openmm", help=f"one of {', '.join(engines.names())} (lammps:N for N MPI ranks; "
                                                      f"default %(default)s)")
    p.add_argument("--reference", help="frames of the same system (e.g. the training data): h(r) MAE against them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="replicas run at the same time, each in its own process with "
                   "an equal share of the cores (default %(default)s: one after the other)")
    p.add_argument("--max-bond-deviation", type=float, default=0.5, help="A a bond may move from its length at the "
                   "start (molecules; default %(default)s)")
    p.add_argument("--min-distance", type=float, default=0.6, help="A, no two atoms closer (default %(default)s)")
    p.add_argument("--max-hr-mae", type=float, default=0.1, help="periodic cells: h(r) MAE of a window against the "
                   "reference that counts as failure (default %(default)s)")
    p.add_argument("--check-every", type=int, default=20, help="steps between checks (default %(default)s)")
    p.add_argument("--traj-every", type=int, default=200, help="steps between trajectory frames written, a multiple "
                   "of --check-every (default %(default)s)")
    p.add_argument("--out", help="folder for each replica's trajectory and log, written as they run "
                                 "(replica_K.xyz, replica_K.csv)")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--plot", help="plot bond deviation against time and h(r) to this image")
    p.add_argument("--compile", action="store_true", help="with --engine ase: the model through torch.compile "
                   "(about twice the steps per second for small molecules; each replica process compiles once, "
                   "1-3 minutes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from so3krates.model.checkpoint import atomic_write
    from so3krates.model.outputs import check_output_file, check_output_folder
    settings = StabilitySettings(temperature=args.temperature, time_ps=parse_time_ps(args.time),
                                 replicas=args.replicas, timestep_fs=args.timestep, friction_per_ps=args.friction,
                                 seed=args.seed, check_every=args.check_every, traj_every=args.traj_every,
                                 max_bond_deviation_A=args.max_bond_deviation, min_distance_A=args.min_distance,
                                 max_hr_mae=args.max_hr_mae, compile=args.compile)
    settings.validate()
    engines.EngineSpec.parse(args.engine)
    check_output_file(args.json, "--json")   # before the run, not after it
    check_output_file(args.plot, "--plot")
    if args.out:
        check_output_folder(args.out, "--out")
    report = stability(args.model, read_structure(args.structure), settings, engine=args.engine,
                       reference=args.reference, out_dir=args.out, progress=not args.quiet,
                       jobs=args.jobs)
    print(format_report(report))
    if args.json:
        text = json.dumps(json_report(report), indent=1)
        atomic_write(args.json, lambda tmp: open(tmp, "w").write(text))
    if args.plot:
        plot_report(report, args.plot)
    return 0 if report["passed"] else 1
