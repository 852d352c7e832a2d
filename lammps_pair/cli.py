"""`so3krates lammps-plugin`: print the path of the built LAMMPS plugin (for `plugin load`)."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("lammps-plugin", help="print the path of the LAMMPS pair_style so3krates plugin")
    p.add_argument("--check", action="store_true",
                   help="also load the plugin into LAMMPS (Python module) and confirm pair_style so3krates exists")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from .runtime import new_lammps, plugin_path
    path = plugin_path()
    print(path)
    if args.check:
        lmp = new_lammps()
        try:
            lmp.command(f"plugin load {path}")
            if not lmp.has_style("pair", "so3krates"):
                raise RuntimeError(f"{path} did not register pair_style so3krates (see the LAMMPS log)")
            version = lmp.version()
        finally:
            lmp.close()
        print(f"ok: pair_style so3krates loads into LAMMPS {version}")
    return 0
