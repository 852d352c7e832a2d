"""Is the model's MD physically sound? Independent Langevin replicas, watched as they run.

The failure criteria follow Fu et al., "Forces are not Enough: Benchmark and Critical Evaluation
for Machine Learning Force Fields with Molecular Simulations" (TMLR 2023):

- molecules (no periodic cell): a bond of the starting structure's covalent graph (ASE
  `natural_cutoffs`) longer or shorter than at the start by more than `max_bond_deviation_A`
  (default 0.5 A);
- periodic liquids (a cell periodic in x, y and z): bonds may break and form, so instead the
  distribution of interatomic distances h(r) over a window of the run (`rdf_window_ps`) departs
  from the reference h(r) (`--reference`, else the run's own first window) by an MAE above
  `max_hr_mae` (Fu et al. use the RDF for water);
- always: two atoms closer than `min_distance_A` (default 0.6 A; no covalent bond is that short,
  the shortest, H-H, is 0.74 A), and a non-finite energy, position or velocity (non-finite forces
  make the next positions non-finite).

h(r) is Fu et al.'s distribution of interatomic distances (their Eq. for the MAE of h(r)):
h(r) = 1/(N(N-1)) sum_i sum_{j != i} delta(r - r_ij), minimum image in periodic cells, averaged
over frames, and MAE = integral over r of |h_sim(r) - h_ref(r)| dr (0 for identical
distributions, 2 at most).

Each replica is an MD run of the engine registry (`so3krates/engines.py`) whose observer checks
every `check_every` steps and raises `Unstable` at the first failure, which stops the run there;
the same observer writes the replica's log and trajectory as they come (`MDWriter`). Replicas are
independent: with jobs > 1 they run that many at a time in separate processes (`run_replicas`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from ase import Atoms

from so3krates import engines
from so3krates.engines import EngineSpec, MDSettings, initial_state
from so3krates.md import MDWriter

HR_BIN_A = 0.05


class Unstable(Exception):
    """A replica failed a criterion; `reason` says which, with the atoms involved."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"step {step}: {reason}")
        self.step, self.reason = step, reason


@dataclass
class StabilitySettings:
    temperature: float = 500.0          # K, Langevin thermostat and initial velocities
    time_ps: float = 100.0              # length of each replica
    replicas: int = 4
    timestep_fs: float = 0.5
    friction_per_ps: float = 1.0
    seed: int = 0                       # replica r uses seed + r
    check_every: int = 20               # steps between checks (and h(r) samples)
    traj_every: int = 200               # steps between trajectory frames written (a multiple of check_every)
    max_bond_deviation_A: float = 0.5
    min_distance_A: float = 0.6
    max_hr_mae: float = 0.1             # periodic: h(r) MAE over a window that counts as failure
    rdf_window_ps: float = 1.0
    compile: bool = False               # ase engine: the model through torch.compile

    @property
    def steps(self) -> int:
        return int(round(self.time_ps * 1000.0 / self.timestep_fs))

    def validate(self) -> None:
        if not (self.time_ps > 0 and self.timestep_fs > 0 and self.replicas >= 1 and self.temperature >= 0):
            raise ValueError(f"--time must be > 0 (got {self.time_ps:g} ps), --timestep > 0 (got {self.timestep_fs:g} "
                             f"fs), --replicas >= 1 (got {self.replicas}) and --temperature >= 0 (got "
                             f"{self.temperature:g} K)")
        if self.check_every < 1 or self.traj_every < 0 or (self.traj_every and self.traj_every % self.check_every):
            raise ValueError(f"--check-every must be >= 1 (got {self.check_every}) and --traj-every a multiple of it "
                             f"or 0 (got {self.traj_every})")
        if not (self.max_bond_deviation_A > 0 and self.min_distance_A >= 0 and self.max_hr_mae > 0):
            raise ValueError(f"--max-bond-deviation must be > 0 (got {self.max_bond_deviation_A:g}), --min-distance "
                             f">= 0 (got {self.min_distance_A:g}) and --max-hr-mae > 0 (got {self.max_hr_mae:g})")


def parse_time_ps(text: str) -> float:
    """'100ps', '500fs', '1ns' or a plain number of ps."""
    text = str(text).strip().lower()
    for suffix, factor in (("ns", 1000.0), ("ps", 1.0), ("fs", 0.001)):
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)], factor
            break
    else:
        scale = 1.0
    try:
        value = float(text) * scale
    except ValueError:
        raise ValueError(f"cannot read the time {text!r}: give a number with ps, fs or ns, e.g. 100ps") from None
    return value


def parse_stability_option(text: str) -> StabilitySettings:
    """`so3krates validate --stability TEMPERATURE:TIME[:REPLICAS]`, e.g. 300K:10ps or 500K:20ps:4."""
    parts = str(text).split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"--stability {text!r}: give TEMPERATURE:TIME[:REPLICAS], e.g. 300K:10ps or 500K:20ps:4")
    temperature = parts[0].strip().upper().removesuffix("K")
    try:
        settings = StabilitySettings(temperature=float(temperature), time_ps=parse_time_ps(parts[1]),
                                     replicas=int(parts[2]) if len(parts) == 3 else 1)
    except ValueError:
        raise ValueError(f"--stability {text!r}: give TEMPERATURE:TIME[:REPLICAS], e.g. 300K:10ps or "
                         f"500K:20ps:4") from None
    settings.validate()
    return settings


# --- the covalent graph and h(r) ---------------------------------------------------------------------

def is_periodic_liquid(atoms: Atoms) -> bool:
    return bool(np.all(atoms.pbc))


# Bonded: closer than 1.2 x the sum of the covalent radii, the usual margin; without it ASE's O-H
# (0.66 + 0.31 = 0.97 A) misses ethanol's 0.97 A hydroxyl bond, while the closest non-bonded pairs of
# organic molecules (geminal H-H 1.8 A, 1-3 C-H 2.1 A) stay well beyond.
BOND_RADII_FACTOR = 1.2


def covalent_bonds(atoms: Atoms) -> np.ndarray:
    """(B, 2) atom pairs i < j bonded in `atoms` by ASE's natural cutoffs (covalent radii) x BOND_RADII_FACTOR."""
    from ase.neighborlist import natural_cutoffs, neighbor_list
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=BOND_RADII_FACTOR))
    keep = i < j
    return np.stack([i[keep], j[keep]], axis=1)


def bond_lengths(atoms: Atoms, bonds: np.ndarray) -> np.ndarray:
    from ase.geometry import find_mic
    vectors = atoms.positions[bonds[:, 1]] - atoms.positions[bonds[:, 0]]
    if atoms.pbc.any():
        return find_mic(vectors, atoms.cell, atoms.pbc)[1]
    return np.linalg.norm(vectors, axis=1)


def hr_range_A(atoms: Atoms) -> float:
    """The r range of h(r): half the narrowest cell width (minimum image) for periodic cells; for
    molecules 1.5 times the largest distance of the start plus 1 A, so that a molecule that
    comes apart still shows up (pairs beyond the range count as missing weight)."""
    if is_periodic_liquid(atoms):
        cell = atoms.cell.array
        volume = abs(np.linalg.det(cell))
        widths = [volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)]
        return 0.5 * min(widths)
    d = atoms.get_all_distances()
    return 1.5 * float(d.max()) + 1.0


class DistanceHistogram:
    """h(r) accumulated over frames: counts of all ordered pairs (i, j != i) in bins of HR_BIN_A,
    normalised by N(N-1), the number of frames and the bin width (a density in 1/A)."""

    def __init__(self, r_max: float):
        self.edges = np.arange(0.0, r_max + HR_BIN_A, HR_BIN_A)
        self.counts = np.zeros(len(self.edges) - 1)
        self.frames = 0
        self.pairs = 0

    @property
    def r(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    def add(self, atoms: Atoms) -> None:
        from ase.neighborlist import neighbor_list
        n = len(atoms)
        distances = neighbor_list("d", atoms, float(self.edges[-1]))
        self.counts += np.histogram(distances, bins=self.edges)[0]
        self.frames += 1
        self.pairs = n * (n - 1)

    def density(self) -> np.ndarray:
        if not self.frames:
            return np.zeros_like(self.counts)
        return self.counts / (self.pairs * self.frames * HR_BIN_A)

    def merged(self, others: Sequence["DistanceHistogram"]) -> "DistanceHistogram":
        total = DistanceHistogram(float(self.edges[-1]))
        for h in [self, *others]:
            total.counts += h.counts
            total.frames += h.frames
            total.pairs = h.pairs or total.pairs
        return total


def hr_mae(h_a: np.ndarray, h_b: np.ndarray) -> float:
    """Fu et al.: integral over r of |h_a(r) - h_b(r)| dr."""
    return float(np.sum(np.abs(np.asarray(h_a) - np.asarray(h_b))) * HR_BIN_A)


def reference_histogram(path: str, start: Atoms, r_max: float, max_frames: int = 1000) -> DistanceHistogram:
    """h(r) of the frames in a data file (any format `read_dataset` reads), which must hold the same
    atoms as the start (same element counts); at most `max_frames` frames, evenly spaced."""
    from so3krates.model.data import read_dataset, to_atoms
    structures = read_dataset(path, require_energy=False)
    want = sorted(start.numbers.tolist())
    for s in structures:
        if sorted(np.asarray(s.numbers).tolist()) != want:
            raise ValueError(f"--reference {path}: frame {s.source or '?'} holds {len(s)} atoms of other elements "
                             f"than the structure ({len(start)} atoms, {start.get_chemical_formula()}); give "
                             f"frames of the same system")
    stride = max(1, math.ceil(len(structures) / max_frames))
    h = DistanceHistogram(r_max)
    for s in structures[::stride]:
        atoms = to_atoms(s)
        if not np.any(atoms.pbc):
            atoms.cell = np.zeros((3, 3))   # a molecule: its (often 50 A) box plays no part
        h.add(atoms)
    return h


# --- one replica, watched as it runs -----------------------------------------------------------------

class StabilityWatch:
    """The criteria, checked on each log row and frame an engine reports (an MDObserver); raises
    Unstable at the first failure. Keeps the bond deviation against time and h(r) of the run."""

    def __init__(self, start: Atoms, settings: StabilitySettings, reference_hr: Optional[np.ndarray] = None):
        self.settings = settings
        self.periodic = is_periodic_liquid(start)
        self.symbols = start.get_chemical_symbols()
        self.bonds = np.zeros((0, 2), int) if self.periodic else covalent_bonds(start)
        self.start_lengths = bond_lengths(start, self.bonds)
        self.hr = DistanceHistogram(hr_range_A(start))
        self.reference_hr = reference_hr
        self.window_frames = max(1, int(round(settings.rdf_window_ps * 1000.0 / settings.timestep_fs
                                              / settings.check_every)))
        self.window = DistanceHistogram(float(self.hr.edges[-1]))
        self.times_ps: List[float] = []
        self.bond_deviation_A: List[float] = []
        self.window_mae: List[float] = []

    def _name(self, a: int, b: int) -> str:
        return f"{self.symbols[a]}{a}-{self.symbols[b]}{b}"

    def row(self, step: int, epot: float, ekin: float) -> None:
        if not (math.isfinite(epot) and math.isfinite(ekin)):
            raise Unstable(step, f"non-finite energy (potential {epot}, kinetic {ekin} eV)")

    def frame(self, step: int, atoms: Atoms) -> None:
        if not (np.isfinite(atoms.positions).all() and np.isfinite(atoms.get_velocities()).all()):
            raise Unstable(step, "non-finite positions or velocities")
        self.times_ps.append(step * self.settings.timestep_fs / 1000.0)
        self.hr.add(atoms)
        if self.periodic:
            self._check_rdf(step, atoms)
        else:
            self._check_bonds(step, atoms)   # first: a bond torn apart also brings atoms too close
        self._check_min_distance(step, atoms)

    def _check_min_distance(self, step: int, atoms: Atoms) -> None:
        from ase.neighborlist import neighbor_list
        if self.settings.min_distance_A <= 0:
            return
        i, j, d = neighbor_list("ijd", atoms, self.settings.min_distance_A)
        if len(d):
            k = int(np.argmin(d))
            raise Unstable(step, f"atoms {self._name(i[k], j[k])} are {d[k]:.3f} A apart, closer than the minimum "
                                 f"distance {self.settings.min_distance_A:g} A")

    def _check_bonds(self, step: int, atoms: Atoms) -> None:
        if not len(self.bonds):
            self.bond_deviation_A.append(0.0)
            return
        lengths = bond_lengths(atoms, self.bonds)
        deviation = np.abs(lengths - self.start_lengths)
        k = int(np.argmax(deviation))
        self.bond_deviation_A.append(float(deviation[k]))
        if deviation[k] > self.settings.max_bond_deviation_A:
            a, b = self.bonds[k]
            raise Unstable(step, f"bond {self._name(a, b)} is {lengths[k]:.3f} A long, {lengths[k] - self.start_lengths[k]:+.3f} "
                                 f"A from its {self.start_lengths[k]:.3f} A at the start (limit "
                                 f"{self.settings.max_bond_deviation_A:g} A)")

    def _check_rdf(self, step: int, atoms: Atoms) -> None:
        self.window.add(atoms)
        if self.window.frames < self.window_frames:
            return
        current = self.window.density()
        self.window = DistanceHistogram(float(self.hr.edges[-1]))
        if self.reference_hr is None:      # no reference: the run's own first window is the reference
            self.reference_hr = current
            self.window_mae.append(0.0)
            return
        mae = hr_mae(current, self.reference_hr)
        self.window_mae.append(mae)
        if mae > self.settings.max_hr_mae:
            raise Unstable(step, f"h(r) over the last {self.settings.rdf_window_ps:g} ps departs from the reference "
                                 f"by an MAE of {mae:.3f} (limit {self.settings.max_hr_mae:g})")


class ReplicaObserver:
    """Writes every row and every traj_every-th frame (MDWriter, the files of `so3krates md`), then
    checks them (StabilityWatch): the failing frame is in the trajectory too."""

    def __init__(self, watch: StabilityWatch, writer: MDWriter, traj_every: int):
        self.watch, self.writer, self.traj_every = watch, writer, traj_every

    def row(self, step: int, epot: float, ekin: float) -> None:
        self.writer.row(step, epot, ekin)
        self.watch.row(step, epot, ekin)

    def frame(self, step: int, atoms: Atoms) -> None:
        if self.traj_every and step % self.traj_every == 0:
            self.writer.frame(step, atoms)
        self.watch.frame(step, atoms)


class _NoCheck:
    """MDWriter's own blow-up check is replaced by StabilityWatch, which runs after the write."""

    def row(self, step, epot, ekin):
        pass

    def frame(self, step, atoms):
        pass


@dataclass
class ReplicaResult:
    seed: int
    stable: bool
    time_to_failure_ps: Optional[float]
    reason: Optional[str]
    max_bond_deviation_A: Optional[float]
    simulated_ps: float
    wall_s: float
    trajectory: Optional[str]
    log: Optional[str]
    times_ps: List[float] = field(default_factory=list)
    bond_deviation_A: List[float] = field(default_factory=list)


def run_replica(model_path: str, start: Atoms, spec: EngineSpec, settings: StabilitySettings, index: int,
                out_dir: Optional[Path], reference_hr: Optional[np.ndarray], progress: bool,
                log=print) -> Tuple[ReplicaResult, StabilityWatch]:
    seed = settings.seed + index
    atoms = initial_state(start, settings.temperature, seed)
    md = MDSettings(ensemble="nvt", temperature=settings.temperature, timestep_fs=settings.timestep_fs,
                    steps=settings.steps, friction_per_ps=settings.friction_per_ps, seed=seed,
                    log_every=settings.check_every, traj_every=settings.check_every, compile=settings.compile)
    traj = log_path = None
    if out_dir is not None:
        traj, log_path = str(out_dir / f"replica_{index}.xyz"), str(out_dir / f"replica_{index}.csv")
    watch = StabilityWatch(start, settings, reference_hr)
    writer = MDWriter(md, len(atoms), spec.label, log_path, traj, check=_NoCheck())
    observer = ReplicaObserver(watch, writer, settings.traj_every)
    failure: Optional[Unstable] = None
    began = time.perf_counter()
    try:
        engines.run_md(spec, model_path, atoms, md, progress=progress, observer=observer)
    except Unstable as exc:
        failure = exc
    except RuntimeError as exc:   # the engine itself gave up (e.g. OpenMM: "Particle coordinate is NaN")
        if writer.last_row_step is None:
            raise
        from so3krates.cli import one_line
        failure = Unstable(writer.last_row_step + settings.check_every, f"the engine stopped: {one_line(exc)}")
    finally:
        writer.close()
    wall = time.perf_counter() - began
    failed_ps = None if failure is None else failure.step * settings.timestep_fs / 1000.0
    result = ReplicaResult(
        seed=seed, stable=failure is None, time_to_failure_ps=failed_ps,
        reason=None if failure is None else failure.reason,
        max_bond_deviation_A=max(watch.bond_deviation_A) if watch.bond_deviation_A else None,
        simulated_ps=settings.time_ps if failure is None else failed_ps, wall_s=wall, trajectory=traj, log=log_path,
        times_ps=watch.times_ps[: len(watch.bond_deviation_A)], bond_deviation_A=watch.bond_deviation_A)
    log(replica_line(index, result))
    return result, watch


def replica_line(index: int, result: ReplicaResult) -> str:
    return (f"replica {index} (seed {result.seed}): " + ("stable for the whole run" if result.stable else
                                                        f"failed at {result.time_to_failure_ps:g} ps: {result.reason}")
            + f" ({result.wall_s:.1f} s)")


def _silent(*_) -> None:
    pass


def _worker_threads(threads: int) -> None:
    """A replica process's share of the cores: torch's threads (the TorchForce's libtorch is the same
    library) and OpenMM's CPU platform threads."""
    import os

    import torch
    os.environ["OPENMM_CPU_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def run_replicas(model_path: str, start: Atoms, spec: EngineSpec, settings: StabilitySettings,
                 out_dir: Optional[Path], reference_hr: Optional[np.ndarray], progress: bool, log,
                 jobs: int = 1) -> List[Tuple[ReplicaResult, StabilityWatch]]:
    """All replicas, one after the other (jobs = 1) or in `jobs` processes at a time, each with an
    equal share of the cores (replicas are independent; a molecule's MD uses one core poorly, so
    4 replicas on 4 cores take the time of one). The same seeds and the same results either way."""
    workers = min(jobs, settings.replicas)
    if workers <= 1:
        return [run_replica(model_path, start, spec, settings, k, out_dir, reference_hr, progress, log)
                for k in range(settings.replicas)]
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor
    threads = max(1, (os.cpu_count() or 1) // workers)
    log(f"running {settings.replicas} replicas in {workers} processes ({threads} thread(s) each)")
    # spawn, not fork: torch and OpenMM hold threads and locks that a forked child would inherit
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_threads, initargs=(threads,)) as pool:
        futures = [pool.submit(run_replica, model_path, start, spec, settings, k, out_dir, reference_hr, False,
                               _silent) for k in range(settings.replicas)]
        results = []
        try:
            for k, future in enumerate(futures):
                results.append(future.result())
                log(replica_line(k, results[-1][0]))
        except BaseException:   # an error or Ctrl-C: the replicas not yet started are not run
            for future in futures:
                future.cancel()
            raise
    return results


def check_frames(frames: Sequence[Atoms], start: Atoms, settings: StabilitySettings,
                 reference_hr: Optional[np.ndarray] = None,
                 watch: Optional[StabilityWatch] = None) -> Tuple[Optional[Unstable], StabilityWatch]:
    """The same criteria on a trajectory written by another program (frames with info['step'], every
    settings.check_every steps; e.g. a peer model's ASE MD in its own environment): the first failure
    (None: stable) and the watch with its figures. Frames after the first failure are not read.
    Give the `watch` of an earlier call to go on with the frames written since (a running trajectory)."""
    watch = StabilityWatch(start, settings, reference_hr) if watch is None else watch
    for frame in frames:
        step = int(frame.info["step"])
        energy = frame.info.get("energy")
        try:
            if energy is not None:
                watch.row(step, float(energy), 0.0)
            if frame.has("momenta"):
                watch.frame(step, frame)
            else:
                snapshot = frame.copy()
                snapshot.set_velocities(np.zeros((len(frame), 3)))
                watch.frame(step, snapshot)
        except Unstable as failure:
            return failure, watch
    return None, watch


def stability(model_path: str, structure: Atoms, settings: StabilitySettings, engine: str = "openmm",
              reference: Optional[str] = None, out_dir: Optional[str] = None, progress: bool = True,
              log=print, jobs: int = 1) -> Dict:
    """Run the replicas (`jobs` at a time, see run_replicas) and return the report (JSON-ready but
    for keys starting with '_', kept for the plot)."""
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1 (got {jobs})")
    settings.validate()
    spec = EngineSpec.parse(engine)
    engines.check_compile(spec, settings.compile)
    start = structure.copy()
    periodic = is_periodic_liquid(start)
    criterion = "rdf" if periodic else "bonds"
    r_max = hr_range_A(start)
    ref_hist = reference_histogram(reference, start, r_max) if reference else None
    folder = None
    if out_dir is not None:
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
    engine_label = spec.label + (" (compiled)" if settings.compile else "")
    log(f"stability of {model_path}: {settings.replicas} replica(s) x {settings.time_ps:g} ps at "
        f"{settings.temperature:g} K, {settings.timestep_fs:g} fs, {engine_label}, {len(start)} atoms; criterion: "
        + ("h(r) over a window against " + ("the reference" if reference else "the first window")
           if periodic else f"covalent bonds within {settings.max_bond_deviation_A:g} A of the start")
        + f", no two atoms closer than {settings.min_distance_A:g} A")
    began = time.perf_counter()
    runs = run_replicas(model_path, start, spec, settings, folder, None if ref_hist is None else ref_hist.density(),
                        progress, log, jobs)
    replicas = [result for result, _ in runs]
    watches = [watch for _, watch in runs]
    simulated = watches[0].hr.merged([w.hr for w in watches[1:]])
    durations = [settings.time_ps if r.stable else r.time_to_failure_ps for r in replicas]
    elapsed = time.perf_counter() - began
    wall = sum(r.wall_s for r in replicas)   # ns/day below: that of one replica's process, whatever jobs is
    deviations = [r.max_bond_deviation_A for r in replicas]
    report = {
        "model": str(model_path),
        "engine": engine_label,
        "temperature_K": settings.temperature,
        "time_ps": settings.time_ps,
        "timestep_fs": settings.timestep_fs,
        "replicas": settings.replicas,
        "num_atoms": len(start),
        "criterion": criterion,
        "criteria": {"max_bond_deviation_A": None if periodic else settings.max_bond_deviation_A,
                     "min_distance_A": settings.min_distance_A,
                     "max_hr_mae": settings.max_hr_mae if periodic else None,
                     "rdf_window_ps": settings.rdf_window_ps if periodic else None,
                     "check_every_fs": settings.check_every * settings.timestep_fs},
        "stable_fraction": sum(r.stable for r in replicas) / len(replicas),
        "time_to_failure_ps": [r.time_to_failure_ps for r in replicas],
        "median_time_to_failure_ps": float(np.median(durations)),
        "max_bond_deviation_A": deviations,
        "failures": [r.reason for r in replicas],
        "seeds": [r.seed for r in replicas],
        "ns_per_day": sum(r.simulated_ps for r in replicas) / 1000.0 / (wall / 86400.0) if wall > 0 else None,
        "wall_s": wall,
        "jobs": min(jobs, settings.replicas),
        "elapsed_s": elapsed,
        "trajectories": [r.trajectory for r in replicas],
        "_replicas": replicas,
        "_hr": {"r_A": simulated.r, "simulation": simulated.density(),
                "reference": None if ref_hist is None else ref_hist.density()},
    }
    if ref_hist is not None:
        report["reference"] = str(reference)
        report["hr_mae"] = hr_mae(simulated.density(), ref_hist.density())
    report["passed"] = report["stable_fraction"] == 1.0
    return report


def format_report(report: Dict) -> str:
    lines = [f"  {'replica':<9}{'seed':>6}{'max bond dev A':>16}  result"]
    for k, r in enumerate(report["_replicas"]):
        dev = "-" if r.max_bond_deviation_A is None else f"{r.max_bond_deviation_A:.3f}"
        text = "stable for the whole run" if r.stable else f"failed at {r.time_to_failure_ps:g} ps: {r.reason}"
        lines.append(f"  {k:<9}{r.seed:>6}{dev:>16}  {text}")
    lines.append(f"stable fraction {report['stable_fraction']:.2f}; median time to failure "
                 f"{report['median_time_to_failure_ps']:g} ps (a stable replica counts as the whole "
                 f"{report['time_ps']:g} ps); {report['ns_per_day']:.3g} ns/day ({report['engine']})")
    if "hr_mae" in report:
        lines.append(f"h(r) MAE against {report['reference']}: {report['hr_mae']:.4f}")
    lines.append("STABLE: every replica stayed physical" if report["passed"] else
                 "UNSTABLE: at least one replica failed")
    return "\n".join(lines)


def json_report(report: Dict) -> Dict:
    return {k: v for k, v in report.items() if not k.startswith("_")}


def plot_report(report: Dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_b, ax_h) = plt.subplots(1, 2, figsize=(11, 4))
    for k, r in enumerate(report["_replicas"]):
        if r.bond_deviation_A:
            ax_b.plot(r.times_ps, r.bond_deviation_A, lw=0.8, label=f"replica {k}" + ("" if r.stable else " (failed)"))
    limit = report["criteria"]["max_bond_deviation_A"]
    if limit is not None:
        ax_b.axhline(limit, color="grey", ls="--", lw=0.8)
    ax_b.set_xlabel("time (ps)")
    ax_b.set_ylabel("largest bond-length deviation from the start (A)")
    ax_b.set_title(f"{report['temperature_K']:g} K, {report['engine']}")
    hr = report["_hr"]
    ax_h.plot(hr["r_A"], hr["simulation"], label="simulation")
    if hr["reference"] is not None:
        ax_h.plot(hr["r_A"], hr["reference"], label="reference", ls="--")
    ax_h.set_xlabel("r (A)")
    ax_h.set_ylabel("h(r) (1/A)")
    ax_h.set_title("distribution of interatomic distances"
                   + (f", MAE {report['hr_mae']:.3f}" if "hr_mae" in report else ""))
    for ax in (ax_b, ax_h):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
