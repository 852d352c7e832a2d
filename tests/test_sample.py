"""`so3krates sample`: frames labelled with GFN2-xTB (energy, forces, stress of periodic cells) match a
direct tblite call."""
import numpy as np
import pytest
from ase.io import read
from tblite.ase import TBLite

from so3krates.cli import main as cli
from so3krates.model.data import read_dataset
from so3krates.model.sample import resolve_structure


def direct_tblite(atoms):
    atoms = atoms.copy()
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    stress = atoms.get_stress(voigt=False) if atoms.pbc.all() else None
    return atoms.get_potential_energy(), atoms.get_forces(), stress


@pytest.mark.parametrize("structure", ["ethanol", "water-box:4"])
def test_sample_matches_direct_tblite(tmp_path, structure):
    out = tmp_path / "data.xyz"
    assert cli(["sample", structure, "-o", str(out), "--frames", "2", "--stride", "2", "--equilibration", "2",
                "--temperature", "500", "--seed", "3", "--quiet"]) == 0
    frames = read(out, index=":")
    assert len(frames) == 2
    assert frames[0].info["level_of_theory"].startswith("GFN2-xTB (tblite")
    assert [f.info["step"] for f in frames] == [2, 4]
    assert all(f.pbc.all() == (structure != "ethanol") for f in frames)
    data = read_dataset(out)
    assert not np.allclose(data[0].positions, data[1].positions)   # the MD moved
    for frame, s in zip(frames, data):
        energy, forces, stress = direct_tblite(frame)
        # The MD restarts each SCF from the previous step's wavefunction, the direct call from scratch:
        # both converge to tblite's default tolerance, which leaves ~1e-4 eV/A in the forces.
        assert s.energy == pytest.approx(energy, abs=1e-5)
        np.testing.assert_allclose(s.forces, forces, atol=5e-4)
        # Periodic cells carry tblite's stress (eV/A^3, ASE's sign) through the file and the reader.
        assert (s.stress is None) == (stress is None)
        if stress is not None:
            np.testing.assert_allclose(s.stress, stress, atol=1e-5)
            assert np.abs(stress).max() > 1e-3   # a real stress, not zeros


def test_bundled_alanine_dipeptide_and_bad_names():
    atoms = resolve_structure("alanine-dipeptide")
    assert atoms.get_chemical_formula() == "C6H12N2O2" and len(atoms) == 22
    _, forces, _ = direct_tblite(atoms)
    assert np.abs(forces).max() < 0.05   # bundled geometry is a GFN2-xTB minimum
    with pytest.raises(FileNotFoundError, match="neither a file"):
        resolve_structure("no-such-molecule")
    assert cli(["sample", "ethanol", "-o", "x.xyz", "--method", "dftb", "--quiet"]) == 1
