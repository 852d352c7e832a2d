"""`so3krates export` and `so3krates info`."""
from __future__ import annotations

import json

from so3krates.model.radial_table import DEFAULT_POINTS

from .exporter import export_model, read_metadata


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="compile a checkpoint into one TorchScript model file")
    p.add_argument("checkpoint", help="checkpoint written by `so3krates train` (best.ckpt)")
    p.add_argument("-o", "--output", required=True, help="output model file, e.g. model.pt")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--radial-table", type=int, default=DEFAULT_POINTS, metavar="POINTS",
                   help=f"tabulate the radial filters on POINTS distances (default {DEFAULT_POINTS}; "
                        "0: exact filters, slower; docs/benchmarks.md)")
    p.add_argument("--fused", type=int, choices=[0, 1], default=1,
                   help="1 (default): the attention blocks' edge pass is the fused C++ operator "
                        "so3krates::edge_attention_pairs (less memory, same numbers; no second derivatives); "
                        "0: plain PyTorch")
    p.set_defaults(func=_export)

    p = subparsers.add_parser("info", help="print the metadata of an exported model")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.set_defaults(func=_info)


def _export(args) -> int:
    from so3krates.model.outputs import check_output_file
    check_output_file(args.output, "-o")
    meta = export_model(args.checkpoint, args.output, dtype=args.dtype, radial_table=args.radial_table,
                        fused=bool(args.fused))
    print(f"wrote {args.output}: elements {meta['elements']}, cutoff {meta['cutoff_A']} A, "
          f"{meta['num_layers']} layers (interaction range {meta['interaction_range_A']} A), {meta['dtype']}, "
          f"radial filters {_radial(meta)}, edge pass {_edge_pass(meta)}")
    return 0


def _info(args) -> int:
    meta = read_metadata(args.model)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    from ase.data import chemical_symbols
    rows = [
        ("model file", args.model),
        ("format version", meta["format_version"]),
        ("so3krates version", meta["so3krates_version"]),
        ("torch version", meta["torch_version"]),
        ("elements", " ".join(f"{chemical_symbols[z]}({z})" for z in meta["elements"])),
        ("cutoff", f"{meta['cutoff_A']} A"),
        ("layers", meta["num_layers"]),
        ("interaction range", f"{meta['interaction_range_A']} A"),
        ("units", f"{meta['length_unit']}, {meta['energy_unit']}"),
        ("dtype", meta["dtype"]),
        ("radial filters", _radial(meta)),
        ("edge pass", _edge_pass(meta)),
        ("created", meta.get("provenance", {}).get("created", "?")),
    ]
    if "long_range_cutoff_A" in meta:
        rows.insert(7, ("long-range cutoff", f"{meta['long_range_cutoff_A']} A "
                                             f"({', '.join(meta.get('long_range_terms', []))})"))
    if meta.get("global_inputs"):
        rows.insert(8, ("inputs", "positions, elements, " + ", ".join(
            {"charge": "total charge (e)", "multiplicity": "spin multiplicity 2S+1"}[k]
            for k in meta["global_inputs"])))
    for key in ("source", "licence", "citation"):
        if key in meta.get("provenance", {}):
            rows.append((key, meta["provenance"][key]))
    if "training_data_sha256" in meta.get("provenance", {}):
        rows.append(("training data sha256", meta["provenance"]["training_data_sha256"]))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _radial(meta) -> str:
    radial = meta.get("radial_filters", {"kind": "exact"})
    return f"{radial['kind']} ({radial['points']} points)" if "points" in radial else radial["kind"]


def _edge_pass(meta) -> str:
    """How the attention blocks run, and for a fused model whether this process has the operator."""
    if not meta.get("fused"):
        return "plain PyTorch"
    from so3krates.fused import load
    state = "loaded" if load() else "NOT loaded here: rebuild so3krates or export with --fused 0"
    return f"fused ({', '.join(meta.get('operators', []))}, {state})"
