"""Errors of a model (checkpoint or exported file) on labelled data, and a parity plot."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .data import Graph, Structure, collate, make_graphs, read_dataset, to_device


def predict_graphs(module, graphs: Sequence[Graph], batch_size: int = 32) -> Dict[str, List[np.ndarray]]:
    """Energies (eV, one per graph) and forces (eV/A, one (N, 3) array per graph) from a Potential or
    an exported ScriptModule, in batches through evaluate_edges."""
    energies: List[float] = []
    forces: List[np.ndarray] = []
    device = next(iter(module.parameters())).device
    for start in range(0, len(graphs), batch_size):
        chunk = graphs[start:start + batch_size]
        b = to_device(collate(chunk), device)
        out = module.evaluate_edges(b["positions"], b["species"], b["idx_i"], b["idx_j"], b["shifts"], b["batch"],
                                    b["num_graphs"], -1, True, False, False)
        energies.extend(out["energy"].detach().double().tolist())
        f = out["forces"].detach().double().cpu().numpy()
        sizes = np.cumsum([len(g.species) for g in chunk])[:-1]
        forces.extend(np.split(f, sizes))
    return {"energy": np.asarray(energies), "forces": forces}


def error_metrics(structures: Sequence[Structure], energies: np.ndarray, forces: Sequence[np.ndarray]) -> Dict:
    """MAE/RMSE of energies (meV, meV/atom) and force components (meV/A) against the reference labels."""
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
    metrics = error_metrics(structures, predicted["energy"], predicted["forces"])
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
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
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
    for ax in axes:
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    fig.tight_layout()
    from .checkpoint import atomic_write
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
