"""`so3krates sample`: GFN2-xTB Langevin MD -> labelled extended XYZ."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="make reference data: GFN2-xTB Langevin MD, labelled extended XYZ "
                                         "(energy, forces; stress for periodic cells)")
    p.add_argument("structure", help="structure file, ASE molecule name (ethanol), alanine-dipeptide, "
                                     "or water-box[:N] (periodic, N molecules, default 8)")
    p.add_argument("-o", "--output", required=True, help="extended XYZ to write")
    p.add_argument("--method", default="gfn2-xtb", help="gfn2-xtb (default) or gfn1-xtb")
    p.add_argument("--temperature", type=float, default=500.0, help="K (default %(default)s)")
    p.add_argument("--frames", type=int, default=1000, help="labelled frames (default %(default)s)")
    p.add_argument("--stride", type=int, default=10, help="MD steps between frames (default %(default)s)")
    p.add_argument("--timestep", type=float, default=0.5, help="fs (default %(default)s)")
    p.add_argument("--friction", type=float, default=10.0, help="Langevin friction, 1/ps (default %(default)s)")
    p.add_argument("--equilibration", type=int, default=100, help="MD steps before the first frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args) -> int:
    from .outputs import Interrupted, plain_interrupts
    from .sample import FrameFile, SampleSettings, level_of_theory, sample_to_file
    settings = SampleSettings(method=args.method, temperature=args.temperature, frames=args.frames,
                              stride=args.stride, timestep_fs=args.timestep, friction_per_ps=args.friction,
                              equilibration=args.equilibration, seed=args.seed)
    settings.validate()
    out = FrameFile(args.output)
    try:
        with plain_interrupts():
            frames = sample_to_file(args.structure, args.output, settings, progress=not args.quiet, out=out)
    except KeyboardInterrupt:
        raise Interrupted(f"{args.output} holds the {out.count} frame(s) labelled so far" if out.count
                          else "no frame was labelled yet, nothing was saved") from None
    energies = [f.get_potential_energy() for f in frames]
    print(f"wrote {len(frames)} frames of {len(frames[0])} atoms ({level_of_theory(args.method)}, "
          f"{args.temperature:g} K) to {args.output}; energy {min(energies):.4f} .. {max(energies):.4f} eV")
    return 0
