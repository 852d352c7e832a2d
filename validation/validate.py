"""Cross-engine validation: the same model file, the same initial state, every engine.

1. step 0: energy, forces (and virial for periodic cells) of each engine against the ASE calculator;
2. NVE from identical positions and velocities: total-energy drift and fluctuation per engine;
3. trajectory divergence from the reference Python MD (ASE velocity Verlet);
4. optionally (`--stability 300K:10ps`), Langevin replicas watched for unphysical MD (stability.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np
from ase import Atoms

from so3krates import engines
from so3krates.engines import EngineSpec, MDResult, MDSettings, initial_state
from so3krates.export import read_metadata

from .metrics import divergence, energy_conservation, step0_difference
from .stability import StabilitySettings, json_report, stability

REFERENCE = EngineSpec("ase")


@dataclass
class Tolerances:
    """Defaults by model dtype; see docs/validation.md for the reasoning."""
    max_abs_dE_meV_per_atom: float
    max_abs_dF_meV_per_A: float
    max_abs_drift_meV_per_atom_per_ps: float
    max_fluctuation_to_kinetic_ratio: float
    min_time_to_0_01A_fs: float

    @classmethod
    def for_dtype(cls, dtype: str) -> "Tolerances":
        if dtype == "float64":
            return cls(1e-6, 1e-5, 0.05, 0.05, 50.0)
        return cls(0.1, 1.0, 0.5, 0.1, 0.0)

    @classmethod
    def for_engine(cls, reference_dtype: str, engine_dtype: str) -> "Tolerances":
        """An engine is compared with the ase reference: the figures can be no better than the
        less precise of the two models, so a float32 file on either side gets the float32 limits."""
        return cls.for_dtype("float64" if reference_dtype == engine_dtype == "float64" else "float32")


@dataclass
class ValidationSettings:
    steps: int = 2000
    timestep_fs: float = 0.5
    temperature: float = 300.0
    seed: int = 0
    log_every: int = 5
    traj_every: int = 5
    tolerances: Optional[Tolerances] = None
    stability: Optional[StabilitySettings] = None   # also run the stability check (time step and seed from here)


def validate(model_path: str, atoms: Atoms, specs: List[EngineSpec], settings: ValidationSettings,
             progress: bool = True, log=print) -> Dict:
    meta = read_metadata(model_path)
    tol = settings.tolerances or Tolerances.for_dtype(meta["dtype"])
    # each engine by the dtype of the file it runs (ENGINE@OTHER.pt may be a float32 export)
    engine_tol = {spec.label: settings.tolerances or Tolerances.for_engine(meta["dtype"], engine_dtype(spec, model_path))
                  for spec in specs}
    start = initial_state(atoms, settings.temperature, settings.seed)
    n = len(start)
    md = MDSettings(ensemble="nve", temperature=settings.temperature, timestep_fs=settings.timestep_fs,
                    steps=settings.steps, seed=settings.seed, log_every=settings.log_every,
                    traj_every=settings.traj_every)
    periodic = bool(start.pbc.all())
    labels = [e.label for e in specs]
    log(f"validating {model_path} ({meta['dtype']}, {n} atoms, {'periodic' if periodic else 'non-periodic'}) "
        f"on {', '.join(labels)}; reference: ase")

    reference_point = engines.single_point(REFERENCE, model_path, start)
    step0 = {spec.label: step0_difference(reference_point, engines.single_point(spec, model_path, start), n)
             for spec in specs}
    runs: Dict[str, MDResult] = {}
    reference_run = engines.run_md(REFERENCE, model_path, start, md, progress=progress)
    for spec in specs:
        runs[spec.label] = reference_run if spec == REFERENCE else engines.run_md(spec, model_path, start, md,
                                                                                progress=progress)
    nve = {label: energy_conservation(r) for label, r in runs.items()}
    trajectory = {label: divergence(reference_run, r) for label, r in runs.items()}
    failures = [f for label in labels
                for f in engine_failures(label, step0[label], runs[label], nve[label], trajectory[label],
                                         engine_tol[label], settings.timestep_fs)]
    stable = None
    if settings.stability is not None:
        check = settings.stability
        check.timestep_fs, check.seed = settings.timestep_fs, settings.seed
        engine = next((spec.label for spec in specs if spec.engine == "openmm"), labels[0])   # the fastest for small systems
        stable = stability_report(stability(model_path, atoms, check, engine=engine, progress=progress, log=log))
        failures += [f"stability ({stable['engine']}, {check.temperature:g} K): replica {k} failed at {t:g} ps: {why}"
                     for k, (t, why) in enumerate(zip(stable["time_to_failure_ps"], stable["failures"])) if why]
    return {
        "model": str(model_path),
        "metadata": {k: meta[k] for k in ("so3krates_version", "dtype", "elements", "cutoff_A", "num_layers")},
        "num_atoms": n,
        "periodic": periodic,
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("tolerances", "stability")},
        "tolerances": asdict(tol),
        "engine_tolerances": {label: asdict(t) for label, t in engine_tol.items()},
        "engines": labels,
        "step0": step0,
        "nve": nve,
        "trajectory": trajectory,
        "stability": stable,
        "failures": failures,
        "passed": not failures,
        "_runs": runs,
    }


def engine_dtype(spec: EngineSpec, model_path: str) -> str:
    """The dtype of the model file an engine runs (its own `@MODEL` or the common one)."""
    if not spec.model:
        return read_metadata(model_path)["dtype"]
    from so3krates.export.loading import is_exported_file
    if is_exported_file(spec.model):
        return read_metadata(spec.model)["dtype"]
    return "float64"   # a training checkpoint (ase engine) computes in float64


def stability_report(report: Dict) -> Dict:
    """The stability figures that `validate` keeps (the replicas' trajectories are not written)."""
    keys = ("engine", "temperature_K", "time_ps", "replicas", "criterion", "stable_fraction", "time_to_failure_ps",
            "median_time_to_failure_ps", "max_bond_deviation_A", "failures")
    return {k: json_report(report)[k] for k in keys}


def engine_failures(label: str, s: Dict[str, float], run: MDResult, c: Dict[str, float], trajectory: Dict,
                    tol: Tolerances, timestep_fs: float) -> List[str]:
    """What one engine failed: step-0 agreement s, the NVE run and its conservation c, the divergence
    from the reference trajectory. `not x <= tol` so that NaN fails too."""
    failures: List[str] = []
    if not s["max_abs_dE_meV_per_atom"] <= tol.max_abs_dE_meV_per_atom:
        failures.append(f"{label}: step-0 energy differs from ase by {s['max_abs_dE_meV_per_atom']:.3g} meV/atom "
                        f"(tolerance {tol.max_abs_dE_meV_per_atom:g})")
    if not s["max_abs_dF_meV_per_A"] <= tol.max_abs_dF_meV_per_A:
        failures.append(f"{label}: step-0 forces differ from ase by {s['max_abs_dF_meV_per_A']:.3g} meV/A "
                        f"(tolerance {tol.max_abs_dF_meV_per_A:g})")
    if not np.isfinite(run.total_eV).all():
        failures.append(f"{label}: the NVE run blew up (non-finite energies); lower --timestep "
                        f"(now {timestep_fs:g} fs)")
    if not abs(c["drift_meV_per_atom_per_ps"]) <= tol.max_abs_drift_meV_per_atom_per_ps:
        failures.append(f"{label}: NVE drift {c['drift_meV_per_atom_per_ps']:.3g} meV/atom/ps "
                        f"(tolerance {tol.max_abs_drift_meV_per_atom_per_ps:g})")
    if not c["fluctuation_to_kinetic_ratio"] <= tol.max_fluctuation_to_kinetic_ratio:
        failures.append(f"{label}: total-energy fluctuation is {c['fluctuation_to_kinetic_ratio']:.3g} of the "
                        f"kinetic-energy fluctuation (tolerance {tol.max_fluctuation_to_kinetic_ratio:g}): "
                        f"the time step is too large or the forces are not the energy gradient")
    t = trajectory["time_to_0.01A_fs"]
    if t is not None and t < tol.min_time_to_0_01A_fs:
        failures.append(f"{label}: trajectory departs from the ase reference by 0.01 A after {t:g} fs "
                        f"(tolerance: not before {tol.min_time_to_0_01A_fs:g} fs)")
    return failures


def format_report(report: Dict) -> str:
    lines = []
    tol = report["tolerances"]
    lines.append(f"step 0 against ase (tolerances: {tol['max_abs_dE_meV_per_atom']:g} meV/atom, "
                 f"{tol['max_abs_dF_meV_per_A']:g} meV/A)")
    lines.append(f"  {'engine':<22}{'max|dE| meV':>14}{'meV/atom':>12}{'max|dF| meV/A':>15}{'max|dW| meV':>13}")
    for label, s in report["step0"].items():
        dw = s.get("max_abs_dvirial_meV")
        own = report.get("engine_tolerances", {}).get(label, tol)
        note = "" if own == tol else (f"  (its model's dtype: {own['max_abs_dE_meV_per_atom']:g} meV/atom, "
                                      f"{own['max_abs_dF_meV_per_A']:g} meV/A)")
        lines.append(f"  {label:<22}{s['max_abs_dE_meV']:>14.3g}{s['max_abs_dE_meV_per_atom']:>12.3g}"
                     f"{s['max_abs_dF_meV_per_A']:>15.3g}{('-' if dw is None else f'{dw:.3g}'):>13}{note}")
    st = report["settings"]
    lines.append(f"NVE, {st['steps']} steps of {st['timestep_fs']} fs from identical positions and velocities "
                 f"(tolerance |drift| <= {tol['max_abs_drift_meV_per_atom_per_ps']:g} meV/atom/ps, "
                 f"fluctuation/kinetic <= {tol['max_fluctuation_to_kinetic_ratio']:g})")
    lines.append(f"  {'engine':<22}{'drift meV/atom/ps':>19}{'fluct meV/atom':>16}{'fluct/kin':>11}{'t(0.01 A) fs':>14}")
    for label, c in report["nve"].items():
        t = report["trajectory"][label]["time_to_0.01A_fs"]
        t_text = f"> {report['trajectory'][label]['compared_until_fs']:g}" if t is None else f"{t:g}"
        lines.append(f"  {label:<22}{c['drift_meV_per_atom_per_ps']:>19.3g}{c['fluctuation_meV_per_atom']:>16.3g}"
                     f"{c['fluctuation_to_kinetic_ratio']:>11.3g}{t_text:>14}")
    stable = report.get("stability")
    if stable:
        lines.append(f"stability: {stable['replicas']} Langevin replica(s) x {stable['time_ps']:g} ps at "
                     f"{stable['temperature_K']:g} K ({stable['engine']}, criterion {stable['criterion']}): stable "
                     f"fraction {stable['stable_fraction']:.2f}")
    if report["failures"]:
        lines.append("FAILED:")
        lines.extend("  " + f for f in report["failures"])
    else:
        lines.append("PASSED: every engine agrees with the reference within the tolerances"
                     + (" and the MD stayed physical" if stable else ""))
    return "\n".join(lines)


def plot_report(report: Dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_e, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
    n = report["num_atoms"]
    for label, run in report["_runs"].items():
        etot = run.total_eV
        ax_e.plot(run.time_fs / 1000.0, (etot - etot[0]) * 1000.0 / n, label=label, lw=1)
        tr = report["trajectory"][label]
        ax_d.semilogy(tr["time_fs"], np.maximum(tr["rmsd_A"], 1e-16), label=label, lw=1)
    ax_e.set_xlabel("time (ps)")
    ax_e.set_ylabel("total energy - E(0) (meV/atom)")
    ax_e.set_title("NVE energy conservation")
    ax_d.axhline(0.01, color="grey", ls="--", lw=0.8)
    ax_d.set_xlabel("time (fs)")
    ax_d.set_ylabel("RMSD from ase reference (A)")
    ax_d.set_title("trajectory divergence")
    for ax in (ax_e, ax_d):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
