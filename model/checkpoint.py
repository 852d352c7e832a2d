"""Checkpoints: plain dicts of tensors and built-in types, loadable with weights_only=True."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from .config import So3kratesConfig
from .network import So3krates

CHECKPOINT_FORMAT = "so3krates-checkpoint"
CHECKPOINT_VERSION = 1


def default_file_mode() -> int:
    """0666 & ~umask: the permissions open() gives a new file (mkstemp gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path), then rename over `path`: readers never see a half-written file. The
    file gets the permissions of a normally created file (0666 & ~umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, default_file_mode())
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | os.PathLike, network: So3krates, metadata: Optional[Dict[str, Any]] = None,
                    **training_state: Any) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": network.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "metadata": dict(metadata or {}),
        **training_state,
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a TorchScript archive or a foreign pickle
        raise ValueError(f"{path} is not a so3krates checkpoint (torch.load with weights_only=True "
                         f"failed: {exc.__class__.__name__}); exported .pt files are loaded with "
                         f"so3krates.export.load_exported instead") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a so3krates checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    return payload


# Module names of checkpoints saved before the reference layer options (config without
# `qkv_projections`): their one LayerNorm switch made norm_attention (now layer_norm_1) and
# norm_out (layer_norm_2), their residual MLP sat after the exchange block (now mlp_2).
LEGACY_MODULE_NAMES = {".norm_attention.": ".layer_norm_1.", ".norm_out.": ".layer_norm_2.", ".mlp.": ".mlp_2."}


def upgrade_state_dict(config: Dict[str, Any], state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """The state dict of a checkpoint under today's module names."""
    if "qkv_projections" in config:
        return state_dict
    upgraded = {}
    for key, value in state_dict.items():
        for old, new in LEGACY_MODULE_NAMES.items():
            key = key.replace(old, new)
        upgraded[key] = value
    return upgraded


def network_from_checkpoint(path_or_payload) -> Tuple[So3krates, Dict[str, Any]]:
    payload = path_or_payload if isinstance(path_or_payload, dict) else load_checkpoint(path_or_payload)
    network = So3krates(So3kratesConfig.from_dict(payload["config"]))
    network.load_state_dict(upgrade_state_dict(payload["config"], payload["state_dict"]))
    network.eval()
    return network, payload
