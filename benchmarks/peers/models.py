"""Build the benchmarked models (untrained) and their ASE calculators, by name.

Each builder imports its own package lazily: ours lives in /work/main/.venv, the peers in
benchmarks/peers/.venv, and one worker process per venv builds only the models it can import.

Names:
  ours-eager, ours-export      so3krates Potential (exact filters) / exported TorchScript (the
                               export default: tabulated radial filters), SO3LR-sized config
                               (F 128, degrees 1-4, 3 layers, 4 heads, 4.5 A, 32 Bernstein, PhysNet
                               cutoff); our "default" preset is checked to be the same architecture
  so3krates-torch              so3krates_torch.modules.models.So3krates with the same settings
  mace-small, mace-medium      MACE, 2 interactions, 5 A, correlation 3, max_ell 3,
                               hidden irreps 64x0e (L=0 messages) and 128x0e+128x1o (L=1)
"""
from __future__ import annotations

import tempfile

import numpy as np
import torch

ELEMENTS = [1, 6, 7, 8]  # H C N O: ethanol, 3BPA, water

# The architecture of the comparison, in our names and in so3krates-torch's names.
SO3LR_SIZE = dict(features=128, degrees=[1, 2, 3, 4], num_layers=3, num_heads=4, cutoff=4.5, num_rbf=32,
                  radial_basis="bernstein", cutoff_function="physnet")
SO3KRATES_TORCH_SIZE = dict(num_features=128, degrees=[1, 2, 3, 4], num_layers=3, num_heads=4, r_max=4.5,
                            num_radial_basis_fn=32, radial_basis_fn="bernstein", cutoff_fn="phys")
MACE_SIZES = {"mace-small": "64x0e", "mace-medium": "128x0e+128x1o"}
MACE_SETTINGS = dict(r_max=5.0, num_interactions=2, correlation=3, max_ell=3, num_bessel=8,
                     num_polynomial_cutoff=5, mlp_irreps="16x0e")

NAMES = ("ours-eager", "ours-export", "so3krates-torch", "mace-small", "mace-medium")
OURS = ("ours-eager", "ours-export")


def ours_config(dtype: str):
    from so3krates.model.config import So3kratesConfig, preset
    config = So3kratesConfig(**SO3LR_SIZE, elements=ELEMENTS, dtype=dtype)
    if preset("default", elements=ELEMENTS, dtype=dtype).to_dict() != config.to_dict():
        raise RuntimeError("our 'default' preset now differs from the SO3LR-sized config: "
                           "add it to models.py as a model of its own")
    return config


def build(name: str, dtype: str, seed: int = 0):
    """-> an ASE calculator; for ours also the torch module (for the built-in neighbour search)."""
    torch.manual_seed(seed)
    if name in OURS:
        return build_ours(name, dtype)
    if name == "so3krates-torch":
        return build_so3krates_torch(dtype), None
    if name in MACE_SIZES:
        return build_mace(MACE_SIZES[name], dtype), None
    raise ValueError(f"unknown model {name!r}; choose one of {NAMES}")


def build_ours(name: str, dtype: str):
    from so3krates.ase import So3kratesCalculator
    from so3krates.export import export_model, load_exported
    from so3krates.model import So3krates
    from so3krates.model.potential import Potential
    network = So3krates(ours_config(dtype))
    if name == "ours-eager":
        module = Potential(network).eval()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            export_model(network, f"{tmp}/model.pt", dtype=dtype)
            module = load_exported(f"{tmp}/model.pt")[0]
    return So3kratesCalculator(module), module


def build_so3krates_torch(dtype: str):
    from so3krates_torch.calculator.so3 import TorchkratesCalculator
    from so3krates_torch.modules.models import So3krates
    model = So3krates(**SO3KRATES_TORCH_SIZE, dtype=dtype).eval()
    model = model.double() if dtype == "float64" else model.float()
    # compute_stress for periodic cells is switched on per structure (as ours and MACE do).
    return TorchkratesCalculator(models=model, model_type="so3krates", default_dtype=dtype)


def build_mace(hidden_irreps: str, dtype: str):
    from mace import modules  # first: mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which e3nn 0.4.4 needs
    from e3nn import o3
    from mace.calculators import MACECalculator
    torch.set_default_dtype(getattr(torch, dtype))
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=MACE_SETTINGS["r_max"], num_bessel=MACE_SETTINGS["num_bessel"],
        num_polynomial_cutoff=MACE_SETTINGS["num_polynomial_cutoff"], max_ell=MACE_SETTINGS["max_ell"],
        interaction_cls=block, interaction_cls_first=block, num_interactions=MACE_SETTINGS["num_interactions"],
        num_elements=len(ELEMENTS), hidden_irreps=o3.Irreps(hidden_irreps),
        MLP_irreps=o3.Irreps(MACE_SETTINGS["mlp_irreps"]), atomic_energies=np.zeros(len(ELEMENTS)),
        avg_num_neighbors=20.0, atomic_numbers=ELEMENTS, correlation=MACE_SETTINGS["correlation"],
        gate=torch.nn.functional.silu, atomic_inter_scale=1.0, atomic_inter_shift=0.0)
    return MACECalculator(models=model.eval(), device="cpu", default_dtype=dtype)
