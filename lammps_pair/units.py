"""The units at the LAMMPS boundary, from LAMMPS itself.

The pair style converts eV to the LAMMPS energy unit once, with LAMMPS's own factor
(`utils::get_conversion_factor`, printed in its start-up log), and lengths are Angstrom in both
supported unit styles. The Python side reads that factor back from the log of the run it converts
(`energy_per_ev`), and takes every other constant from a LAMMPS instance (`constants`), so that no
factor is typed twice.
"""
from __future__ import annotations

import functools
import re
from typing import Dict

from ase import units as ase_units

SUPPORTED = ("metal", "real")
_FACTOR_LINE = re.compile(r"pair_style so3krates: 1 eV = ([0-9.eE+-]+) (\S+) \(units (\w+)")


@functools.lru_cache(maxsize=None)
def constants(style: str) -> Dict[str, float]:
    """LAMMPS's force->... constants of a unit style: boltz (energy/K), nktv2p (pressure per
    energy/volume), femtosecond (the style's time unit per fs)."""
    if style not in SUPPORTED:
        raise ValueError(f"units {style!r}: the so3krates pair style supports {', '.join(SUPPORTED)}")
    from .runtime import new_lammps
    lmp = new_lammps()
    try:
        lmp.command(f"units {style}")
        return {name: float(lmp.extract_global(name)) for name in ("boltz", "nktv2p", "femtosecond")}
    finally:
        lmp.close()


def energy_per_ev(style: str, log_text: str = "") -> float:
    """LAMMPS energy unit per eV: the factor the pair style printed in `log_text`, if any, else the
    ratio of LAMMPS's Boltzmann constants (the same conversion to 1e-7)."""
    if style == "metal":
        return 1.0
    for match in _FACTOR_LINE.finditer(log_text):
        if match.group(3) == style:
            return float(match.group(1))
    return constants(style)["boltz"] / constants("metal")["boltz"]


def ase_time_per_lammps_time(style: str = "metal") -> float:
    """ASE time units in one LAMMPS time unit: LAMMPS velocity = ASE velocity times this."""
    return ase_units.fs / constants(style)["femtosecond"]
