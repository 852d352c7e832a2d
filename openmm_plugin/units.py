"""The units at the OpenMM boundary (OpenMM: nm, kJ/mol, ps; so3krates and ASE: Angstrom, eV,
ASE time), every factor from OpenMM's own `openmm.unit` and, for ASE's time unit, `ase.units`."""
from ase import units as ase_units
from openmm import unit

ANGSTROM_PER_NM = unit.nanometer.conversion_factor_to(unit.angstrom)
# CODATA 2018: 1 eV = 96.485332... kJ/mol (e * N_A / 1000), OpenMM's constants.
KJ_PER_MOL_PER_EV = (1.0 * unit.elementary_charge * unit.volt * unit.AVOGADRO_CONSTANT_NA).value_in_unit(
    unit.kilojoule_per_mole)
# ASE velocity unit (A / ASE time unit) -> nm/ps
NM_PER_PS_PER_ASE_VELOCITY = unit.picosecond.conversion_factor_to(unit.femtosecond) * ase_units.fs / ANGSTROM_PER_NM
