"""The unit conversions at the OpenMM boundary (OpenMM: nm, kJ/mol, ps; so3krates: A, eV)."""
from openmm import unit

ANGSTROM_PER_NM = 10.0
# CODATA 2018: 1 eV = 96.485332... kJ/mol (e * N_A / 1000); taken from OpenMM's own constants.
KJ_PER_MOL_PER_EV = (1.0 * unit.elementary_charge * unit.volt * unit.AVOGADRO_CONSTANT_NA).value_in_unit(unit.kilojoule_per_mole)
