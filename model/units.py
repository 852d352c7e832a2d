"""Units at the boundary: every reader converts ONCE to eV and Angstrom with these factors."""
from __future__ import annotations

from ase import units

# Multiply a value in the named unit by the factor to get eV (energy) or Angstrom (length).
ENERGY_UNITS = {
    "eV": 1.0,
    "kcal/mol": units.kcal / units.mol,   # 1 kcal = 4.184 kJ
    "kJ/mol": units.kJ / units.mol,       # 1 eV = 96.485332 kJ/mol
    "Hartree": units.Hartree,
}
LENGTH_UNITS = {"A": 1.0, "Bohr": units.Bohr}

_ENERGY_ALIASES = {"ev": "eV", "kcal/mol": "kcal/mol", "kcal_mol": "kcal/mol", "kj/mol": "kJ/mol",
                   "kj_mol": "kJ/mol", "hartree": "Hartree", "ha": "Hartree", "eh": "Hartree"}
_LENGTH_ALIASES = {"a": "A", "ang": "A", "angstrom": "A", "bohr": "Bohr", "a0": "Bohr"}


def energy_factor(unit: str) -> float:
    name = _ENERGY_ALIASES.get(str(unit).lower())
    if name is None:
        raise ValueError(f"unknown energy unit {unit!r}; choose one of {sorted(ENERGY_UNITS)}")
    return ENERGY_UNITS[name]


def length_factor(unit: str) -> float:
    name = _LENGTH_ALIASES.get(str(unit).lower())
    if name is None:
        raise ValueError(f"unknown length unit {unit!r}; choose one of {sorted(LENGTH_UNITS)}")
    return LENGTH_UNITS[name]
