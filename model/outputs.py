"""Output paths checked before a run starts, and the one-line report of an interrupted run.

Every verb that writes files (train, sample, evaluate, md, validate) checks its output paths with
`check_output_file` / `check_output_folder` first, so that a typo in a path fails in a second
rather than after the whole run.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Optional


class Interrupted(Exception):
    """Ctrl-C, with one line saying what was saved; the CLI prints it and exits with 130."""


def caused_by_interrupt(exc: Optional[BaseException]) -> bool:
    """Whether Ctrl-C is behind `exc`. A KeyboardInterrupt that lands inside an import or a class
    definition reaches the caller wrapped, e.g. as Python 3.11's RuntimeError "Error calling
    __set_name__ on ..." with the KeyboardInterrupt as its cause."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def plain_interrupts():
    """Inside the block, an error caused by Ctrl-C is raised as the KeyboardInterrupt it is."""
    try:
        yield
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if caused_by_interrupt(exc):
            raise KeyboardInterrupt() from exc
        raise


@contextmanager
def whole():
    """Ctrl-C waits until the block is done: a row or frame is written whole, and the count of
    what was written stays true."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    pending = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if pending:
            raise KeyboardInterrupt


def _writable_folder(folder: Path, flag: str, path) -> None:
    if not folder.exists():
        raise FileNotFoundError(f"cannot write {flag} {path}: the folder {folder} does not exist; create it "
                                f"or choose another path")
    if not folder.is_dir():
        raise ValueError(f"cannot write {flag} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {flag} {path}: the folder {folder} is not writable; choose another path")


def check_output_file(path: Optional[str | os.PathLike], flag: str) -> None:
    """Refuse, before any work, an output file that could not be written: a folder, a file in a
    folder that does not exist or is not writable, a read-only existing file. None: no output."""
    if path is None or path == "":
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name, e.g. {p / 'out'}"
                         f"{p.suffix or _default_suffix(flag)}")
    _writable_folder(p.parent if str(p.parent) else Path("."), flag, path)
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"cannot write {flag} {path}: the file exists and is read-only")


def _default_suffix(flag: str) -> str:
    return {"--json": ".json", "--plot": ".png", "--log": ".csv", "--traj": ".xyz"}.get(flag, "")


def check_output_folder(path: str | os.PathLike, flag: str) -> None:
    """A folder to create or fill: not an existing file, and its nearest existing parent writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {path} is an existing file, not a folder; choose a folder name")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write into {flag} {path}: the folder is not writable")
        return
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot create {flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot create {flag} {path}: {parent} is not writable; choose another path")
