"""Readers: extended XYZ, sGDML npz, DeePMD raw folders; unit conversion once; clear errors."""
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from so3krates.model.data import DataError, read_dataset
from so3krates.model.units import energy_factor

KCAL = 4.184 / 96.485332  # eV per kcal/mol, from the CODATA constants (not from the code under test)
RNG = np.random.default_rng(0)


def frames(n=3, periodic=False, with_forces=True):
    out = []
    for k in range(n):
        atoms = Atoms("OH2", positions=RNG.normal(size=(3, 3)) + 2.0, cell=[5.0, 6.0, 7.0] if periodic else None,
                      pbc=periodic)
        results = {"energy": -10.0 - k}
        if with_forces:
            results["forces"] = RNG.normal(size=(3, 3))
        atoms.calc = SinglePointCalculator(atoms, **results)
        out.append(atoms)
    return out


def test_extxyz_default_keys_and_unit_conversion(tmp_path):
    ref = frames()
    write(tmp_path / "ev.xyz", ref, format="extxyz")
    ev = read_dataset(tmp_path / "ev.xyz")
    assert len(ev) == 3
    for s, a in zip(ev, ref):
        assert s.energy == pytest.approx(a.get_potential_energy())
        np.testing.assert_allclose(s.forces, a.get_forces(), atol=1e-7)   # extxyz keeps 8 decimals
        np.testing.assert_allclose(s.positions, a.positions, atol=1e-7)
        assert not s.pbc.any()
    # The same data stored in kcal/mol (and kcal/mol/A) reads back as the same eV values.
    kcal = []
    for a in ref:
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy() / KCAL, forces=a.get_forces() / KCAL)
        kcal.append(b)
    write(tmp_path / "kcal.xyz", kcal, format="extxyz")
    for s, t in zip(read_dataset(tmp_path / "kcal.xyz", energy_unit="kcal/mol"), ev):
        assert s.energy == pytest.approx(t.energy, rel=1e-7)
        np.testing.assert_allclose(s.forces, t.forces, rtol=1e-6, atol=1e-7)
    assert energy_factor("kJ/mol") * 96.485332 == pytest.approx(1.0, rel=1e-8)


def test_extxyz_ref_keys_bohr_energy_only_and_periodic(tmp_path):
    ref = frames(periodic=True)
    text = []
    bohr = 0.529177210903
    for k, a in enumerate(ref):
        lines = [str(len(a)), f'Lattice="{" ".join(str(x / bohr) for x in a.cell.array.ravel())}" '
                 f'Properties=species:S:1:pos:R:3' + (":REF_forces:R:3" if k != 1 else "")
                 + f' REF_energy={a.get_potential_energy()} pbc="T T T"']
        for sym, p, f in zip(a.get_chemical_symbols(), a.positions / bohr, a.get_forces()):
            lines.append(" ".join([sym] + [repr(float(x)) for x in (list(p) + (list(f) if k != 1 else []))]))
        text += lines
    (tmp_path / "ref.xyz").write_text("\n".join(text) + "\n")
    data = read_dataset(tmp_path / "ref.xyz", length_unit="Bohr")
    assert [s.forces is None for s in data] == [False, True, False]   # frame 1 is energy-only
    # Forces are eV/A in the file... read with Bohr as the length unit they become eV/Bohr -> eV/A.
    np.testing.assert_allclose(data[0].forces, ref[0].get_forces() / bohr, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(data[2].positions, ref[2].positions, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(data[0].cell, ref[0].cell.array, rtol=1e-6, atol=1e-7)
    assert data[0].pbc.all() and data[1].energy == pytest.approx(-11.0)


def test_extxyz_errors_name_file_frame_and_key(tmp_path):
    ref = frames()
    ref[1].calc = None
    write(tmp_path / "bad.xyz", ref, format="extxyz")
    with pytest.raises(DataError, match=r"bad\.xyz: frame 1: has no energy"):
        read_dataset(tmp_path / "bad.xyz")
    write(tmp_path / "ok.xyz", frames(), format="extxyz")
    with pytest.raises(DataError, match=r"no frame has forces under key 'dft_f'"):
        read_dataset(tmp_path / "ok.xyz", forces_key="dft_f")
    (tmp_path / "junk.xyz").write_text("3\nnot a header\nO 0 0\n")
    with pytest.raises(DataError, match=r"junk\.xyz"):
        read_dataset(tmp_path / "junk.xyz")
    with pytest.raises(ValueError, match="unknown energy unit"):
        read_dataset(tmp_path / "ok.xyz", energy_unit="Ry")


def test_sgdml_npz_padding_and_units(tmp_path):
    R = RNG.normal(size=(2, 4, 3))
    F = RNG.normal(size=(2, 4, 3))
    z = np.array([[8, 1, 1, 0], [6, 1, 1, 1]])   # the first molecule is padded with one z == 0 atom
    E = np.array([[-100.0], [-200.0]])
    np.savez(tmp_path / "d.npz", R=R, F=F, z=z, E=E)
    data = read_dataset(tmp_path / "d.npz", energy_unit="kcal/mol")
    assert [len(s) for s in data] == [3, 4]
    np.testing.assert_array_equal(data[0].numbers, [8, 1, 1])
    np.testing.assert_allclose(data[0].positions, R[0, :3])
    np.testing.assert_allclose(data[1].forces, F[1] * KCAL, rtol=1e-6, atol=1e-7)
    assert data[1].energy == pytest.approx(-200.0 * KCAL, rel=1e-7)
    # One z for all frames, E as (n,), no forces: energy-only structures.
    np.savez(tmp_path / "e.npz", R=R, z=np.array([8, 1, 1, 1]), E=E.ravel())
    assert all(s.forces is None and len(s) == 4 for s in read_dataset(tmp_path / "e.npz"))
    np.savez(tmp_path / "bad.npz", R=R, z=z)
    with pytest.raises(DataError, match=r"bad\.npz: missing key 'E'"):
        read_dataset(tmp_path / "bad.npz")


def write_deepmd(folder, sets=(2, 1), n=3):
    folder.mkdir()
    (folder / "type_map.raw").write_text("O\nH\n")
    (folder / "type.raw").write_text("0\n1\n1\n")
    for k, nf in enumerate(sets):
        d = folder / f"set.{k:03d}"
        d.mkdir()
        np.save(d / "coord.npy", RNG.normal(size=(nf, 3 * n)))
        np.save(d / "force.npy", RNG.normal(size=(nf, 3 * n)))
        np.save(d / "energy.npy", -RNG.random(nf))
        np.save(d / "box.npy", np.tile(np.diag([5.0, 5.0, 5.0]).ravel(), (nf, 1)))


def test_deepmd_folders(tmp_path):
    write_deepmd(tmp_path / "sys")
    data = read_dataset(tmp_path / "sys")
    assert len(data) == 3
    coord = np.load(tmp_path / "sys" / "set.001" / "coord.npy")
    np.testing.assert_allclose(data[2].positions, coord[0].reshape(3, 3))
    np.testing.assert_array_equal(data[0].numbers, [8, 1, 1])
    assert data[0].pbc.all() and data[0].cell[0, 0] == 5.0
    assert data[2].source.endswith("frame 2")
    write_deepmd(tmp_path / "sys2", sets=(1,))
    assert len(read_dataset(tmp_path)) == 4    # a folder of systems
    (tmp_path / "sys2" / "set.000" / "coord.npy").unlink()
    with pytest.raises(DataError, match=r"set\.000: missing coord\.npy"):
        read_dataset(tmp_path / "sys2")
