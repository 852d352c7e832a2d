"""Pretrained models shipped inside this package (no download at run time).

so3lr: SO3LR (Kabylda, Frank et al., J. Am. Chem. Soc. 2025), the parameters published under the
MIT licence in So3krates-torch 0.2.1, converted once by benchmarks/so3lr/convert.py into
so3lr/so3lr.npz (+ so3lr.json: config and source). docs/pretrained.md.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any, Dict, Tuple

import numpy as np
import torch

from so3krates.model.config import So3kratesConfig
from so3krates.model.network import So3krates

PRETRAINED = ("so3lr",)


def pretrained_network(name: str) -> Tuple[So3krates, Dict[str, Any]]:
    """The network of a shipped pretrained model (float64) and its provenance (source, licence, citation)."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; this package ships: {', '.join(PRETRAINED)}")
    folder = resources.files(__package__) / name
    meta = json.loads((folder / f"{name}.json").read_text())
    network = So3krates(So3kratesConfig.from_dict({**meta["config"], "dtype": "float64"}))
    with resources.as_file(folder / f"{name}.npz") as path, np.load(path) as arrays:
        published = {key: torch.from_numpy(arrays[key]).to(torch.float64) for key in arrays.files}
    state = network.state_dict()
    missing = sorted(set(state) - set(published) - set(computed_buffers(state)))
    unknown = sorted(set(published) - set(state))
    if missing or unknown:
        raise ValueError(f"the shipped {name} parameters do not fit this network (missing {missing}, "
                         f"unknown {unknown}); reinstall so3krates")
    state.update({k: v.reshape(state[k].shape) for k, v in published.items()})
    network.load_state_dict(state)
    network.eval()
    provenance = {key: meta[key] for key in ("source", "source_sha256", "licence", "citation") if key in meta}
    return network, {"pretrained": meta["name"], **provenance}


def computed_buffers(state: Dict[str, torch.Tensor]):
    """Buffers a network computes from its config (not parameters)."""
    return [k for k in state if k.startswith(("radial_basis.", "contraction.", "dispersion.", "zbl.charge"))
            and k != "radial_basis.log_binom"]
