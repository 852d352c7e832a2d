"""`so3krates <verb>`: each verb lives in the module that owns it and registers itself here."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

import so3krates

# Each module defines register(subparsers) -> None, adding one or more verbs whose parser
# has set_defaults(func=callable(args) -> int).
VERB_MODULES = [
    "so3krates.model.sample_cli",      # sample
    "so3krates.model.train_cli",       # train
    "so3krates.model.evaluate_cli",    # evaluate
    "so3krates.export.cli",            # export, info
    "so3krates.md",                    # md
    "so3krates.lammps_pair.cli",       # lammps-plugin
    "so3krates.validation.cli",        # validate
    "so3krates.validation.stability_cli",  # stability
    "so3krates.demo",                  # demo
    "so3krates.pretrained.cli",        # pretrained
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="so3krates", description="SO3krates machine-learned force field: "
                                     "make data, train, export, run MD in OpenMM/LAMMPS, validate.")
    parser.add_argument("--version", action="version", version=f"so3krates {so3krates.__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # verb not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from so3krates.model.outputs import Interrupted, caused_by_interrupt
    try:
        return int(args.func(args) or 0)
    except Interrupted as exc:
        print(f"so3krates {args.verb}: interrupted: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"so3krates {args.verb}: interrupted; nothing was saved", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:   # FileNotFoundError, PermissionError are OSErrors
        if caused_by_interrupt(exc):    # Ctrl-C that landed inside an import (see outputs.py)
            print(f"so3krates {args.verb}: interrupted; nothing was saved", file=sys.stderr)
            return 130
        print(f"so3krates {args.verb}: error: {one_line(exc)}", file=sys.stderr)
        return 1


def one_line(exc: BaseException) -> str:
    """The message of an error on one line. Errors raised inside TorchScript carry the script's
    traceback after the message: keep the message only."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) <= 1:
        return text
    if lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        # The last line is "RuntimeError: <message>" (or another builtin error).
        last = lines[-1]
        return last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return " ".join(lines)


def entry() -> None:
    """The `so3krates` console script: preload tcmalloc when the system has it (see allocator.py)."""
    from so3krates.allocator import reexec_with_tcmalloc
    reexec_with_tcmalloc(["-m", "so3krates.cli", *sys.argv[1:]])
    code = main()
    if code == 130:
        # Interrupted: what was saved is saved and said (main's handlers ran, files are closed).
        # Skip the interpreter's finalisation: a Ctrl-C that landed inside torch can leave a native
        # thread that calls into Python while it shuts down ("Fatal Python error: PyThreadState_Get
        # ... finalizing", exit -6 instead of 130; seen once in the CI's train interrupt test).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
