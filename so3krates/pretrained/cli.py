"""`so3krates pretrained NAME -o FILE`: export a shipped pretrained model."""
from __future__ import annotations

from so3krates.model.radial_table import DEFAULT_POINTS

from . import PRETRAINED


def register(subparsers) -> None:
    p = subparsers.add_parser("pretrained", help="write an exported file of a pretrained model shipped with "
                              "so3krates (SO3LR), no download")
    p.add_argument("name", choices=PRETRAINED, help="so3lr: SO3LR (Kabylda, Frank et al., JACS 2025), H C N O F P S Cl")
    p.add_argument("-o", "--output", required=True, help="output model file, e.g. so3lr.pt")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--radial-table", type=int, default=DEFAULT_POINTS, metavar="POINTS",
                   help=f"tabulate the radial filters on POINTS distances (default {DEFAULT_POINTS}; 0: exact)")
    p.set_defaults(func=_pretrained)


def _pretrained(args) -> int:
    from so3krates.export import export_model
    from so3krates.model.outputs import check_output_file

    from . import pretrained_network
    check_output_file(args.output, "-o")
    network, provenance = pretrained_network(args.name)
    meta = export_model(network, args.output, dtype=args.dtype, provenance=provenance,
                        radial_table=args.radial_table)
    print(f"wrote {args.output}: {provenance['pretrained']}, elements {meta['elements']}, cutoff {meta['cutoff_A']} A, "
          f"long-range cutoff {meta.get('long_range_cutoff_A')} A, inputs {', '.join(meta.get('global_inputs', []))}, "
          f"{meta['dtype']}; cite {provenance.get('citation')}")
    return 0
