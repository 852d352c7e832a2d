"""Energy, per-atom energies, forces and virial of one structure through LAMMPS (`run 0`)."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
from ase import Atoms

from . import units as lammps_units
from .runner import THERMO_PRECISION, parse_thermo, read_dump, run_folder, run_lammps, setup_commands
from .system import lammps_system, write_data

STRESS_COLUMNS = ["c_stress[1]", "c_stress[2]", "c_stress[3]", "c_stress[4]", "c_stress[5]", "c_stress[6]"]
VIRIAL_COLUMNS = ["c_virial[1]", "c_virial[2]", "c_virial[3]", "c_virial[4]", "c_virial[5]", "c_virial[6]"]


def single_point(model_path: str, atoms: Atoms, ranks: int = 1, units: str = "metal",
                 workdir: Optional[str] = None, before_box: str = "", extra_commands: str = "",
                 per_atom_virial: bool = False) -> Dict[str, np.ndarray]:
    """{'energy': eV, 'energies': (N,) eV, 'forces': (N, 3) eV/A, 'virial': (3, 3) eV
    (W = V * pressure tensor, virial part; for a molecule sum_i r_i (x) F_i), 'log': LAMMPS log},
    in the frame and atom order of `atoms`. per_atom_virial: also 'virials' (N, 6) eV, the per-atom
    virials W_i (xx yy zz xy xz yz, LAMMPS frame; sum_i W_i = W) from `compute stress/atom`."""
    if units not in lammps_units.SUPPORTED:
        raise ValueError(f"units {units!r}: the so3krates pair style supports {', '.join(lammps_units.SUPPORTED)}")
    from so3krates.export import read_metadata
    read_metadata(model_path)   # a missing, foreign or damaged model file is refused before LAMMPS starts
    system = lammps_system(atoms)
    with run_folder("so3krates-lammps-", "its input and log", workdir) as tmp:
        write_data(str(tmp / "data.lmp"), system)
        per_atom = STRESS_COLUMNS if per_atom_virial else []
        script = setup_commands(system, model_path, "data.lmp", units, before_box) + "\n".join([
            extra_commands,
            "compute virial all pressure NULL virial",
            "compute peatom all pe/atom",
            "compute stress all stress/atom NULL virial" if per_atom_virial else "",
            "thermo_style custom step pe vol " + " ".join(VIRIAL_COLUMNS),
            THERMO_PRECISION,
            "dump forces all custom 1 forces.dump id fx fy fz c_peatom " + " ".join(per_atom),
            "dump_modify forces sort id format float %.17g",
            "run 0",
            "",
        ])
        log = run_lammps(script, tmp, ranks)
        thermo = parse_thermo(log)
        _, columns, values = read_dump(tmp / "forces.dump")[0]
    conv = lammps_units.energy_per_ev(units, log)
    col = {name: k for k, name in enumerate(columns)}
    order = np.argsort(values[:, col["id"]])
    values = values[order]
    forces = values[:, [col["fx"], col["fy"], col["fz"]]] / conv
    out = {
        "energy": float(thermo["PotEng"][0]) / conv,
        "energies": values[:, col["c_peatom"]] / conv,
        "forces": system.to_ase(forces),
        "log": log,
    }
    p = np.array([thermo[c][0] for c in VIRIAL_COLUMNS])   # xx yy zz xy xz yz
    w = p * float(thermo["Volume"][0]) / lammps_units.constants(units)["nktv2p"] / conv
    tensor = np.array([[w[0], w[3], w[4]], [w[3], w[1], w[5]], [w[4], w[5], w[2]]])
    out["virial"] = system.tensor_to_ase(tensor)
    if per_atom_virial:   # stress/atom is -W_i in pressure x volume units
        out["virials"] = -values[:, [col[c] for c in STRESS_COLUMNS]] / lammps_units.constants(units)["nktv2p"] / conv
    return out
