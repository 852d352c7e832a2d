"""Errors of a model (checkpoint or exported file) on labelled data, and a parity plot."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .data import Graph, Structure, collate, make_graphs, read_dataset, to_device


def predict_graphs(module, graphs: Sequence[Graph], batch_size: int = 32) -> Dict[str, List[np.ndarray]]:
    """Energies (eV, one per graph), forces (eV/A, one (N, 3) array per graph) and, for graphs with a
    stress label, the virial W (eV, (3, 3); None for the others) from a Potential or an exported
    ScriptModule, in batches through evaluate_edges."""
    energies: List[float] = []
    forces: List[np.ndarray] = []
    virials: List[Optional[np.ndarray]] = []
    device = next(iter(module.parameters())).device
    for start in range(0, len(graphs), batch_size):
        chunk = graphs[start:start + batch_size]
        b = to_device(collate(chunk), device)
        with_virial = bool(b["virial_mask"].any())
        out = module.evaluate_edges(b["positions"], b["species"], b["idx_i"], b["idx_j"], b["shifts"], b["batch"],
                                    b["num_graphs"], -1, True, with_virial, False)
        energies.extend(out["energy"].detach().double().tolist())
        f = out["forces"].detach().double().cpu().numpy()
        sizes = np.cumsum([len(g.species) for g in chunk])[:-1]
        forces.extend(np.split(f, sizes))
        w = out["virial"].detach().double().cpu().numpy() if with_virial else None
        virials.extend(w[k] if g.virial is not None else None for k, g in enumerate(chunk))
    return {"energy": np.asarray(energies), "forces": forces, "virial": virials}


def stress_errors(structures: Sequence[Structure], virials: Sequence[Optional[np.ndarray]]) -> Dict:
    """Stress errors over the structures with a stress label (model stress = -W / V, ASE's sign): all 9
    components, in eV/A^3 and GPa; the pressure -tr(sigma)/3 in GPa; the virial per atom in meV/atom (the
    training loss's term)."""
    from ase.units import GPa
    labelled = [(s, w) for s, w in zip(structures, virials) if s.stress is not None and w is not None]
    if not labelled:
        return {"stress_mae_eV_per_A3": None, "stress_rmse_eV_per_A3": None, "stress_mae_GPa": None,
                "stress_rmse_GPa": None, "pressure_mae_GPa": None, "virial_rmse_meV_per_atom": None,
                "n_structures_with_stress": 0}
    ds = np.array([-w / s.volume - s.stress for s, w in labelled])
    dw = np.array([1000.0 * (w - s.virial) / len(s) for s, w in labelled])
    dp = -np.trace(ds, axis1=1, axis2=2) / 3.0
    mae, rmse = float(np.mean(np.abs(ds))), float(np.sqrt(np.mean(ds ** 2)))
    return {"stress_mae_eV_per_A3": mae, "stress_rmse_eV_per_A3": rmse, "stress_mae_GPa": mae / GPa,
            "stress_rmse_GPa": rmse / GPa, "pressure_mae_GPa": float(np.mean(np.abs(dp))) / GPa,
            "virial_rmse_meV_per_atom": float(np.sqrt(np.mean(dw ** 2))), "n_structures_with_stress": len(labelled)}


def error_metrics(structures: Sequence[Structure], energies: np.ndarray, forces: Sequence[np.ndarray],
                  virials: Optional[Sequence[Optional[np.ndarray]]] = None) -> Dict:
    """MAE/RMSE of energies (meV, meV/atom), force components (meV/A) and, given the model's virials,
    stresses (`stress_errors`) against the reference labels."""
    n_atoms = np.array([len(s) for s in structures], dtype=float)
    de = (np.asarray(energies) - np.array([s.energy for s in structures])) * 1000.0
    df = [1000.0 * (f - s.forces).ravel() for s, f in zip(structures, forces) if s.forces is not None]
    df = np.concatenate(df) if df else np.zeros(0)
    has_f = df.size > 0
    return {
        "n_structures": len(structures),
        "n_atoms": int(n_atoms.sum()),
        "energy_mae_meV": float(np.mean(np.abs(de))),
        "energy_rmse_meV": float(np.sqrt(np.mean(de ** 2))),
        "energy_mae_meV_per_atom": float(np.mean(np.abs(de) / n_atoms)),
        "energy_rmse_meV_per_atom": float(np.sqrt(np.mean((de / n_atoms) ** 2))),
        "forces_mae_meV_per_A": float(np.mean(np.abs(df))) if has_f else None,
        "forces_rmse_meV_per_A": float(np.sqrt(np.mean(df ** 2))) if has_f else None,
        "n_structures_with_forces": sum(s.forces is not None for s in structures),
        **stress_errors(structures, virials if virials is not None else [None] * len(structures)),
    }


def evaluate(model, data, batch_size: int = 32, json_path: Optional[str | os.PathLike] = None,
             plot_path: Optional[str | os.PathLike] = None, **reader_options) -> Dict:
    """model: checkpoint, exported file, Potential or ScriptModule; data: a path (read with
    reader_options: energy_key, forces_key, energy_unit, length_unit) or a list of Structures."""
    from so3krates.export import load_model

    from .outputs import check_output_file
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be a positive number of structures, got {batch_size}")
    check_output_file(json_path, "--json")
    check_output_file(plot_path, "--plot")
    module, _ = load_model(model)
    structures = read_dataset(data, **reader_options) if isinstance(data, (str, os.PathLike)) else list(data)
    dtype = next((w.dtype for n, w in module.named_parameters() if n.endswith("embedding.weight")), torch.float64)
    graphs = make_graphs(structures, list(module.elements), float(module.cutoff), dtype)
    predicted = predict_graphs(module, graphs, batch_size)
    metrics = error_metrics(structures, predicted["energy"], predicted["forces"], predicted["virial"])
    if json_path:
        from .checkpoint import atomic_write
        atomic_write(json_path, lambda tmp: open(tmp, "w").write(json.dumps(metrics, indent=1) + "\n"))
    if plot_path:
        parity_plot(plot_path, structures, predicted, metrics)
    return metrics


def parity_plot(path, structures, predicted, metrics) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    stressed = [(s.stress.ravel(), -w.ravel() / s.volume) for s, w in zip(structures, predicted["virial"])
                if s.stress is not None and w is not None]
    fig, axes = plt.subplots(1, 3 if stressed else 2, figsize=(15 if stressed else 10, 4.5))
    n = np.array([len(s) for s in structures], dtype=float)
    ref_e = np.array([s.energy for s in structures]) / n
    pred_e = predicted["energy"] / n
    axes[0].scatter(ref_e, pred_e, s=6)
    axes[0].set_xlabel("reference energy (eV/atom)")
    axes[0].set_ylabel("model energy (eV/atom)")
    axes[0].set_title(f"energy MAE {metrics['energy_mae_meV_per_atom']:.2f} meV/atom")
    pairs = [(s.forces.ravel(), f.ravel()) for s, f in zip(structures, predicted["forces"]) if s.forces is not None]
    if pairs:
        ref_f, pred_f = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
        axes[1].scatter(ref_f, pred_f, s=2, alpha=0.5)
        axes[1].set_title(f"force MAE {metrics['forces_mae_meV_per_A']:.1f} meV/A")
    axes[1].set_xlabel("reference force component (eV/A)")
    axes[1].set_ylabel("model force component (eV/A)")
    if stressed:
        from ase.units import GPa
        axes[2].scatter(np.concatenate([p[0] for p in stressed]) / GPa, np.concatenate([p[1] for p in stressed]) / GPa,
                        s=6)
        axes[2].set_title(f"stress MAE {metrics['stress_mae_GPa']:.3f} GPa")
        axes[2].set_xlabel("reference stress component (GPa)")
        axes[2].set_ylabel("model stress component (GPa)")
    for ax in axes:
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    fig.tight_layout()
    from .checkpoint import atomic_write
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
