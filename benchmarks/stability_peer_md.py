"""Langevin MD of a peer model through its ASE calculator, for benchmarks/stability.py.

    benchmarks/peers/.venv/bin/python benchmarks/stability_peer_md.py --kind mace|so3krates-torch MODEL START.xyz \
        --out traj.xyz --temperature 500 --time-ps 100 --timestep 0.5 --friction 1 --seed 0 --check-every 20

Runs in the peers' own environment (no so3krates there): it writes a frame (step, potential energy,
positions, momenta) every --check-every steps, flushed as it goes; the failure criteria are applied
afterwards, in the project's environment, by so3krates.validation.stability.check_frames, the same
code as for our model. It stops by itself only when the energy is not finite or the structure has
flown apart (an atom 20 A further from the centre than at the start), so as not to integrate
garbage for the rest of the run.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, thermalize_momenta

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from evaluate_model import calculator  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", required=True, choices=["mace", "so3krates-torch", "ours"])
    ap.add_argument("model")
    ap.add_argument("start")
    ap.add_argument("--out", required=True)
    ap.add_argument("--temperature", type=float, default=500.0)
    ap.add_argument("--time-ps", type=float, default=100.0)
    ap.add_argument("--timestep", type=float, default=0.5, help="fs")
    ap.add_argument("--friction", type=float, default=1.0, help="1/ps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-every", type=int, default=20)
    args = ap.parse_args()
    atoms = read(args.start)
    atoms.calc = calculator(args.kind, args.model)
    thermalize_momenta(atoms, args.temperature, rng=np.random.default_rng(args.seed))
    Stationary(atoms)
    dyn = Langevin(atoms, timestep=args.timestep * units.fs, temperature_K=args.temperature,
                   friction=args.friction / (1000.0 * units.fs), fixcm=False,
                   rng=np.random.default_rng(args.seed))   # as ours in OpenMM: no centre-of-mass constraint
    steps = int(round(args.time_ps * 1000.0 / args.timestep))
    reach = float(np.linalg.norm(atoms.positions - atoms.positions.mean(0), axis=1).max()) + 20.0
    began = time.perf_counter()
    with open(args.out, "w") as fh:
        for step in range(0, steps + 1, args.check_every):
            if step:
                dyn.run(args.check_every)
            energy = float(atoms.get_potential_energy())
            frame = atoms.copy()
            frame.calc = None
            frame.info.update(step=step, energy=energy)
            write(fh, frame, format="extxyz")
            fh.flush()
            spread = np.linalg.norm(atoms.positions - atoms.positions.mean(0), axis=1).max()
            if not math.isfinite(energy) or not np.isfinite(atoms.positions).all() or spread > reach:
                break
    print(f"wall_s {time.perf_counter() - began:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
