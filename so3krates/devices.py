"""Where the model runs: 'cpu', 'cuda' or 'cuda:N', checked once for every entry point (the ASE
calculator, `create_force`, openmm-ml's `MLPotential.createSystem(device=...)`, `so3krates md
--device`), so that asking for a GPU on a machine without one is a one-line error, not a trace."""
from __future__ import annotations

from typing import Optional


def torch_device(name: Optional[str] = None):
    """torch.device for `name` (None: 'cpu'); ValueError naming the problem and the fix otherwise."""
    import torch
    text = "cpu" if name is None else str(name)
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"device {text!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"device {text!r}: so3krates runs on 'cpu' or 'cuda' ('cuda:N'), not {device.type}")
    if not torch.cuda.is_available():
        why = "this torch was built without CUDA" if torch.version.cuda is None else "torch finds no CUDA GPU"
        raise ValueError(f"device {text!r}: CUDA is not available on this machine ({why}); use device 'cpu'")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"device {text!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device
