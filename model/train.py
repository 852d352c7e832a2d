"""Training: energy + force loss, Adam, a learning-rate schedule planned over the budget (or decay on
plateau, model/schedule.py), EMA weights, resumable.

`train(TrainOptions(...)) -> Path` (the best checkpoint). The run folder holds best.ckpt and
last.ckpt (EMA weights as the network, plus the full training state in last.ckpt), config.yaml,
metrics.csv (with the training throughput of each epoch) and learning_curve.png; with --test, test_errors.json
(the best weights on the test file). `resume=True` continues from last.ckpt exactly: the same
seed gives the same weights whether or not the run was interrupted.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .checkpoint import atomic_write, load_checkpoint, save_checkpoint, upgrade_state_dict
from .config import So3kratesConfig, preset
from .data import Structure, collate, dataset_sha256, make_graphs, neighbor_pairs, read_dataset, to_device
from .evaluate import error_metrics, predict_graphs
from .network import So3krates
from .potential import Potential
from .schedule import SCHEDULES, BudgetSchedule, make_schedule


@dataclass
class TrainOptions:
    train: str = ""
    out: str = "run"
    valid: Optional[str] = None
    valid_fraction: float = 0.05
    preset: str = "default"
    model: Dict[str, Any] = field(default_factory=dict)   # So3kratesConfig overrides (from --config)
    max_time: Optional[float] = None     # seconds of training, over all resumes
    epochs: Optional[int] = None         # total epochs, over all resumes
    seed: int = 0
    resume: bool = False
    energy_key: Optional[str] = None
    forces_key: Optional[str] = None
    energy_unit: str = "eV"
    length_unit: str = "A"
    # None: default_batch_size(), about ATOMS_PER_BATCH atoms, 4 to 8 structures (8 for ethanol, 4 for 3BPA).
    batch_size: Optional[int] = None
    lr: float = 2e-3
    # adam, not amsgrad: AMSGrad divides by the largest second moment seen, set by the large gradients of
    # the first steps, so its steps stay small as the errors fall; Adam's follow them. At 20 min, 14-28 %
    # lower force errors on rMD17 ethanol (three seeds), equal on 3BPA (docs/benchmarks.md, "Adam instead
    # of AMSGrad"); at 60 min 6.70 against 6.97 and 6.98 meV/A.
    optimizer: str = "adam"              # adam | amsgrad
    weight_decay: float = 0.0            # decoupled (AdamW), on the weight matrices only; 0: plain Adam/AMSGrad
    energy_weight: float = 1.0           # on the squared energy error per atom (eV/atom)^2
    forces_weight: float = 100.0         # on the squared force component error (eV/A)^2
    # On the squared virial component error per atom (eV/atom)^2. 1000: a 0.1 GPa stress error in liquid water
    # (~10 A^3 per atom: 6e-3 eV/atom of virial) weighs as much as a 20 meV/A force error at forces_weight 100.
    stress_weight: float = 1000.0
    warmup_steps: int = 200              # or 5% of the budget, whichever is first (model/schedule.py)
    schedule: str = "cosine"             # cosine | exponential (planned over the budget) | plateau
    decay_fraction: float = 1.0          # budget schedules: the last fraction of the budget the decay takes
    plateau_patience: int = 10           # epochs without improvement before the lr is reduced
    plateau_factor: float = 0.5
    min_lr: float = 1e-5
    ema_decay: float = 0.99
    grad_clip: float = 10.0
    isolated_atoms: Optional[str] = None
    dtype: str = "float32"
    threads: Optional[int] = None
    progress: bool = True
    snapshot_times: List[float] = field(default_factory=list)   # seconds: extra EMA checkpoints (benchmarks)
    energy_only: bool = False            # train without forces (asked for: data without forces is an error)
    overwrite: bool = False              # replace the run files already in `out`
    test: Optional[str] = None           # evaluated with the best weights at the end -> test_errors.json
    device: str = "cpu"                  # cpu | cuda | cuda:N
    compile: Optional[bool] = None       # torch.compile the step (model/compiled_step.py); None: by the budget
    given: Optional[List[str]] = None    # options set explicitly (the CLI); None: all (compared on resume)

    def validate(self) -> None:
        if not self.train:
            raise ValueError("no training data: give --train FILE")
        if self.epochs is None and self.max_time is None:
            raise ValueError("give --epochs N or --max-time (e.g. 30m), or both")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1 (the total over all resumes), got {self.epochs}: "
                             f"with {self.epochs} nothing would be trained")
        if self.max_time is not None and not self.max_time > 0:
            raise ValueError(f"--max-time must be longer than 0 s, got {self.max_time:g} s: nothing would be trained")
        if not self.grad_clip >= 0:
            raise ValueError(f"--grad-clip must be >= 0 (0: no clipping), got {self.grad_clip:g}")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must lie in [0, 1), got {self.ema_decay:g}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if not (math.isfinite(self.lr) and math.isfinite(self.energy_weight) and math.isfinite(self.forces_weight)):
            raise ValueError("--lr, --energy-weight and --forces-weight must be finite numbers")
        if not (math.isfinite(self.stress_weight) and self.stress_weight >= 0):
            raise ValueError(f"--stress-weight must be a finite number >= 0 (0: stresses not trained), got "
                             f"{self.stress_weight:g}")
        if not 0.0 < self.valid_fraction < 1.0 and not self.valid:
            raise ValueError(f"--valid-fraction must lie between 0 and 1, got {self.valid_fraction}")
        if (self.batch_size is not None and self.batch_size < 1) or self.lr <= 0:
            raise ValueError("--batch-size must be >= 1 and --lr > 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"--weight-decay must be a finite number >= 0 (0: none), got {self.weight_decay:g}")
        if self.optimizer not in ("adam", "amsgrad"):
            raise ValueError(f"optimizer {self.optimizer!r}; choose adam or amsgrad")
        if self.energy_weight < 0 or self.forces_weight < 0 or self.energy_weight + self.forces_weight == 0:
            raise ValueError("loss weights must be >= 0 and not both zero")
        if self.energy_only and not self.energy_weight > 0:
            raise ValueError("--energy-only trains on energies: --energy-weight must be > 0")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype {self.dtype!r}; choose float32 or float64")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(f"--decay-fraction must lie in (0, 1], got {self.decay_fraction:g}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not (self.min_lr > 0 or (self.min_lr == 0 and self.schedule != "exponential")):
            raise ValueError(f"min_lr (the schedule's floor) must be > 0 (>= 0 unless --schedule exponential), got "
                             f"{self.min_lr:g}")
        check_device(self.device)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# The default batch: about this many atoms, between 4 and 8 structures. At an equal wall-clock budget the
# more, smaller steps end lower in force error, down to about 100 atoms a batch (docs/benchmarks.md,
# "Batch size 8" and "The batch by atoms"): rMD17 ethanol (9 atoms) 8 beats 16 by 10 % and equals 4;
# 3BPA (27 atoms) 8 beats 16 by 15 %, 4 beats 8 by 8-22 % (three seeds, 20 min).
ATOMS_PER_BATCH = 100
BATCH_RANGE = (4, 8)


def mean_atoms(structures: Sequence[Structure]) -> float:
    return sum(len(s) for s in structures) / max(len(structures), 1)


def default_batch_size(structures: Sequence[Structure]) -> int:
    """Structures per batch when --batch-size is not given: about ATOMS_PER_BATCH atoms, within BATCH_RANGE."""
    return max(BATCH_RANGE[0], min(BATCH_RANGE[1], round(ATOMS_PER_BATCH / max(mean_atoms(structures), 1.0))))


def check_device(device: str) -> None:
    """cpu, or a CUDA device that this machine has."""
    if device == "cpu":
        return
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise ValueError(f"--device {device!r}; choose cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available to this PyTorch (torch "
                         f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); train with --device cpu")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")


def parse_duration(text) -> float:
    """'90s', '30m', '1.5h', '1h30m' or a number of seconds -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d*)?)\s*([smh]?)", s)
    if not parts or "".join(n + u for n, u in parts) != s.replace(" ", ""):
        raise ValueError(f"cannot read the duration {text!r}; write e.g. 90s, 30m, 1.5h or 1h30m")
    return sum(float(n) * {"": 1, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def loss_terms(out: Dict[str, torch.Tensor], batch: Dict[str, Any], options: TrainOptions):
    """Weighted loss and its parts: squared energy error per atom, squared force component error."""
    de = (out["energy"] - batch["energy"]) / batch["num_atoms"]
    e_mse = (de ** 2).mean()
    mask = batch["force_mask"]
    if bool(mask.any()):
        f_mse = ((out["forces"][mask] - batch["forces"][mask]) ** 2).mean()
    else:
        f_mse = torch.zeros((), dtype=out["forces"].dtype)
    loss = options.energy_weight * e_mse + options.forces_weight * f_mse.to(e_mse.dtype)
    if "virial" in out and trains_stress(options, batch):
        loss = loss + options.stress_weight * virial_mse(out["virial"], batch)
    return loss, e_mse.detach(), f_mse.detach(), int(mask.sum()) * 3


def virial_mse(virial: torch.Tensor, batch: Dict[str, Any]) -> torch.Tensor:
    """Squared virial component error per atom, (eV/atom)^2, over the structures with a stress label:
    W = -V sigma, so this is the stress error times the volume per atom, intensive like the energy term."""
    mask = batch["virial_mask"]
    dw = (virial.to(torch.float64)[mask] - batch["virial"][mask]) / batch["num_atoms"][mask].view(-1, 1, 1)
    return (dw ** 2).mean()


def trains_stress(options: TrainOptions, batch: Dict[str, Any]) -> bool:
    return options.stress_weight > 0 and bool(batch["virial_mask"].any())


def energy_shifts(structures: Sequence[Structure], elements: List[int], isolated: Optional[List[Structure]],
                  report=print):
    """Per-element energies mu_Z: isolated-atom energies when given, else least squares E ~ sum_Z n_Z mu_Z.

    When the compositions do not determine every mu_Z (one molecule, a water box: all frames have
    the same element ratios), only the combinations the data sees are fitted; the rest is fixed by a
    regularised fit (the smallest deviation from one common energy per atom, the data's mean), and
    `report` says so and how to get meaningful per-atom energies (--isolated-atoms)."""
    counts = np.array([[np.sum(s.numbers == z) for z in elements] for s in structures], dtype=float)
    rank = np.linalg.matrix_rank(counts) if len(structures) else 0
    undetermined = rank < len(elements)
    if isolated is not None:
        by_z = {int(s.numbers[0]): s.energy for s in isolated if len(s) == 1}
        missing = [z for z in elements if z not in by_z]
        if missing:
            raise ValueError(f"the isolated-atom file has no single-atom frame for atomic number(s) {missing}")
        if undetermined:
            report(f"note: the training compositions determine only {rank} of {len(elements)} per-element "
                   f"energies; the shifts are the isolated-atom energies (--isolated-atoms)")
        return np.array([by_z[z] for z in elements])
    energies = np.array([s.energy for s in structures])
    # mu = m + delta with m the mean energy per atom and delta the minimum-norm least-squares fit of what
    # m leaves: where the data determines mu this is plain least squares; where it does not (the null
    # space of the counts), delta = 0 there, i.e. every element keeps the common energy per atom m,
    # instead of the minimum-norm mu proportional to the counts (mu_H = 2 mu_O for water).
    mean = energies.sum() / counts.sum()
    delta, *_ = np.linalg.lstsq(counts, energies - mean * counts.sum(1), rcond=None)
    mu = mean + delta
    if undetermined:
        symbols = _formulas(structures)
        report(f"warning: the training compositions ({symbols}) determine only {rank} of {len(elements)} "
               f"per-element energies: used a regularised fit (each element's shift as close as the data allows "
               f"to the mean energy per atom, {mean:.4f} eV): total energies are right, per-atom energies are "
               f"not meaningful; give --isolated-atoms FILE (single-atom energies, same method) to fix them")
    return mu


def _formulas(structures: Sequence[Structure], most: int = 3) -> str:
    from ase.formula import Formula
    from ase.data import chemical_symbols
    names = list(dict.fromkeys(Formula("".join(chemical_symbols[z] for z in s.numbers)).reduce()[0].format("hill")
                               for s in structures))
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def force_rms(structures: Sequence[Structure]) -> float:
    f = [s.forces.ravel() for s in structures if s.forces is not None]
    return float(np.sqrt(np.mean(np.concatenate(f) ** 2))) if f else 1.0


def average_neighbors(structures: Sequence[Structure], cutoff: float) -> float:
    edges = sum(len(neighbor_pairs(s, cutoff)[0]) for s in structures)
    return edges / sum(len(s) for s in structures)


def read(path, options: TrainOptions, require_forces: bool = False) -> List[Structure]:
    return read_dataset(path, options.energy_key, options.forces_key, options.energy_unit, options.length_unit,
                        require_forces=require_forces)


# Files a training run writes into its folder: a folder holding any of them holds an earlier run.
RUN_FILES = ("last.ckpt", "best.ckpt", "config.yaml", "metrics.csv", "learning_curve.png", "snapshot_*.ckpt",
             "test_errors.json", "summary.txt")
# The end-of-training statement: a run is called not converged when the best validation force error
# (the loss without forces) of its last 10% of epochs is more than this fraction below the best before.
STILL_IMPROVING = 0.05
# learning_curve.png is redrawn at most this often (and at the end): drawing it costs about a second
# of CPU with 200 epochs, against 12 CPU seconds of steps per rMD17 ethanol epoch (docs/benchmarks.md).
PLOT_EVERY_S = 60.0
# What a resumed run may change: how long it trains and how it reports. Everything else is the
# run's recipe, kept as it started; the data files are checked by their sha256.
RESUME_MAY_CHANGE = ("epochs", "max_time", "progress", "threads", "snapshot_times", "resume", "overwrite", "given",
                     "train", "valid", "isolated_atoms", "test", "device", "compile")


# On resume these keep the run's value unless given again (the rest of RESUME_MAY_CHANGE is how this
# invocation reports: always the new one).
RESUME_KEEP_UNLESS_GIVEN = ("train", "valid", "isolated_atoms", "test", "threads", "device", "compile")


def _given(options: TrainOptions, key: str) -> bool:
    """Set by the caller: a data path that is not empty; a flag named on the command line
    (options.given), or through the API (given None) any value but None."""
    if key in ("train", "valid", "isolated_atoms", "test"):
        return bool(getattr(options, key))
    if options.given is not None:
        return key in options.given
    return getattr(options, key) is not None


def run_files(out: Path) -> List[Path]:
    return sorted({f for pattern in RUN_FILES for f in out.glob(pattern)}) if out.is_dir() else []


def resume_conflicts(options: TrainOptions, stored: Dict[str, Any]) -> List[str]:
    """The options given for a resumed run that differ from the stored run's, as 'flag VALUE
    (the run has STORED)'."""
    keys = options.given if options.given is not None else [f.name for f in dataclasses.fields(TrainOptions)]
    conflicts = []
    for key in keys:
        if key in RESUME_MAY_CHANGE or key not in stored:
            continue
        new, old = getattr(options, key), stored[key]
        same = new == old
        if isinstance(new, (int, float)) and isinstance(old, (int, float)) and not isinstance(new, bool):
            same = math.isclose(float(new), float(old), rel_tol=1e-12, abs_tol=0.0)
        if not same:
            flag = "--config model:" if key == "model" else "--" + key.replace("_", "-")
            conflicts.append(f"{flag} {new!r} (the run has {old!r})")
    return conflicts


def make_optimizer(potential: Potential, options: TrainOptions) -> torch.optim.Optimizer:
    """Adam or AMSGrad; with --weight-decay, AdamW's decoupled decay (Loshchilov & Hutter 2019) on the
    weight matrices only: biases, norms, per-element shifts/scales and ZBL coefficients are not pulled
    to zero. fused: torch's one-kernel update instead of a Python loop over ~100 parameter tensors
    (PyTorch picks a faster form by default only on GPUs); the same update to round-off."""
    amsgrad = options.optimizer == "amsgrad"
    if not options.weight_decay:
        return torch.optim.Adam(potential.parameters(), lr=options.lr, amsgrad=amsgrad, fused=True)
    params = list(potential.parameters())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": options.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=options.lr, amsgrad=amsgrad, fused=True)


def absolute(path: Optional[str]) -> Optional[str]:
    return str(Path(path).resolve()) if path else path


def split(structures: List[Structure], fraction: float, seed: int):
    if len(structures) < 2:
        raise ValueError("need at least 2 structures to split off a validation set; give --valid FILE")
    order = np.random.default_rng(seed).permutation(len(structures))
    n_valid = min(max(1, int(round(fraction * len(structures)))), len(structures) - 1)
    return [structures[k] for k in order[n_valid:]], [structures[k] for k in order[:n_valid]]


def build_config(options: TrainOptions, train_set: List[Structure]) -> So3kratesConfig:
    elements = sorted({int(z) for s in train_set for z in s.numbers})
    model = dict(options.model)
    if "elements" in model:
        missing = sorted(set(elements) - set(model["elements"]))
        if missing:
            raise ValueError(f"the training data contains atomic numbers {missing} that the config's elements "
                             f"{model['elements']} lack")
    else:
        model["elements"] = elements
    model["dtype"] = options.dtype
    config = preset(options.preset, **model)
    if config.message_normalization == "avg_neighbors" and not config.avg_num_neighbors:
        config = config.replace(avg_num_neighbors=average_neighbors(train_set, config.cutoff))
    return config


class Trainer:
    def __init__(self, options: TrainOptions):
        resume, earlier = self._open_run_folder(options)
        options = self.options
        torch.set_num_threads(options.threads or max(1, min(2, os.cpu_count() or 1)))
        # Every step frees and allocates the same per-edge tensors; glibc would hand them back to the
        # kernel and page-fault them in again (benchmarks/training_throughput.py, docs/benchmarks.md).
        from so3krates.allocator import keep_freed_memory
        keep_freed_memory()
        self.dtype = getattr(torch, options.dtype)
        self.device = torch.device(options.device)
        self._read_data()
        if options.batch_size is None:   # resolved once: config.yaml and the checkpoint hold the number
            options.batch_size = default_batch_size(self.train_set)
            self.batch_note = f" (default for {mean_atoms(self.train_set):.0f} atoms a structure: about " \
                              f"{ATOMS_PER_BATCH} atoms a batch, {BATCH_RANGE[0]} to {BATCH_RANGE[1]} structures)"
        config = self._check_resumed_data(resume) if resume is not None else build_config(options, self.train_set)
        torch.manual_seed(options.seed)
        network = So3krates(config)
        self.shift_source = "restored from the checkpoint"
        if resume is None:
            self._fit_element_energies(network)
        self._set_up_optimisation(network.to(self.device))
        if resume is not None:
            self._restore(resume)
        self._choose_step()
        for f in earlier:   # --overwrite: only now that the new run is set up (a bad flag keeps the old run)
            f.unlink()
        self.out.mkdir(parents=True, exist_ok=True)
        self._write_config()

    batch_note = ""   # how the batch size was chosen, when by default (the start-up summary)

    # --- set-up --------------------------------------------------------------------------------------
    def _open_run_folder(self, options: TrainOptions):
        """Check --out, --resume and --overwrite; sets self.options (the stored run's, when resuming)
        and returns (the checkpoint to resume or None, the earlier run's files to replace)."""
        from .outputs import check_output_folder
        if not options.resume:
            options.validate()
        self.options = options
        self.out = Path(options.out)
        check_output_folder(self.out, "--out")
        if options.resume and options.overwrite:
            raise ValueError("--resume continues the run in --out, --overwrite replaces it: give one of them")
        resume = None
        if options.resume:
            last = self.out / "last.ckpt"
            if not last.is_file():
                raise FileNotFoundError(f"nothing to resume: {last} does not exist; run without --resume")
            resume = load_checkpoint(last)
            stored = dict(resume["training"]["options"])
            stored.setdefault("stress_weight", 0.0)   # a run from before stress training trained none
            stored.setdefault("schedule", "plateau")   # runs started before budget planning
            stored.setdefault("weight_decay", 0.0)     # runs started before --weight-decay
            conflicts = resume_conflicts(options, stored)
            if conflicts:
                raise ValueError(f"--resume continues the run in {self.out} with its own settings, but "
                                 f"{'; '.join(conflicts)}: drop these flags to resume, or start a new run with "
                                 f"another --out")
            # The run's recipe stays as it started; only how long to train may change. What is not
            # given now stays as the run had it (`--resume --out RUN` alone continues the planned
            # budget on the same data); the data files may have moved (their sha256 is checked
            # later): paths given now are used.
            budget_given = options.epochs is not None or options.max_time is not None
            for key in RESUME_MAY_CHANGE:
                if key in ("epochs", "max_time") and not budget_given:
                    continue
                if key in RESUME_KEEP_UNLESS_GIVEN and not _given(options, key):
                    continue
                stored[key] = getattr(options, key)
            known = {f.name for f in dataclasses.fields(TrainOptions)}
            self.options = options = TrainOptions(**{k: v for k, v in stored.items() if k in known})
            options.validate()
        earlier = [] if options.resume else run_files(self.out)
        if earlier and not options.overwrite:
            raise ValueError(f"{self.out} already holds a run ({', '.join(f.name for f in earlier)}): continue "
                             f"it with --resume, replace it with --overwrite, or choose another --out")
        # Absolute data paths: the stored run can be resumed from any directory.
        options.train, options.valid = absolute(options.train), absolute(options.valid)
        options.isolated_atoms, options.test = absolute(options.isolated_atoms), absolute(options.test)
        return resume, earlier

    def _read_data(self) -> None:
        """Training and validation structures, and the provenance metadata of the run."""
        options = self.options
        if options.energy_only and options.forces_weight:
            options.forces_weight = 0.0
        structures = read(options.train, options, require_forces=not options.energy_only)
        if options.energy_only:
            print(f"training on energies only (--energy-only): forces in {options.train} are not used", flush=True)
        else:
            without = sum(s.forces is None for s in structures)
            if without:
                print(f"note: {without} of {len(structures)} frames of {options.train} have no forces; they "
                      f"train the energy only", flush=True)
        stressed = sum(s.stress is not None for s in structures)
        if stressed:
            print(f"note: {stressed} of {len(structures)} frames of {options.train} have stress labels: " +
                  (f"trained with --stress-weight {options.stress_weight:g}" if options.stress_weight > 0 else
                   "not trained (--stress-weight 0)"), flush=True)
        if options.valid:
            self.train_set, self.valid_set = structures, read(options.valid, options)
        else:
            self.train_set, self.valid_set = split(structures, options.valid_fraction, options.seed)
        # Read now: a bad --test file is refused before the training, not after it.
        self.test_set = read(options.test, options) if options.test else None
        self.metadata = {
            "training_data": str(Path(options.train).resolve()),
            "training_data_sha256": dataset_sha256(options.train),
            "validation_data": str(Path(options.valid).resolve()) if options.valid else None,
            "validation_data_sha256": dataset_sha256(options.valid) if options.valid else None,
            "n_train": len(self.train_set), "n_valid": len(self.valid_set),
            "data_energy_unit": options.energy_unit, "data_length_unit": options.length_unit,
            "preset": options.preset, "seed": options.seed,
        }

    def _check_resumed_data(self, resume: Dict[str, Any]) -> So3kratesConfig:
        """A resumed run must see the data it started with; returns its config."""
        old = resume["metadata"]
        for kind, key in (("training", "training_data"), ("validation", "validation_data")):
            if old.get(key + "_sha256") != self.metadata[key + "_sha256"]:
                raise ValueError(f"the {kind} data {self.metadata[key]} is not the data this run started with "
                                 f"({old.get(key)}; sha256 differs): resuming would train on other data; start "
                                 f"a new run with another --out")
        return So3kratesConfig.from_dict(resume["config"])

    def _fit_element_energies(self, network: So3krates) -> None:
        """Per-element shifts by least squares (or from isolated atoms) and the force-RMS scale."""
        options = self.options
        isolated = None
        if options.isolated_atoms:
            isolated = read_dataset(options.isolated_atoms, options.energy_key, None, options.energy_unit,
                                    options.length_unit)
        mu = energy_shifts(self.train_set, list(network.config.elements), isolated)
        self.shift_source = (f"isolated-atom energies from {options.isolated_atoms}" if isolated is not None else
                             "least squares E ~ sum_Z n_Z mu_Z over the training set")
        with torch.no_grad():
            network.energy_shift.copy_(torch.as_tensor(mu))
            network.energy_scale.fill_(force_rms(self.train_set))

    def _set_up_optimisation(self, network: So3krates) -> None:
        """The model and its EMA copy, optimizer, schedule, shuffling and the graphs of the data."""
        options, config = self.options, network.config
        self.potential = Potential(network)
        self.ema = copy.deepcopy(self.potential)
        for p in self.ema.parameters():
            p.requires_grad_(False)
        # Listed once: walking the module tree for them cost 0.43 ms a step (1.7 % of a compiled ethanol step).
        self.trained = list(self.potential.parameters())
        self.averaged = list(self.ema.parameters())
        self.optimizer = make_optimizer(self.potential, options)
        self.generator = torch.Generator().manual_seed(options.seed)
        self.train_graphs = make_graphs(self.train_set, config.elements, config.cutoff, self.dtype)
        self.valid_graphs = make_graphs(self.valid_set, config.elements, config.cutoff, self.dtype)
        self.n_batches = math.ceil(len(self.train_graphs) / options.batch_size)
        self.train_sizes = [len(g.species) for g in self.train_graphs]
        self.compiled = None
        self.schedule = make_schedule(options.schedule, options.lr, options.min_lr, options.warmup_steps,
                                      options.plateau_patience, options.plateau_factor, *self._budget(),
                                      options.decay_fraction)
        self.replanned_from = None   # the stored plan, when a resume re-planned over a new budget
        self.last_plot = -math.inf
        self.epoch, self.batch_in_epoch, self.elapsed = 0, 0, 0.0
        self.order = torch.zeros(0, dtype=torch.long)
        self.sums = {"loss": 0.0, "e_mse": 0.0, "f_mse": 0.0, "n": 0, "structures": 0, "atoms": 0, "seconds": 0.0}
        self.history: List[Dict[str, float]] = []
        self.best_loss = math.inf

    def _choose_step(self) -> None:
        """The compiled or the eager step: --compile / --no-compile, or chosen by what is left of the run."""
        from so3krates.model.compiled_step import automatic_choice, compiled_forces
        o = self.options
        wanted, why = o.compile, "--compile" if o.compile else "--no-compile"
        if wanted is None:
            steps, seconds = self._budget()
            wanted, why = automatic_choice(self.device, None if seconds is None else seconds - self.elapsed,
                                           None if steps is None else steps - self.schedule.steps,
                                           self.train_graphs, o.batch_size)
            why = f"automatic: {why}; --{'no-' if wanted else ''}compile to change"
        self.step_note = f"eager PyTorch ({why})"
        if wanted:
            self.compiled, note = compiled_forces(self.potential, self.train_graphs, o.batch_size)
            self.step_note = note if self.compiled is None else f"{note} ({why})"

    def _budget(self):
        """(optimizer steps, seconds) the run may take: the plan of a budget schedule."""
        o = self.options
        return (None if o.epochs is None else o.epochs * self.n_batches), o.max_time

    # --- state ---------------------------------------------------------------------------------------
    def _state(self) -> Dict[str, Any]:
        return {"training": {
            "options": self.options.to_dict(),
            "train_state_dict": {k: v.detach().cpu().clone() for k, v in self.potential.network.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.generator.get_state()},
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "order": self.order.clone(),
            "sums": dict(self.sums), "elapsed_s": self.elapsed, "history": [dict(r) for r in self.history],
            "best_valid_loss": self.best_loss,
        }}

    def _restore(self, payload: Dict[str, Any]) -> None:
        t = payload["training"]
        self.potential.network.load_state_dict(upgrade_state_dict(payload["config"], t["train_state_dict"]))
        self.ema.network.load_state_dict(upgrade_state_dict(payload["config"], payload["state_dict"]))
        self.optimizer.load_state_dict(t["optimizer"])
        self.schedule.load_state_dict(t["schedule"])
        if isinstance(self.schedule, BudgetSchedule):
            stored = self.schedule.plan()
            if self.schedule.replan(*self._budget()):
                self.replanned_from = stored
        torch.set_rng_state(t["rng"]["torch"])
        self.generator.set_state(t["rng"]["shuffle"])
        self.epoch, self.batch_in_epoch, self.order = int(t["epoch"]), int(t["batch_in_epoch"]), t["order"]
        self.sums, self.elapsed = {"atoms": 0, **t["sums"]}, float(t["elapsed_s"])
        self.history, self.best_loss = [dict(r) for r in t["history"]], float(t["best_valid_loss"])

    def _save(self, name: str, with_state: bool) -> None:
        state = self._state() if with_state else {}
        save_checkpoint(self.out / name, self.ema.network, self.metadata, **state)

    def _write_config(self) -> None:
        import yaml
        text = yaml.safe_dump({"model": self.potential.network.config.to_dict(),
                               "training": self.options.to_dict()}, sort_keys=False)
        atomic_write(self.out / "config.yaml", lambda tmp: open(tmp, "w").write(text))

    # --- steps ---------------------------------------------------------------------------------------
    def _step(self, indices: torch.Tensor) -> None:
        o = self.options
        batch = to_device(collate([self.train_graphs[k] for k in indices.tolist()]), self.device)
        lr = self.schedule.lr(self.elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        out = self._evaluate(batch)
        loss, e_mse, f_mse, _ = loss_terms(out, batch, o)
        if not torch.isfinite(loss):
            raise RuntimeError(f"the training loss became {float(loss)} at step {self.schedule.steps}; "
                               f"lower --lr (now {o.lr}) or check the data for outliers")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.trained, o.grad_clip, foreach=True)
        self.optimizer.step()
        self.schedule.steps += 1
        # EMA with a short start-up so the average is not dominated by the random initial weights.
        decay = min(o.ema_decay, (1.0 + self.schedule.steps) / (10.0 + self.schedule.steps))
        with torch.no_grad():
            torch._foreach_lerp_(self.averaged, self.trained, 1.0 - decay)
        n = batch["num_graphs"]
        self.sums["loss"] += float(loss.detach()) * n
        self.sums["e_mse"] += float(e_mse) * n
        self.sums["f_mse"] += float(f_mse) * n
        self.sums["n"] += n

    def _evaluate(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        stress = trains_stress(self.options, batch)
        if self.compiled is not None:
            from so3krates.model.compiled_step import CompileError
            try:
                return self.compiled.evaluate(batch, stress)
            except CompileError as e:
                self.step_note = f"uncompiled: torch.compile failed ({e})"
                self._report(f"--compile: {self.step_note}")
                self.compiled = None
        return self.potential.evaluate_edges(batch["positions"], batch["species"], batch["idx_i"], batch["idx_j"],
                                             batch["shifts"], batch["batch"], batch["num_graphs"], -1, True,
                                             stress, True)

    def validate(self) -> Dict[str, float]:
        predicted = predict_graphs(self.ema, self.valid_graphs, batch_size=64)
        m = error_metrics(self.valid_set, predicted["energy"], predicted["forces"], predicted["virial"])
        e_mse = (m["energy_rmse_meV_per_atom"] / 1000.0) ** 2
        f_mse = ((m["forces_rmse_meV_per_A"] or 0.0) / 1000.0) ** 2
        w_mse = ((m.get("virial_rmse_meV_per_atom") or 0.0) / 1000.0) ** 2
        m["loss"] = self.options.energy_weight * e_mse + self.options.forces_weight * f_mse + \
            self.options.stress_weight * w_mse
        return m

    def _time_left(self) -> bool:
        return self.options.max_time is None or self.elapsed < self.options.max_time

    def _epochs_left(self) -> bool:
        return self.options.epochs is None or self.epoch < self.options.epochs

    def run(self) -> Path:
        o = self.options
        n, bs = len(self.train_graphs), o.batch_size
        n_batches = self.n_batches
        pending = sorted(t for t in o.snapshot_times if t > self.elapsed)
        self._report(self.startup_summary())
        if not (self._epochs_left() and self._time_left()):
            print(f"{self.out}: the run already reached its end ({self.epoch} epochs, {self.elapsed:.0f} s); "
                  f"raise --epochs or --max-time to train further")
        while self._epochs_left() and self._time_left():
            if self.batch_in_epoch == 0:
                self.order = torch.randperm(n, generator=self.generator)
                self.sums = {k: 0 * v for k, v in self.sums.items()}
            bar = self._bar(n_batches)
            while self.batch_in_epoch < n_batches and self._time_left():
                t0 = time.perf_counter()
                chunk = self.order[self.batch_in_epoch * bs:(self.batch_in_epoch + 1) * bs]
                self._step(chunk)
                self.batch_in_epoch += 1
                dt = time.perf_counter() - t0
                self.elapsed += dt
                self.sums["seconds"] += dt
                self.sums["structures"] += len(chunk)
                self.sums["atoms"] += sum(self.train_sizes[k] for k in chunk.tolist())
                while pending and self.elapsed >= pending[0]:
                    self._save(f"snapshot_{int(pending.pop(0))}s.ckpt", with_state=False)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(self._running())
            if bar is not None:
                bar.close()
            if self.batch_in_epoch < n_batches:   # out of time in the middle of an epoch
                metrics = self.validate()
                if metrics["loss"] < self.best_loss:
                    self.best_loss = metrics["loss"]
                    self._save("best.ckpt", with_state=False)
                self._save("last.ckpt", with_state=True)
                break
            self._end_epoch()
        if not (self.out / "best.ckpt").exists():
            self._save("best.ckpt", with_state=False)
        if self.history:
            self._write_metrics(plot=True)
        self._report(self.final_summary())
        return self.out / "best.ckpt"

    def _end_epoch(self) -> None:
        metrics = self.validate()
        self.schedule.epoch_end(metrics["loss"])
        s = self.sums
        row = {
            "epoch": self.epoch + 1, "step": self.schedule.steps, "elapsed_s": round(self.elapsed, 3),
            "lr": self.schedule.lr(self.elapsed), "train_loss": s["loss"] / max(s["n"], 1),
            "train_energy_rmse_meV_per_atom": 1000 * math.sqrt(s["e_mse"] / max(s["n"], 1)),
            "train_forces_rmse_meV_per_A": 1000 * math.sqrt(s["f_mse"] / max(s["n"], 1)),
            "valid_loss": metrics["loss"], "valid_energy_mae_meV": metrics["energy_mae_meV"],
            "valid_energy_mae_meV_per_atom": metrics["energy_mae_meV_per_atom"],
            "valid_forces_mae_meV_per_A": metrics["forces_mae_meV_per_A"] or float("nan"),
            "train_structures_per_s": s["structures"] / max(s["seconds"], 1e-9),
            "train_atoms_per_s": s.get("atoms", 0) / max(s["seconds"], 1e-9),
        }
        if metrics.get("stress_rmse_GPa") is not None:
            row["valid_stress_rmse_GPa"] = metrics["stress_rmse_GPa"]
        self.history.append(row)
        self.epoch += 1
        self.batch_in_epoch = 0
        if metrics["loss"] < self.best_loss:
            self.best_loss = metrics["loss"]
            self._save("best.ckpt", with_state=False)
        self._save("last.ckpt", with_state=True)
        self._write_metrics()
        if not self.options.progress:
            print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4g}, valid loss {row['valid_loss']:.4g}, "
                  f"E MAE {row['valid_energy_mae_meV']:.2f} meV, F MAE {row['valid_forces_mae_meV_per_A']:.1f} "
                  f"meV/A, lr {row['lr']:.2e}, {self.elapsed:.0f} s", flush=True)

    # --- what the run does and did -------------------------------------------------------------------
    def startup_summary(self) -> str:
        """The data, the model and the plan, as the run starts (or resumes)."""
        from ase.data import chemical_symbols
        o, network = self.options, self.potential.network
        numbers = np.concatenate([s.numbers for s in self.train_set])
        elements = ", ".join(f"{chemical_symbols[z]} {int(np.sum(numbers == z))}" for z in network.config.elements)
        periodic = sum(bool(np.any(s.pbc)) for s in self.train_set)
        periodicity = ("periodic" if periodic == len(self.train_set) else f"{periodic} periodic" if periodic
                       else "not periodic")
        with_forces = sum(s.forces is not None for s in self.train_set)
        with_stress = sum(getattr(s, "stress", None) is not None for s in self.train_set)
        shifts = ", ".join(f"{chemical_symbols[z]} {float(mu):.4f}"
                           for z, mu in zip(network.config.elements, network.energy_shift.tolist()))
        parameters = sum(p.numel() for p in self.potential.parameters())
        warmup = f"{o.warmup_steps} steps"
        if isinstance(self.schedule, BudgetSchedule):
            warmup += " or 5% of the budget, whichever is first"
            if self.schedule.total_steps is not None:
                warmup += f" (by step {min(o.warmup_steps, math.ceil(0.05 * (self.schedule.total_steps - 1)))})"
        lines = [
            f"{'resuming' if self.epoch or self.batch_in_epoch else 'training'} {self.out} "
            f"(epoch {self.epoch}, {self.elapsed:.0f} s trained so far)",
            f"  data: {len(self.train_set)} training, {len(self.valid_set)} validation"
            + (f", {len(self.test_set)} test" if self.test_set is not None else "") + " structures; "
            f"{periodicity}"
            f"; forces in {with_forces}, stress in {with_stress} of the training structures",
            f"  elements (atoms in the training set): {elements}",
            f"  energy shifts mu_Z (eV): {shifts}; {self.shift_source}",
            f"  model: preset {o.preset}, {parameters:,} parameters, {o.dtype}, on {self.device} with "
            f"{torch.get_num_threads()} CPU thread(s)",
            f"  {self.n_batches} batches of up to {o.batch_size}{self.batch_note} per epoch; warm-up {warmup}; optimizer {o.optimizer}"
            + (f", decoupled weight decay {o.weight_decay:g} on the weight matrices" if o.weight_decay else ""),
            f"  schedule: {self.schedule.describe()}",
            f"  training step: {self.step_note}",
            f"  EMA of the weights (validated and saved): decay {o.ema_decay:g}, an average over the last "
            f"~{1 / max(1 - o.ema_decay, 1e-9):.0f} steps (over the last ~11% of the steps early in the run)",
            f"  budget: {budget_text(o)}",
        ]
        if self.replanned_from is not None:
            steps, seconds = self.replanned_from
            old = " or ".join(([f"step {steps}"] if steps is not None else []) +
                              ([f"{seconds:.0f} s"] if seconds is not None else []))
            lines.append(f"  note: re-planned over the new budget (the run was planned to end at {old}); the "
                         f"learning rate follows the new plan from here, now {self.schedule.lr(self.elapsed):.2e}")
        return "\n".join(lines)

    def final_summary(self) -> str:
        """What the run did: length, throughput, best validation errors, test errors, convergence."""
        rows = self.history
        lines = [f"finished {self.out}: {self.epoch} epochs, {self.schedule.steps} steps, {self.elapsed:.0f} s of "
                 f"training; final learning rate {self.schedule.lr(self.elapsed):.2e}"]
        if rows:
            rates = sorted(r["train_structures_per_s"] for r in rows)
            atoms = sorted(r.get("train_atoms_per_s", float("nan")) for r in rows)
            best = min(rows, key=lambda r: r["valid_loss"])
            lines.append(f"  throughput: {rates[len(rates) // 2]:.1f} structures/s, {atoms[len(atoms) // 2]:.0f} "
                         f"atoms/s (median over epochs)")
            lines.append(f"  best validation (epoch {best['epoch']}): energy MAE {best['valid_energy_mae_meV']:.2f} "
                         f"meV, force MAE {best['valid_forces_mae_meV_per_A']:.2f} meV/A")
        if self.test_set is not None:
            m = self.evaluate_test()
            forces = (f", force MAE {m['forces_mae_meV_per_A']:.2f} meV/A, RMSE {m['forces_rmse_meV_per_A']:.2f} meV/A"
                      if m["forces_mae_meV_per_A"] is not None else "")
            lines.append(f"  test ({m['n_structures']} structures of {self.options.test}, best weights): energy MAE "
                         f"{m['energy_mae_meV']:.2f} meV ({m['energy_mae_meV_per_atom']:.3f} meV/atom){forces}; "
                         f"{self.out / 'test_errors.json'}")
        verdict = convergence_statement(rows)
        if verdict:
            lines.append("  " + verdict)
        return "\n".join(lines)

    def evaluate_test(self) -> Dict[str, Any]:
        """The best weights on --test, written to test_errors.json."""
        from .evaluate import evaluate
        metrics = evaluate(self.out / "best.ckpt", self.test_set, json_path=self.out / "test_errors.json")
        return metrics

    def _report(self, text: str) -> None:
        """Print, and append to the run's summary.txt."""
        print(text, flush=True)
        path = self.out / "summary.txt"
        old = path.read_text() if path.is_file() else ""
        atomic_write(path, lambda tmp: open(tmp, "w").write(old + text + "\n"))

    def _running(self) -> str:
        s = self.sums
        k = max(s["n"], 1)
        return (f"loss {s['loss'] / k:.3g} E {1000 * math.sqrt(s['e_mse'] / k):.1f} meV/at "
                f"F {1000 * math.sqrt(s['f_mse'] / k):.0f} meV/A lr {self.schedule.lr(self.elapsed):.1e}")

    def _bar(self, total: int):
        if not self.options.progress:
            return None
        from tqdm import tqdm
        last = self.history[-1] if self.history else None
        desc = f"epoch {self.epoch + 1}" + (f" (valid F MAE {last['valid_forces_mae_meV_per_A']:.0f})" if last else "")
        return tqdm(total=total, initial=self.batch_in_epoch, desc=desc, unit="batch", leave=False)

    def _write_metrics(self, plot: bool = False) -> None:
        """metrics.csv; learning_curve.png when `plot` or PLOT_EVERY_S have passed since the last."""
        rows = self.history
        keys = list(rows[0])

        def write(tmp):
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=keys)
                w.writeheader()
                w.writerows(rows)
        atomic_write(self.out / "metrics.csv", write)
        if plot or time.perf_counter() - self.last_plot >= PLOT_EVERY_S:
            plot_learning_curve(self.out / "learning_curve.png", rows)
            self.last_plot = time.perf_counter()


def budget_text(options: TrainOptions) -> str:
    parts = []
    if options.epochs is not None:
        parts.append(f"{options.epochs} epochs")
    if options.max_time is not None:
        parts.append(f"{options.max_time:.0f} s of training (--max-time)")
    return " or ".join(parts) + (", whichever ends first" if len(parts) == 2 else "")


def convergence_statement(rows: List[Dict[str, float]]) -> Optional[str]:
    """A plain statement when the validation error was still falling at the end: the best of the
    last 10% of epochs (at least one) more than STILL_IMPROVING below the best before them. The
    force MAE when there are forces, else the validation loss. None when converged by this test
    or when there are fewer than 10 epochs to judge by."""
    if len(rows) < 10:
        return None
    key = "valid_forces_mae_meV_per_A"
    if not all(math.isfinite(r[key]) for r in rows):
        key = "valid_loss"
    tail = max(1, len(rows) // 10)
    before = min(r[key] for r in rows[:-tail])
    after = min(r[key] for r in rows[-tail:])
    gain = (before - after) / before if before > 0 else 0.0
    if gain <= STILL_IMPROVING:
        return None
    what = "force MAE" if key.startswith("valid_forces") else "loss"
    return (f"not converged: the validation {what} still fell by {100 * gain:.0f}% over the last {tail} of "
            f"{len(rows)} epochs (more than {100 * STILL_IMPROVING:.0f}%); a longer run (--max-time / --epochs, "
            f"a new run or --resume with a larger budget) would give a more accurate model")


def plot_learning_curve(path, rows: List[Dict[str, float]]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.semilogy(epochs, [r["train_loss"] for r in rows], label="train")
    a.semilogy(epochs, [r["valid_loss"] for r in rows], label="validation (EMA)")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.semilogy(epochs, [r["valid_forces_mae_meV_per_A"] for r in rows], label="force MAE (meV/A)")
    b.semilogy(epochs, [r["valid_energy_mae_meV"] for r in rows], label="energy MAE (meV)")
    b.set_xlabel("epoch")
    b.set_title("validation")
    b.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def train(options: TrainOptions) -> Path:
    """Train (or resume) and return the path of the best checkpoint (EMA weights)."""
    return Trainer(options).run()
