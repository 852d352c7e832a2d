"""`so3krates train`: train on reference data; the run folder gets best.ckpt, last.ckpt, metrics."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
from typing import Any, Dict

# Flags whose value (when given) overrides the config file's `training:` section.
TRAINING_FLAGS = ("valid", "valid_fraction", "preset", "max_time", "epochs", "seed", "energy_key", "forces_key",
                  "energy_unit", "length_unit", "batch_size", "lr", "optimizer", "weight_decay", "energy_weight", "forces_weight",
                  "warmup_steps", "ema_decay", "grad_clip", "isolated_atoms", "dtype", "threads", "stress_weight",
                  "schedule", "decay_fraction", "min_lr", "test", "device")
# The type of each value a config file's `training:` section may set (None: may also be null).
TRAINING_TYPES: Dict[str, Any] = {
    "valid": (str, None), "valid_fraction": float, "preset": str, "max_time": ((int, float, str), None),
    "epochs": (int, None), "seed": int, "energy_key": (str, None), "forces_key": (str, None), "energy_unit": str,
    "length_unit": str, "batch_size": (int, None), "lr": float, "optimizer": str, "weight_decay": float, "energy_weight": float,
    "forces_weight": float, "warmup_steps": int, "plateau_patience": int, "plateau_factor": float,
    "min_lr": float, "ema_decay": float, "grad_clip": float, "isolated_atoms": (str, None), "dtype": str,
    "threads": (int, None), "energy_only": bool, "stress_weight": float, "schedule": str, "test": (str, None),
    "device": str, "decay_fraction": float, "compile": (bool, None),
}
# A run folder's config.yaml carries the run's own bookkeeping: not a recipe.
BOOKKEEPING_KEYS = ("train", "out", "resume", "progress", "snapshot_times", "model", "given", "overwrite")


def add_reader_flags(p) -> None:
    """The data-reader flags shared by train and evaluate."""
    p.add_argument("--energy-key", help="extended XYZ header key of the energy (default: energy or REF_energy)")
    p.add_argument("--forces-key", help="extended XYZ per-atom key of the forces (default: forces or REF_forces)")
    p.add_argument("--energy-unit", help="eV (default), kcal/mol, kJ/mol or Hartree; forces in that unit per length")
    p.add_argument("--length-unit", help="A (default) or Bohr")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model on reference data (extxyz, sGDML npz, DeePMD folder)")
    p.add_argument("--train", help="training data file or DeePMD folder (with --resume: the run's own, "
                                    "unless given)")
    p.add_argument("--valid", help="validation data (default: split off --valid-fraction of --train)")
    p.add_argument("--valid-fraction", type=float, help="default 0.05")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--config", help="YAML with `model:` (architecture) and/or `training:` sections, "
                                    "e.g. a run folder's config.yaml")
    p.add_argument("--preset", choices=["tiny", "small", "default", "so3lr"], help="model size (default: default)")
    p.add_argument("--max-time", help="training wall-clock budget over all resumes, e.g. 30m, 2h, 90s")
    p.add_argument("--epochs", type=int, help="total epochs over all resumes")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.ckpt with the "
                   "run's own data, settings and budget: `so3krates train --out RUN --resume` (only --epochs/--max-time "
                   "may change; new paths for moved data files are checked by their sha256)")
    p.add_argument("--overwrite", action="store_true", help="replace the run files already in --out")
    p.add_argument("--energy-only", action="store_true", help="train on energies alone (without this, data "
                                                              "without forces is an error)")
    add_reader_flags(p)
    p.add_argument("--batch-size", type=int, help="structures per batch (default: about 100 atoms, 4 to 8 "
                   "structures: 8 for molecules up to 13 atoms, 4 from 23)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-3)")
    p.add_argument("--optimizer", choices=["adam", "amsgrad"], help="adam (default) or amsgrad (the default "
                   "before 2026-12-04; runs started with it resume with it)")
    p.add_argument("--weight-decay", type=float, help="decoupled weight decay (AdamW) on the weight matrices "
                   "(default 0: none)")
    p.add_argument("--energy-weight", type=float, help="weight of the (eV/atom)^2 energy error (default 1)")
    p.add_argument("--forces-weight", type=float, help="weight of the (eV/A)^2 force error (default 100)")
    p.add_argument("--stress-weight", type=float, help="weight of the (eV/atom)^2 virial error, i.e. the stress "
                   "error times the volume per atom, on frames with stress/virial labels (default 1000: 0.1 GPa "
                   "in water weighs like 20 meV/A of force error; 0: off)")
    p.add_argument("--warmup-steps", type=int, help="default 200, or 5%% of the budget when that is shorter")
    p.add_argument("--schedule", choices=["cosine", "exponential", "plateau"],
                   help="learning rate: cosine (default) or exponential decay to --min-lr planned over the budget "
                        "(--epochs/--max-time), or plateau: decay when the validation loss stalls")
    p.add_argument("--decay-fraction", type=float, help="cosine/exponential: the lr stays at its peak and decays "
                   "over the last fraction of the budget (default 1: decays throughout)")
    p.add_argument("--min-lr", type=float, help="the schedule's floor (default 1e-5)")
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--isolated-atoms", help="extended XYZ of single atoms: per-element energy shifts")
    p.add_argument("--dtype", choices=["float32", "float64"], help="training precision (default float32)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: up to 2)")
    p.add_argument("--device", help="cpu (default), cuda or cuda:N")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the training step with torch.compile (needs a C++ compiler; the first step takes "
                   "minutes, then ~2x faster steps; short-range models only). Default: compiled on a CPU when the "
                   "run has 10 minutes of --max-time or 10,000 steps of --epochs left")
    p.add_argument("--test", help="test data: evaluated with the best weights at the end (test_errors.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; one line per epoch")
    p.set_defaults(func=main)


def _type_name(expected) -> str:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    names = []
    for k in kinds:
        if isinstance(k, tuple):
            names.extend(t.__name__ for t in k)
        else:
            names.append("null" if k is None else k.__name__)
    return " or ".join(dict.fromkeys(n.replace("str", "text").replace("float", "number")
                                     .replace("int", "integer").replace("bool", "true/false") for n in names))


def _type_ok(value, expected) -> bool:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    for k in kinds:
        if k is None and value is None:
            return True
        if k is None:
            continue
        types = k if isinstance(k, tuple) else (k,)
        if isinstance(value, bool) and bool not in types:
            continue
        if isinstance(value, types) or (float in types and isinstance(value, int) and not isinstance(value, bool)):
            return True
    return False


def check_section(path, section: str, values: Dict[str, Any], expected: Dict[str, Any]) -> None:
    """Unknown keys (with the closest known one) and values of the wrong type, one line each."""
    for key, value in values.items():
        if key not in expected:
            close = difflib.get_close_matches(str(key), list(expected), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"{path}: unknown key {key!r} in `{section}:`; {hint}valid keys: "
                             f"{', '.join(sorted(expected))}")
        if not _type_ok(value, expected[key]):
            raise ValueError(f"{path}: `{section}: {key}` must be {_type_name(expected[key])}, got "
                             f"{value!r} ({type(value).__name__})")


def model_types() -> Dict[str, Any]:
    """Types of the So3kratesConfig fields, from their defaults."""
    from .config import So3kratesConfig
    defaults = So3kratesConfig()
    types: Dict[str, Any] = {}
    for f in dataclasses.fields(So3kratesConfig):
        value = getattr(defaults, f.name)
        types[f.name] = type(value) if value is not None else (object, None)   # None default: anything
    types["avg_num_neighbors"] = ((int, float), None)
    types["energy_head_width"] = (int, None)
    return types


def read_config(path) -> Dict[str, Any]:
    import yaml
    try:
        with open(path) as fh:
            cfg = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a YAML text file") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping with `model:` and/or `training:` sections, got "
                         f"{type(cfg).__name__}")
    return cfg


def options_from_args(args):
    from .train import TrainOptions, parse_duration
    values = {}
    if args.config:
        cfg = read_config(args.config)
        if "model" in cfg or "training" in cfg:
            extra = sorted(set(cfg) - {"model", "training"})
            if extra:
                close = difflib.get_close_matches(str(extra[0]), ["model", "training"], n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"{args.config}: unknown section {extra[0]!r}; {hint}valid sections: model, training")
            for section in ("model", "training"):
                if not isinstance(cfg.get(section) or {}, dict):
                    raise ValueError(f"{args.config}: `{section}:` must be a mapping of keys, got "
                                     f"{cfg[section]!r}")
            values["model"] = dict(cfg.get("model") or {})
            training = dict(cfg.get("training") or {})
        else:  # a flat file of architecture keys
            values["model"], training = dict(cfg), {}
        for key in BOOKKEEPING_KEYS:
            training.pop(key, None)
        values["model"].pop("dtype", None)
        check_section(args.config, "training", training, TRAINING_TYPES)
        check_section(args.config, "model", values["model"], model_types())
        values.update(training)
    for name in TRAINING_FLAGS + ("energy_only", "compile"):
        value = getattr(args, name, None)
        if value is not None and (value is not False or name == "compile"):   # 0 is a value (--epochs 0 is refused)
            values[name] = value
    if values.get("max_time") is not None:
        values["max_time"] = parse_duration(values["max_time"])
    given = sorted(k for k in values if k != "model" or values["model"])
    return TrainOptions(train=args.train, out=args.out, resume=args.resume, progress=not args.quiet,
                        overwrite=args.overwrite, given=given, **values)


def main(args) -> int:
    from pathlib import Path

    from .outputs import Interrupted, plain_interrupts
    from .train import Trainer
    options = options_from_args(args)
    try:
        with plain_interrupts():
            best = Trainer(options).run()
    except KeyboardInterrupt:
        last = Path(options.out) / "last.ckpt"
        if not last.is_file():
            raise Interrupted(f"no epoch was finished, no checkpoint was saved in {options.out}") from None
        from .checkpoint import load_checkpoint
        epoch = load_checkpoint(last)["training"]["epoch"]
        raise Interrupted(f"{last} holds the run up to epoch {epoch} (best.ckpt the best model so far); continue "
                          f"it with `so3krates train --out {options.out} --resume`") from None
    print(f"best model (EMA weights): {best}; export it with `so3krates export {best} -o model.pt`")
    return 0
