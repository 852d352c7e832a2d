"""Load a model for evaluation, whatever the user hands over: an exported TorchScript file, a
training checkpoint, or a module already in memory."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from so3krates.model.checkpoint import network_from_checkpoint
from so3krates.model.potential import Potential

from .exporter import load_exported


def is_exported_file(path: str | Path) -> bool:
    """A TorchScript archive (the export format) rather than a torch.save checkpoint."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or n.endswith("/code/__torch__.py") for n in archive.namelist())


def load_model(model, device: str = "cpu") -> Tuple[Any, Dict[str, Any]]:
    """An exported file, a checkpoint file, a Potential or a ScriptModule -> (module, metadata)."""
    from so3krates.allocator import tune_glibc_malloc
    tune_glibc_malloc()   # unless SO3KRATES_MALLOC_TUNING=0 (so3krates/allocator.py)
    if isinstance(model, (Potential, torch.jit.ScriptModule)):
        return model.to(device), {}
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if is_exported_file(path):
        return load_exported(path, device)
    network, payload = network_from_checkpoint(path)
    return Potential(network).to(device), payload.get("metadata", {})
