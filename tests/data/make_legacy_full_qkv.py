# Run with so3krates at commit d45589d: python tests/data/make_legacy_full_qkv.py tests/data
"""Written with so3krates at commit d45589d (before per-head projections): a tiny full-matrix
checkpoint with both LayerNorms and the residual MLP, and its energies/forces on rattled ethanol."""
import json, sys
import numpy as np, torch
from ase.build import molecule
from so3krates.model import So3krates, Potential
from so3krates.model.config import preset
from so3krates.model.checkpoint import save_checkpoint
out = sys.argv[1]
torch.manual_seed(7)
cfg = preset("tiny", elements=[1, 6, 8], num_layers=2, layer_norm=True, residual_mlp=True, dtype="float64")
net = So3krates(cfg)
with torch.no_grad():
    for name, p in net.named_parameters():
        if "norm" in name:
            p.add_(0.3 * torch.randn_like(p))
    net.energy_shift.copy_(torch.tensor([-13.6, -1029.0, -2041.0]))
    net.energy_scale.fill_(0.5)
save_checkpoint(f"{out}/legacy_full_qkv.ckpt", net, {"note": "written by so3krates d45589d (full q/k/v, LayerNorm eps 1e-5)"})
atoms = molecule("CH3CH2OH"); atoms.rattle(0.1, seed=2)
pot = Potential(net).eval()
res = pot.compute(torch.tensor(atoms.positions), torch.tensor(atoms.numbers))
json.dump({"commit": "d45589d", "numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
           "energies": res["energies"].detach().tolist(), "forces": res["forces"].detach().tolist()},
          open(f"{out}/legacy_full_qkv.json", "w"), indent=1)
print(cfg.to_dict(), float(res["energy"]))
