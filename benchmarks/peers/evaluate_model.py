"""Energy and force errors of one trained model on a labelled extxyz file (REF_energy eV, REF_forces eV/A).

    <venv>/bin/python benchmarks/peers/evaluate_model.py --kind ours|mace|so3krates-torch MODEL TEST.xyz

Runs in the model's own venv (ours: /work/main/.venv; peers: benchmarks/peers/.venv) and prints one
JSON line. The same metric code for every model: energy MAE per structure (meV) and per atom
(meV/atom), force MAE and RMSE over all Cartesian components (meV/A).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from ase.io import read


def calculator(kind, path):
    if kind == "ours":
        from so3krates.ase import So3kratesCalculator
        return So3kratesCalculator(path)
    if kind == "mace":
        from mace.calculators import MACECalculator
        return MACECalculator(model_paths=path, device="cpu", default_dtype="float64")
    if kind == "so3krates-torch":
        from so3krates_torch.calculator.so3 import TorchkratesCalculator
        # The trainer builds SO3LR (here with its ZBL/electrostatics/dispersion terms switched off).
        return TorchkratesCalculator(model_paths=path, model_type="so3lr", default_dtype="float64")
    raise ValueError(f"unknown kind {kind!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", required=True, choices=["ours", "mace", "so3krates-torch"])
    ap.add_argument("model")
    ap.add_argument("test")
    args = ap.parse_args()
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # library prints stay off the JSON line
    calc = calculator(args.kind, args.model)
    de, dfs, natoms = [], [], []
    for atoms in read(args.test, index=":"):
        ref_e, ref_f = atoms.info["REF_energy"], atoms.arrays["REF_forces"]
        atoms.calc = calc
        de.append(atoms.get_potential_energy() - ref_e)
        dfs.append(atoms.get_forces() - ref_f)
        natoms.append(len(atoms))
    de, df = np.array(de), np.concatenate(dfs).ravel()
    result = {"structures": len(de), "energy_mae_meV": 1000 * float(np.abs(de).mean()),
              "energy_mae_meV_per_atom": 1000 * float(np.abs(de / np.array(natoms)).mean()),
              "forces_mae_meV_per_A": 1000 * float(np.abs(df).mean()),
              "forces_rmse_meV_per_A": 1000 * float(np.sqrt((df ** 2).mean()))}
    real_stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
