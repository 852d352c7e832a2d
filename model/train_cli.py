"""`so3krates train`: train on reference data; the run folder gets best.ckpt, last.ckpt, metrics."""
from __future__ import annotations

import dataclasses

# Flags whose value (when given) overrides the config file's `training:` section.
TRAINING_FLAGS = ("valid", "valid_fraction", "preset", "max_time", "epochs", "seed", "energy_key", "forces_key",
                  "energy_unit", "length_unit", "batch_size", "lr", "optimizer", "energy_weight", "forces_weight",
                  "warmup_steps", "ema_decay", "grad_clip", "isolated_atoms", "dtype", "threads")


def add_reader_flags(p) -> None:
    """The data-reader flags shared by train and evaluate."""
    p.add_argument("--energy-key", help="extended XYZ header key of the energy (default: energy or REF_energy)")
    p.add_argument("--forces-key", help="extended XYZ per-atom key of the forces (default: forces or REF_forces)")
    p.add_argument("--energy-unit", help="eV (default), kcal/mol, kJ/mol or Hartree; forces in that unit per length")
    p.add_argument("--length-unit", help="A (default) or Bohr")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model on reference data (extxyz, sGDML npz, DeePMD folder)")
    p.add_argument("--train", required=True, help="training data file or DeePMD folder")
    p.add_argument("--valid", help="validation data (default: split off --valid-fraction of --train)")
    p.add_argument("--valid-fraction", type=float, help="default 0.05")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--config", help="YAML with `model:` (architecture) and/or `training:` sections, "
                                    "e.g. a run folder's config.yaml")
    p.add_argument("--preset", choices=["tiny", "small", "default", "so3lr"], help="model size (default: default)")
    p.add_argument("--max-time", help="training wall-clock budget over all resumes, e.g. 30m, 2h, 90s")
    p.add_argument("--epochs", type=int, help="total epochs over all resumes")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.ckpt")
    add_reader_flags(p)
    p.add_argument("--batch-size", type=int, help="structures per batch (default 16)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-3)")
    p.add_argument("--optimizer", choices=["amsgrad", "adam"])
    p.add_argument("--energy-weight", type=float, help="weight of the (eV/atom)^2 energy error (default 1)")
    p.add_argument("--forces-weight", type=float, help="weight of the (eV/A)^2 force error (default 100)")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--isolated-atoms", help="extended XYZ of single atoms: per-element energy shifts")
    p.add_argument("--dtype", choices=["float32", "float64"], help="training precision (default float32)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: up to 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; one line per epoch")
    p.set_defaults(func=main)


def options_from_args(args):
    from .train import TrainOptions, parse_duration
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    values = {}
    if args.config:
        import yaml
        with open(args.config) as fh:
            cfg = yaml.safe_load(fh) or {}
        if not isinstance(cfg, dict):
            raise ValueError(f"{args.config}: expected a mapping with `model:` and/or `training:` sections")
        if "model" in cfg or "training" in cfg:
            values["model"] = dict(cfg.get("model") or {})
            training = dict(cfg.get("training") or {})
        else:  # a flat file of architecture keys
            values["model"], training = dict(cfg), {}
        # A run folder's config.yaml carries the run's own bookkeeping: not a recipe.
        for key in ("train", "out", "resume", "progress", "snapshot_times", "model"):
            training.pop(key, None)
        unknown = set(training) - known
        if unknown:
            raise ValueError(f"{args.config}: unknown training keys {sorted(unknown)}; known: {sorted(known)}")
        values.update(training)
        values["model"].pop("dtype", None)
    for name in TRAINING_FLAGS:
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    if values.get("max_time") is not None:
        values["max_time"] = parse_duration(values["max_time"])
    return TrainOptions(train=args.train, out=args.out, resume=args.resume, progress=not args.quiet, **values)


def main(args) -> int:
    from .train import train
    options = options_from_args(args)
    best = train(options)
    print(f"best model (EMA weights): {best}; export it with `so3krates export {best} -o model.pt`")
    return 0
