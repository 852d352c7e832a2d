"""Figures of merit for cross-engine validation: step-0 differences, NVE drift, divergence."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from so3krates.engines import MDResult


def step0_difference(reference: Dict[str, np.ndarray], other: Dict[str, np.ndarray], num_atoms: int) -> Dict[str, float]:
    """Max |dE| (meV, meV/atom), max |dF| (meV/A) and, when both have it, max |dW| (meV)."""
    de = abs(float(other["energy"]) - float(reference["energy"])) * 1000.0
    df = float(np.max(np.abs(np.asarray(other["forces"]) - np.asarray(reference["forces"])))) * 1000.0
    out = {"max_abs_dE_meV": de, "max_abs_dE_meV_per_atom": de / num_atoms, "max_abs_dF_meV_per_A": df}
    if reference.get("virial") is not None and other.get("virial") is not None:
        out["max_abs_dvirial_meV"] = float(np.max(np.abs(np.asarray(other["virial"]) - np.asarray(reference["virial"])))) * 1000.0
    return out


def energy_conservation(result: MDResult) -> Dict[str, float]:
    """Drift of the total energy from a linear fit (meV/atom/ps) and the RMS fluctuation about
    the fit (meV/atom), with the ratio of that fluctuation to the kinetic energy's (a well
    integrated NVE run has a ratio << 1)."""
    t_ps = result.time_fs / 1000.0
    n = max(result.num_atoms, 1)
    etot = result.total_eV
    if len(t_ps) < 3:
        raise ValueError("too few logged steps for a drift fit; run more steps or log more often")
    if not np.isfinite(etot).all():   # a blown-up run: reported as such by validate()
        nan = float("nan")
        return {"drift_meV_per_atom_per_ps": nan, "fluctuation_meV_per_atom": nan,
                "fluctuation_to_kinetic_ratio": nan, "duration_ps": float(t_ps[-1] - t_ps[0])}
    slope, intercept = np.polyfit(t_ps, etot, 1)
    residual = etot - (slope * t_ps + intercept)
    fluct = float(np.sqrt(np.mean(residual ** 2)))
    ke_fluct = float(np.std(np.asarray(result.kinetic_eV)))
    return {
        "drift_meV_per_atom_per_ps": float(slope) * 1000.0 / n,
        "fluctuation_meV_per_atom": fluct * 1000.0 / n,
        "fluctuation_to_kinetic_ratio": fluct / ke_fluct if ke_fluct > 0 else float("inf"),
        "duration_ps": float(t_ps[-1] - t_ps[0]),
    }


def divergence(reference: MDResult, other: MDResult, threshold_A: float = 0.01) -> Dict[str, Optional[float]]:
    """RMSD (A) between frames logged at the same steps, and the first time it exceeds threshold_A."""
    steps = sorted(set(reference.frame_steps) & set(other.frame_steps))
    if not steps:
        raise ValueError("the two trajectories share no frame steps; use the same traj_every")
    ref = {s: f for s, f in zip(reference.frame_steps, reference.frames)}
    oth = {s: f for s, f in zip(other.frame_steps, other.frames)}
    rmsd = np.array([np.sqrt(np.mean(np.sum((oth[s].positions - ref[s].positions) ** 2, axis=1))) for s in steps])
    times = np.asarray(steps, float) * reference.timestep_fs
    over = np.flatnonzero(rmsd > threshold_A)
    return {
        "time_to_0.01A_fs": float(times[over[0]]) if len(over) else None,  # None: never within the run
        "rmsd_final_A": float(rmsd[-1]),
        "rmsd_max_A": float(rmsd.max()),
        "compared_until_fs": float(times[-1]),
        "rmsd_A": rmsd.tolist(),
        "time_fs": times.tolist(),
    }
