"""Convert SO3LR's published parameters (So3krates-torch 0.2.1, so3krates_torch/pretrained/so3lr/
so3lr.model, MIT licence) into the parameter file this package ships:
so3krates/pretrained/so3lr/so3lr.npz (our parameter names, float32 as published) + so3lr.json
(the network config and where the parameters came from).

Run once, in the peers' environment (benchmarks/peers/setup.sh makes it), from the repository root:

    benchmarks/peers/.venv/bin/python benchmarks/so3lr/convert.py

It imports only So3krates-torch and torch (not this package). The mapping below is the whole
correspondence between the two implementations; `tests/test_so3lr.py` checks the result against
energies and forces of So3krates-torch's SO3LRCalculator (benchmarks/so3lr/reference_values.py).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import json
import sys
from pathlib import Path

import numpy as np
import torch

ELEMENTS = [1, 6, 7, 8, 9, 15, 16, 17]   # H C N O F P S Cl: the elements SO3LR was trained on
OUT = Path(__file__).resolve().parents[2] / "so3krates" / "pretrained" / "so3lr"


def main() -> int:
    with importlib.resources.as_file(importlib.resources.files("so3krates_torch.pretrained.so3lr") / "so3lr.model") as path:
        source = Path(path)
        sha = hashlib.sha256(source.read_bytes()).hexdigest()
        model = torch.load(source, map_location="cpu", weights_only=False)
    ref = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    by_z = np.array(ELEMENTS) - 1           # one-hot columns / rows indexed by Z - 1
    z = np.array(ELEMENTS)                  # embeddings indexed by Z itself
    out = {}

    def put(name, value):
        out[name] = np.ascontiguousarray(np.asarray(value, dtype=np.float32))

    put("embedding.weight", ref["inv_feature_embedding.embedding.weight"].T[by_z])
    put("energy_scale", ref["atomic_energy_output_block.energy_scales.weight"][0, by_z])
    put("energy_shift", ref["atomic_energy_output_block.energy_shifts"][by_z])
    put("energy_hidden.weight", ref["atomic_energy_output_block.layers.0.weight"])
    put("energy_hidden.bias", ref["atomic_energy_output_block.layers.0.bias"])
    put("energy_out.weight", ref["atomic_energy_output_block.final_layer.weight"])
    put("energy_out.bias", ref["atomic_energy_output_block.final_layer.bias"])
    put("radial_basis.log_binom", ref["radial_embedding.radial_basis_fn.b"])
    for t in range(model.num_layers):
        src, dst = f"euclidean_transformers.{t}.", f"layers.{t}."
        for kind in ("inv", "ev"):
            f = f"{src}filter_net_{kind}."
            for a, b in (("mlp_rbf.0", "radial_in"), ("mlp_rbf.mlp_rbf_layer_1.0", "radial_out"),
                         ("mlp_ev.0", "spherical_in"), ("mlp_ev.mlp_ev_layer_1.0", "spherical_out")):
                for p in ("weight", "bias"):
                    put(f"{dst}filter_{kind}.{b}.{p}", ref[f"{f}{a}.{p}"])
        att = f"{src}euclidean_attention_block."
        for a, b in (("W_q_inv", "invariant_attention.query"), ("W_k_inv", "invariant_attention.key"),
                     ("W_v_inv", "invariant_attention.value"), ("W_q_ev", "euclidean_attention.query"),
                     ("W_k_ev", "euclidean_attention.key")):
            put(f"{dst}{b}.weight", ref[att + a])
        for p in ("weight", "bias"):
            put(f"{dst}exchange.mix.{p}", ref[f"{src}interaction_block.linear_layer.{p}"])
            put(f"{dst}layer_norm_1.{p}", ref[f"{src}layer_norm_inv_1.{p}"])
            put(f"{dst}layer_norm_2.{p}", ref[f"{src}layer_norm_inv_2.{p}"])
            put(f"{dst}mlp_1.lin1.{p}", ref[f"{src}mlp_1.1.{p}"])
            put(f"{dst}mlp_1.lin2.{p}", ref[f"{src}mlp_1.3.{p}"])
    zbl = "zbl_repulsion."
    put("zbl.a_raw", [ref[f"{zbl}a{k}_raw"][0] for k in range(1, 5)])
    put("zbl.c_raw", [ref[f"{zbl}c{k}_raw"][0] for k in range(1, 5)])
    put("zbl.p_raw", ref[f"{zbl}p_raw"][0])
    put("zbl.d_raw", ref[f"{zbl}d_raw"][0])
    for name in ("charge", "spin"):
        e = f"{name}_embedding."
        put(f"{e}query.weight", ref[e + "Wq.weight"].T[by_z])
        put(f"{e}key", ref[e + "Wk"])
        put(f"{e}value", ref[e + "Wv"])
        put(f"{e}mlp_1.weight", ref[e + "mlp.1.weight"])
        put(f"{e}mlp_2.weight", ref[e + "mlp.3.weight"])
    q = "partial_charges_output_block."
    for a, b in (("transform_inv_features.0", "hidden"), ("transform_inv_features.2", "out")):
        for p in ("weight", "bias"):
            put(f"charge_head.{b}.{p}", ref[f"{q}{a}.{p}"])
    put("charge_head.element_bias.weight", ref[q + "atomic_embedding.weight"][z])
    h = "hirshfeld_output_block."
    for a, b in (("transform_features.0", "hidden"), ("transform_features.2", "out")):
        for p in ("weight", "bias"):
            put(f"hirshfeld_head.{b}.{p}", ref[f"{h}{a}.{p}"])
    put("hirshfeld_head.element_query.weight", ref[h + "q_embedding.weight"][z])
    put("hirshfeld_head.element_shift.weight", ref[h + "v_shift_embedding.weight"][z])

    # The reference layers share one filter net between the layer and its attention block.
    for t in range(model.num_layers):
        for kind in ("inv", "ev"):
            a = model.euclidean_transformers[t].filter_net_inv if kind == "inv" else model.euclidean_transformers[t].filter_net_ev
            b = getattr(model.euclidean_transformers[t].euclidean_attention_block, f"filter_net_{kind}")
            assert a is b, "the reference's filter nets are no longer shared: update the mapping"

    config = dict(
        elements=ELEMENTS, features=model.num_features, degrees=list(model.degrees), num_layers=model.num_layers,
        num_heads=model.num_heads, cutoff=float(model.r_max), num_rbf=model.num_radial_basis_fn,
        radial_basis="bernstein", bernstein_gamma=float(ref["radial_embedding.radial_basis_fn.gamma"]),
        cutoff_function="physnet", message_normalization="avg_neighbors",
        avg_num_neighbors=float(model.avg_num_neighbors), qkv_projections="per_head",
        qk_non_linearity=model.qk_non_linearity, layer_normalization_1=model.layer_normalization_1,
        layer_normalization_2=model.layer_normalization_2, residual_mlp_1=model.residual_mlp_1,
        residual_mlp_2=model.residual_mlp_2, layer_norm_eps=1e-6, energy_head_width=model.energy_regression_dim,
        energy_learn_atomic_type_scales=True, energy_learn_atomic_type_shifts=True,
        zbl_repulsion=bool(model.zbl_repulsion_bool), zbl_switch_radius=1.5,
        charge_embedding=bool(model.use_charge_embed), spin_embedding=bool(model.use_spin_embed),
        electrostatics=bool(model.electrostatic_energy_bool), dispersion=bool(model.dispersion_energy_bool),
        # SO3LRCalculator's defaults: r_max_lr = 12 A, dispersion damping 2 A.
        long_range_cutoff=12.0, electrostatics_sigma=float(model.electrostatic_energy_scale),
        dispersion_damping=2.0, dispersion_scale=float(model.dispersion_energy_scale))
    assert model.cutoff_fn_name == "phys" and model.radial_basis_fn == "bernstein"
    assert model.message_normalization == "avg_num_neighbors" and model.final_mlp_layers == 2
    assert model.energy_activation_fn_name == "silu" and model.activation_fn_name == "silu"
    assert model.neighborlist_format_lr == "sparse" and not getattr(model, "use_pme", False)
    version = importlib.metadata.version("so3krates-torch")
    meta = {
        "name": "SO3LR",
        "config": config,
        "source": f"so3krates-torch {version} (PyPI), so3krates_torch/pretrained/so3lr/so3lr.model",
        "source_sha256": sha,
        "licence": "MIT (so3krates/pretrained/so3lr/LICENSE)",
        "citation": "Kabylda, Frank et al., J. Am. Chem. Soc. 2025, doi:10.1021/jacs.5c09558 (CITATION in so3krates/pretrained/so3lr)",
        "converted_by": "benchmarks/so3lr/convert.py",
    }
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "so3lr.npz", **out)
    (OUT / "so3lr.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {OUT / 'so3lr.npz'} ({len(out)} arrays, {sum(v.size for v in out.values())} parameters) "
          f"and so3lr.json from {source} (sha256 {sha[:12]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
