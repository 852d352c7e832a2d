"""Reference data readers: extended XYZ, sGDML npz and DeePMD raw folders -> one list of Structures.

Every reader converts units once, here, to eV and Angstrom. A bad file fails with the file name,
the frame index and what is missing.

Stress labels (periodic frames only) are kept as ASE's stress: the 3x3 tensor sigma = (1/V) dE/d(strain)
in eV/A^3 (ASE's sign: positive is tensile, sigma = -pressure tensor). A virial W (eV; extended XYZ
`virial`, DeePMD `virial.npy`) is W = -V sigma, the convention of DeePMD, MACE and the model's own
virial (W = V x pressure tensor, as LAMMPS).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .units import energy_factor, length_factor

DEFAULT_ENERGY_KEYS = ("energy", "REF_energy", "Energy", "total_energy", "dft_energy")
DEFAULT_FORCES_KEYS = ("forces", "REF_forces", "force", "Forces", "dft_forces")
STRESS_KEYS = ("stress", "REF_stress")      # eV/A^3 (energy unit / length unit^3), Voigt 6 or 3x3
VIRIAL_KEYS = ("virial", "REF_virial")      # eV (energy unit), 3x3 or 9 numbers


@dataclass
class Structure:
    """One labelled configuration, in eV and Angstrom."""
    positions: np.ndarray           # (N, 3) A
    numbers: np.ndarray             # (N,) atomic numbers
    cell: np.ndarray                # (3, 3) A, rows are lattice vectors (zeros for molecules)
    pbc: np.ndarray                 # (3,) bool
    energy: Optional[float]         # eV
    forces: Optional[np.ndarray]    # (N, 3) eV/A, or None for energy-only frames
    source: str = ""                # "file:frame" for error messages
    stress: Optional[np.ndarray] = None   # (3, 3) eV/A^3, ASE sign (see the module docstring), periodic only

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell)))

    @property
    def virial(self) -> Optional[np.ndarray]:
        """W = -V sigma (eV), or None without a stress label."""
        return None if self.stress is None else -self.volume * self.stress

    def __len__(self) -> int:
        return len(self.numbers)


class DataError(ValueError):
    pass


def read_dataset(path: str | os.PathLike, energy_key: Optional[str] = None, forces_key: Optional[str] = None,
                 energy_unit: str = "eV", length_unit: str = "A", require_energy: bool = True,
                 require_forces: bool = False) -> List[Structure]:
    """Read extended XYZ (any ASE format), sGDML .npz or a DeePMD raw folder (or a folder of them).
    require_forces: a file in which no frame has forces is an error that says where forces were
    looked for and what the file holds (forces under an unknown key are never dropped silently)."""
    path = Path(path)
    e_factor, l_factor = energy_factor(energy_unit), length_factor(length_unit)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.is_dir():
        structures = _read_deepmd_tree(path)
        where = "no set.*/force.npy in any DeePMD system"
    elif path.suffix == ".npz":
        structures = _read_npz(path)
        where = "no F array in the npz (keys: " + ", ".join(_npz_keys(path)) + ")"
    else:
        structures = _read_ase(path, energy_key, forces_key)
        where = _ase_force_keys(path, forces_key)
    if not structures:
        raise DataError(f"{path}: contains no structures")
    if require_forces and all(s.forces is None for s in structures):
        raise DataError(f"{path}: no frame has forces ({where}); name the forces with --forces-key KEY, "
                        f"or train on energies alone with --energy-only")
    for s in structures:
        _convert_and_check(s, e_factor, l_factor, require_energy)
    return structures


def dataset_sha256(path: str | os.PathLike) -> str:
    """sha256 of a data file, or of all files of a folder (sorted by relative path)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _convert_and_check(s: Structure, e_factor: float, l_factor: float, require_energy: bool) -> None:
    n = len(s.numbers)
    if s.positions.shape != (n, 3):
        raise DataError(f"{s.source}: positions have shape {s.positions.shape}, expected ({n}, 3)")
    if n == 0:
        raise DataError(f"{s.source}: has no atoms")
    if s.energy is None and require_energy:
        raise DataError(f"{s.source}: has no energy")
    if s.forces is not None and s.forces.shape != (n, 3):
        raise DataError(f"{s.source}: forces have shape {s.forces.shape}, expected ({n}, 3)")
    if np.any(s.numbers < 1) or np.any(s.numbers > 118):
        raise DataError(f"{s.source}: atomic numbers must lie in 1..118, got {sorted(set(s.numbers.tolist()))}")
    s.positions = np.asarray(s.positions, dtype=np.float64) * l_factor
    s.cell = np.asarray(s.cell, dtype=np.float64).reshape(3, 3) * l_factor
    if s.energy is not None:
        s.energy = float(s.energy) * e_factor
    if s.forces is not None:
        s.forces = np.asarray(s.forces, dtype=np.float64) * (e_factor / l_factor)
    for name, value in (("positions", s.positions), ("energy", s.energy), ("forces", s.forces)):
        if value is not None and not np.all(np.isfinite(value)):
            raise DataError(f"{s.source}: {name} contain NaN or infinite values")
    if s.pbc.any() and abs(np.linalg.det(s.cell)) < 1e-6:
        raise DataError(f"{s.source}: periodic (pbc={s.pbc.tolist()}) but the cell has zero volume; "
                        f"give a Lattice or set pbc=\"F F F\"")
    if s.stress is not None:
        s.stress = _stress_label(s, e_factor, l_factor)


def _stress_label(s: Structure, e_factor: float, l_factor: float) -> np.ndarray:
    """The reader's stress (an array, in the data's units) or virial (a ("virial", array) pair) as
    ASE's stress tensor (3, 3) in eV/A^3; s.cell is already in A."""
    kind, value = s.stress if isinstance(s.stress, tuple) else ("stress", s.stress)
    try:
        value = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{s.source}: {kind} {value!r} is not numeric") from None
    shapes = "3x3 or 9 numbers (eV)" if kind == "virial" else "Voigt xx yy zz yz xz xy, 3x3 or 9 numbers (eV/A^3)"
    if value.size == 6 and kind == "stress":
        xx, yy, zz, yz, xz, xy = value.ravel()
        value = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    elif value.size == 9:
        value = value.reshape(3, 3)
    else:
        raise DataError(f"{s.source}: {kind} has {value.size} numbers, expected {shapes}")
    if not np.all(np.isfinite(value)):
        raise DataError(f"{s.source}: {kind} contains NaN or infinite values")
    if not s.pbc.all():
        raise DataError(f"{s.source}: has a {kind} label but is not periodic in all directions (pbc="
                        f"{s.pbc.tolist()}): a stress needs the cell volume; remove the {kind} or give the "
                        f"frame its periodic cell")
    if kind == "virial":
        return -value * e_factor / s.volume
    return value * (e_factor / l_factor ** 3)


# --- extended XYZ and other ASE formats ------------------------------------------------------------

def _read_ase(path: Path, energy_key: Optional[str], forces_key: Optional[str]) -> List[Structure]:
    from ase.io import read
    try:
        frames = read(str(path), index=":")
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as extended XYZ or another ASE format "
                        f"({exc.__class__.__name__}: {exc})") from None
    structures = []
    any_forces = False
    for index, atoms in enumerate(frames):
        where = f"{path}: frame {index}"
        energy = _find(atoms, [energy_key] if energy_key else DEFAULT_ENERGY_KEYS, "energy")
        if energy is None:
            raise DataError(f"{where}: has no energy under key "
                            f"{energy_key if energy_key else ' / '.join(DEFAULT_ENERGY_KEYS)}; header keys found: "
                            f"{sorted(atoms.info)}; choose the key with --energy-key")
        forces = _find(atoms, [forces_key] if forces_key else DEFAULT_FORCES_KEYS, "forces")
        any_forces |= forces is not None
        try:
            energy = float(np.asarray(energy).reshape(()))
        except (TypeError, ValueError):
            raise DataError(f"{where}: energy {energy!r} is not one number") from None
        structures.append(Structure(
            positions=np.array(atoms.positions), numbers=np.array(atoms.numbers, dtype=np.int64),
            cell=np.array(atoms.cell.array), pbc=np.array(atoms.pbc, dtype=bool), energy=energy,
            forces=None if forces is None else np.array(forces, dtype=np.float64), source=where,
            stress=_find_stress(atoms)))
    if forces_key and not any_forces:
        arrays = sorted(k for k in frames[0].arrays if k not in ("numbers", "positions"))
        raise DataError(f"{path}: no frame has forces under key {forces_key!r}; per-atom arrays found: {arrays}")
    return structures


def _ase_force_keys(path: Path, forces_key: Optional[str]) -> str:
    """Where forces were looked for and which per-atom arrays the first frame has, in words."""
    from ase.io import read
    try:
        atoms = read(str(path), index=0)
        arrays = sorted(k for k in atoms.arrays if k not in ("numbers", "positions"))
    except Exception:  # noqa: BLE001 - only for the message
        arrays = []
    keys = forces_key or " / ".join(DEFAULT_FORCES_KEYS)
    return f"looked for per-atom arrays {keys}; the first frame has {arrays or 'none'}"


def _find_stress(atoms):
    """The frame's stress (ASE's calculator results or the header) or ("virial", W) from the header."""
    stress = _find(atoms, STRESS_KEYS, "energy")
    if stress is not None:
        return stress
    virial = _find(atoms, VIRIAL_KEYS, "energy")
    return None if virial is None else ("virial", virial)


def _npz_keys(path: Path) -> List[str]:
    with np.load(path, allow_pickle=False) as data:
        return sorted(data.files)


def _find(atoms, keys: Sequence[str], kind: str):
    """A value from the header (info), the per-atom arrays, or the calculator ASE attached."""
    results = atoms.calc.results if atoms.calc is not None else {}
    for key in keys:
        if kind == "energy" and key in atoms.info:
            return atoms.info[key]
        if kind == "forces" and key in atoms.arrays:
            return atoms.arrays[key]
        if key in results:
            return results[key]
    return None


# --- sGDML npz -------------------------------------------------------------------------------------

def _read_npz(path: Path) -> List[Structure]:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as a numpy .npz file ({exc.__class__.__name__}: {exc})") from None
    for key, what in (("R", "positions (frames, atoms, 3)"), ("z", "atomic numbers"), ("E", "energies")):
        if key not in data.files:
            raise DataError(f"{path}: missing key {key!r} ({what}); an sGDML npz has keys E, F, R, z; "
                            f"this file has {sorted(data.files)}")
    def array(key: str, what: str) -> np.ndarray:
        try:
            return np.asarray(data[key], dtype=np.int64 if key == "z" else np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{path}: array {key} ({what}) is not numeric (dtype {data[key].dtype})") from None

    R = array("R", "positions")
    if R.ndim != 3 or R.shape[2] != 3:
        raise DataError(f"{path}: array R (positions) has shape {R.shape}, expected (frames, atoms, 3)")
    frames, atoms = R.shape[:2]
    E = array("E", "energies")
    if E.shape not in ((frames,), (frames, 1)):
        raise DataError(f"{path}: array E (energies) has shape {E.shape}, expected ({frames},) or ({frames}, 1): "
                        f"one energy per frame of R {R.shape}")
    E = E.reshape(frames, 1)
    z = array("z", "atomic numbers")
    if z.shape not in ((atoms,), (frames, atoms)):
        raise DataError(f"{path}: array z (atomic numbers) has shape {z.shape}, expected ({atoms},) or "
                        f"({frames}, {atoms}) to match R {R.shape}")
    if z.ndim == 1:
        z = np.broadcast_to(z, R.shape[:2])
    F = array("F", "forces") if "F" in data.files else None
    if F is not None and F.shape != R.shape:
        raise DataError(f"{path}: array F (forces) has shape {F.shape}, expected the shape of R {R.shape}")
    lattice = array("lattice", "cell") if "lattice" in data.files else None
    if lattice is not None and lattice.shape not in ((3, 3), (frames, 3, 3)):
        raise DataError(f"{path}: array lattice has shape {lattice.shape}, expected (3, 3) or ({frames}, 3, 3)")
    structures = []
    for k in range(len(R)):
        real = z[k] != 0  # zero-padded atoms of smaller molecules
        cell = np.zeros((3, 3)) if lattice is None else lattice.reshape(-1, 3, 3)[min(k, lattice.size // 9 - 1)]
        structures.append(Structure(positions=R[k][real], numbers=z[k][real].copy(), cell=cell,
                                    pbc=np.full(3, lattice is not None), energy=E[k, 0],
                                    forces=None if F is None else F[k][real], source=f"{path}: frame {k}"))
    return structures


# --- DeePMD raw folders ----------------------------------------------------------------------------

def _read_deepmd_tree(path: Path) -> List[Structure]:
    if (path / "type.raw").is_file():
        return _read_deepmd(path)
    systems = sorted(p.parent for p in path.rglob("type.raw"))
    if not systems:
        raise DataError(f"{path}: is a folder but not a DeePMD system (no type.raw in it or below it)")
    return [s for system in systems for s in _read_deepmd(system)]


def _read_deepmd(path: Path) -> List[Structure]:
    from ase.data import atomic_numbers
    try:
        types = np.loadtxt(path / "type.raw", dtype=np.int64, ndmin=1)
    except ValueError as exc:
        raise DataError(f"{path}/type.raw: expected one integer atom type per atom ({exc})") from None
    if not (path / "type_map.raw").is_file():
        raise DataError(f"{path}: missing type_map.raw (element symbols, one per type)")
    type_map = (path / "type_map.raw").read_text().split()
    unknown = [s for s in type_map if s not in atomic_numbers]
    if unknown:
        raise DataError(f"{path}/type_map.raw: unknown element symbol(s) {unknown}")
    if types.max(initial=0) >= len(type_map):
        raise DataError(f"{path}/type.raw: type {types.max()} but type_map.raw lists only {len(type_map)} elements")
    numbers = np.array([atomic_numbers[type_map[t]] for t in types], dtype=np.int64)
    n = len(numbers)
    sets = sorted(p for p in path.glob("set.*") if p.is_dir())
    if not sets:
        raise DataError(f"{path}: no set.* folders")
    periodic = not (path / "nopbc").exists()
    structures, frame = [], 0
    for s in sets:
        def load(name: str, width: int, required: bool):
            f = s / f"{name}.npy"
            if not f.is_file():
                if required:
                    raise DataError(f"{s}: missing {name}.npy (frame {frame} onwards)")
                return None
            try:
                a = np.load(f, allow_pickle=False)
            except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
                raise DataError(f"{f}: cannot be read as a numpy .npy file ({exc.__class__.__name__}: {exc})") from None
            meaning = {"coord": f"x y z of the {n} atoms of type.raw", "force": f"fx fy fz of the {n} atoms of "
                       f"type.raw", "energy": "one energy", "box": "the 3x3 cell",
                       "virial": "the 3x3 virial (eV)"}[name]
            if a.ndim == 0 or (a.size and ((a.ndim == 1 and width != 1) or a[0].size != width)):
                raise DataError(f"{f}: array {name} has shape {a.shape}, expected (frames, {width}): one row per "
                                f"frame with {meaning}")
            if not np.issubdtype(a.dtype, np.number):
                raise DataError(f"{f}: array {name} is not numeric (dtype {a.dtype})")
            return a.reshape(len(a), width) if a.size else a.reshape(0, width)
        coord = load("coord", 3 * n, True)
        energy = load("energy", 1, True)
        force = load("force", 3 * n, False)
        box = load("box", 9, periodic)
        virial = load("virial", 9, False)   # DeePMD's virial: eV, W = -V sigma
        for name, a in (("energy", energy), ("force", force), ("box", box), ("virial", virial)):
            if a is not None and len(a) != len(coord):
                raise DataError(f"{s}: {name}.npy has {len(a)} frames, coord.npy has {len(coord)}")
        for k in range(len(coord)):
            structures.append(Structure(
                positions=coord[k].reshape(n, 3), numbers=numbers, cell=box[k].reshape(3, 3) if box is not None
                else np.zeros((3, 3)), pbc=np.full(3, box is not None), energy=energy[k, 0],
                forces=None if force is None else force[k].reshape(n, 3), source=f"{path}: frame {frame}",
                stress=None if virial is None else ("virial", virial[k])))
            frame += 1
    return structures


def to_atoms(s: Structure):
    """A Structure as ase.Atoms with a SinglePointCalculator holding its labels."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    atoms = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
    results = {"energy": s.energy} if s.energy is not None else {}
    if s.forces is not None:
        results["forces"] = s.forces
    if s.stress is not None:
        results["stress"] = s.stress
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


# --- graphs: neighbour pairs once per structure, batches by concatenation -----------------------------

@dataclass
class Graph:
    """A structure ready for the network: tensors, with its full (both directions) neighbour list."""
    positions: "torch.Tensor"   # (N, 3)
    species: "torch.Tensor"     # (N,) model element indices
    idx_i: "torch.Tensor"       # (E,) receivers
    idx_j: "torch.Tensor"       # (E,) senders
    shifts: "torch.Tensor"      # (E, 3) Cartesian
    energy: float
    forces: Optional["torch.Tensor"]
    virial: Optional["torch.Tensor"] = None   # (3, 3) eV: W = -V sigma of the stress label


def neighbor_pairs(s: Structure, cutoff: float):
    """Full neighbour list (i, j, Cartesian shifts) of one structure, as numpy arrays."""
    from .neighbors import find_pairs
    return find_pairs(s.positions, s.cell, s.pbc, cutoff)


def check_distances(s: Structure, i: np.ndarray, j: np.ndarray, shifts: np.ndarray, min_distance: float = 0.01) -> None:
    """Two atoms at (nearly) the same position make the model's edge directions undefined (NaN)."""
    if len(i):
        d = np.linalg.norm(s.positions[j] - s.positions[i] + shifts, axis=1)
        e = int(np.argmin(d))
        if d[e] < min_distance:
            raise DataError(f"{s.source}: atoms {i[e]} and {j[e]} are closer than {min_distance} A ({d[e]:.2g} A): "
                            f"two atoms at the same position; remove the duplicated atom from this structure")


def make_graphs(structures: Sequence[Structure], elements: Sequence[int], cutoff: float, dtype) -> List[Graph]:
    import torch
    table = np.full(119, -1, dtype=np.int64)
    table[list(elements)] = np.arange(len(elements))
    graphs = []
    for s in structures:
        species = table[s.numbers]
        if (species < 0).any():
            missing = sorted(set(s.numbers[species < 0].tolist()))
            raise DataError(f"{s.source}: element(s) {missing} are not among the model's elements {list(elements)}")
        i, j, shifts = neighbor_pairs(s, cutoff)
        check_distances(s, i, j, shifts)
        graphs.append(Graph(
            positions=torch.tensor(s.positions, dtype=dtype), species=torch.from_numpy(species),
            idx_i=torch.from_numpy(i), idx_j=torch.from_numpy(j), shifts=torch.tensor(shifts, dtype=dtype),
            energy=float(s.energy) if s.energy is not None else float("nan"),
            forces=None if s.forces is None else torch.tensor(s.forces, dtype=dtype),
            virial=None if s.stress is None else torch.tensor(s.virial, dtype=torch.float64)))
    return graphs


def collate(graphs: Sequence[Graph]) -> dict:
    """One batch: atoms concatenated, edge indices offset, `batch` = graph index of each atom."""
    import torch
    sizes = [len(g.species) for g in graphs]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    forces = [g.forces if g.forces is not None else torch.zeros_like(g.positions) for g in graphs]
    return {
        "positions": torch.cat([g.positions for g in graphs]),
        "species": torch.cat([g.species for g in graphs]),
        "idx_i": torch.cat([g.idx_i + int(o) for g, o in zip(graphs, offsets)]),
        "idx_j": torch.cat([g.idx_j + int(o) for g, o in zip(graphs, offsets)]),
        "shifts": torch.cat([g.shifts for g in graphs]),
        "batch": torch.repeat_interleave(torch.arange(len(graphs)), torch.tensor(sizes)),
        "num_graphs": len(graphs),
        "num_atoms": torch.tensor(sizes, dtype=torch.float64),
        "energy": torch.tensor([g.energy for g in graphs], dtype=torch.float64),
        "forces": torch.cat(forces),
        "force_mask": torch.cat([torch.full((n,), g.forces is not None) for g, n in zip(graphs, sizes)]),
        "virial": torch.stack([g.virial if g.virial is not None else torch.zeros((3, 3), dtype=torch.float64)
                               for g in graphs]),
        "virial_mask": torch.tensor([g.virial is not None for g in graphs]),
    }


def to_device(batch: dict, device) -> dict:
    """A collated batch on `device` (the same dict on the CPU)."""
    import torch
    if torch.device(device).type == "cpu":
        return batch
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
