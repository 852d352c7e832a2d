"""Units at the engine boundaries: each engine's factors come from that engine's own library, and
they agree with each other and with ASE."""
import pytest
from ase import units as ase_units

from so3krates.lammps_pair import units as lammps_units
from so3krates.openmm_plugin import units as openmm_units


def test_ev_in_kj_per_mol_and_kcal_per_mol_agree_across_ase_openmm_and_lammps():
    ev_in_kj_per_mol_ase = ase_units.mol / ase_units.kJ
    ev_in_kcal_per_mol_ase = ase_units.mol / ase_units.kcal
    assert openmm_units.KJ_PER_MOL_PER_EV == pytest.approx(ev_in_kj_per_mol_ase, rel=1e-8)
    # LAMMPS: the ratio of its Boltzmann constants in `real` and `metal` units (no log at hand)
    assert lammps_units.energy_per_ev("real") == pytest.approx(ev_in_kcal_per_mol_ase, rel=1e-7)
    assert lammps_units.energy_per_ev("real") == pytest.approx(openmm_units.KJ_PER_MOL_PER_EV / 4.184, rel=1e-7)
    assert lammps_units.energy_per_ev("metal") == 1.0


def test_the_factor_printed_by_the_pair_style_wins_over_the_fallback():
    log = "pair_style so3krates: 1 eV = 23.060549 kcal/mol (units real, LAMMPS utils::get_conversion_factor)\n"
    assert lammps_units.energy_per_ev("real", log) == 23.060549
    assert lammps_units.energy_per_ev("real", "no such line") != 23.060549


def test_lengths_times_and_pressures():
    assert openmm_units.ANGSTROM_PER_NM == pytest.approx(10.0, rel=1e-15)
    # ASE velocity (A per ASE time unit) in nm/ps and in LAMMPS metal A/ps
    assert openmm_units.NM_PER_PS_PER_ASE_VELOCITY == pytest.approx(1000 * ase_units.fs / 10.0, rel=1e-12)
    assert lammps_units.ase_time_per_lammps_time("metal") == pytest.approx(1000 * ase_units.fs, rel=1e-12)
    assert lammps_units.ase_time_per_lammps_time("real") == pytest.approx(ase_units.fs, rel=1e-12)
    # LAMMPS metal pressure: bar per eV/A^3, against ASE's
    assert lammps_units.constants("metal")["nktv2p"] == pytest.approx(1.0 / ase_units.bar, rel=1e-6)


def test_unknown_lammps_unit_style_is_a_clear_error():
    with pytest.raises(ValueError, match="supports metal, real"):
        lammps_units.constants("lj")
