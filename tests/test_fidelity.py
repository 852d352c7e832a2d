"""The network as the authors' reference code has it: per-head projections, the reference layer's
options and order (the so3lr preset), ZBL repulsion, and old checkpoints that keep their energies.

Reference files named below are those of So3krates-torch 0.2.1 (github.com/TCPUniLU/So3krates-torch,
src/so3krates_torch/...) and SO3LR (github.com/general-molecular-simulations/so3lr)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule
from torch.nn import functional as fn

from so3krates.export import export_model, load_exported
from so3krates.model import Potential, So3krates
from so3krates.model.checkpoint import network_from_checkpoint
from so3krates.model.config import So3kratesConfig, preset
from so3krates.model.layers import EdgeGeometry, ResidualMLP
from so3krates.model.potential import half_pairs
from so3krates.structures import water_box

from conftest import ethanol, random_network

DATA = Path(__file__).parent / "data"


def compute(pot, atoms, **kw):
    out = pot.compute(torch.tensor(atoms.positions, dtype=torch.float64), torch.tensor(atoms.numbers), **kw)
    return {k: v.detach().double().numpy() for k, v in out.items()}


def rattled_ethanol():
    return ethanol(rattle=0.05)


# --- per-head projections ------------------------------------------------------------------------

def test_per_head_equals_full_matrices_with_block_structure():
    torch.manual_seed(0)
    cfg = preset("small", elements=[1, 6, 8], dtype="float64", qk_non_linearity="silu",
                 layer_normalization_1=True, layer_normalization_2=True, residual_mlp_1=True, residual_mlp_2=True)
    assert cfg.qkv_projections == "per_head" and cfg.zbl_repulsion
    per_head = So3krates(cfg)
    with torch.no_grad():
        per_head.energy_scale.fill_(0.5)
    full = So3krates(cfg.replace(qkv_projections="full"))
    state = {}
    for key, value in per_head.state_dict().items():
        if key.endswith(("query.weight", "key.weight", "value.weight")):
            assert value.dim() == 3 and value.shape[1] == value.shape[2]        # (blocks, w, w)
            # y_b = x_b W_b  <=>  y = x W_full^T with W_full^T = blockdiag(W_b)
            value = torch.block_diag(*value.unbind(0)).t()
            assert value.shape == (cfg.features, cfg.features)
        state[key] = value
    full.load_state_dict(state)
    for atoms in (rattled_ethanol(), water_box(16, seed=2)):
        kw = {"cell": torch.tensor(atoms.cell.array), "pbc": torch.tensor(atoms.pbc)} if atoms.pbc.all() else {}
        a, b = compute(Potential(per_head), atoms, **kw), compute(Potential(full), atoms, **kw)
        np.testing.assert_allclose(a["energies"], b["energies"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(a["forces"], b["forces"], rtol=0, atol=1e-12)
    n_full = sum(p.numel() for p in full.parameters())
    n_head = sum(p.numel() for p in per_head.parameters())
    # 5 projections per layer, each F^2 (full) against F^2 / blocks (per head)
    f, h, nd = cfg.features, cfg.num_heads, len(cfg.degrees)
    assert n_full - n_head == cfg.num_layers * (3 * (f * f - f * f // h) + 2 * (f * f - f * f // nd))


def test_old_checkpoint_keeps_its_energies(tmp_path):
    """legacy_full_qkv.ckpt and .json were written by so3krates d45589d (tests/data/make_legacy_full_qkv.py):
    full q/k/v, its one `layer_norm` switch, `residual_mlp` after the exchange block, eps 1e-5."""
    payload = torch.load(DATA / "legacy_full_qkv.ckpt", weights_only=True)
    assert "qkv_projections" not in payload["config"] and payload["config"]["layer_norm"]
    cfg = So3kratesConfig.from_dict(payload["config"])
    assert (cfg.qkv_projections, cfg.layer_norm_eps, cfg.zbl_repulsion) == ("full", 1e-5, False)
    assert cfg.layer_normalization_1 and cfg.layer_normalization_2 and cfg.residual_mlp_2 and not cfg.residual_mlp_1
    ref = json.loads((DATA / "legacy_full_qkv.json").read_text())
    network, _ = network_from_checkpoint(DATA / "legacy_full_qkv.ckpt")
    pos = torch.tensor(ref["positions"], dtype=torch.float64)
    numbers = torch.tensor(ref["numbers"])
    out = Potential(network).compute(pos, numbers)
    np.testing.assert_allclose(out["energies"].detach().numpy(), ref["energies"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["forces"].detach().numpy(), ref["forces"], rtol=0, atol=1e-12)
    # exported (exact filters), the config in the metadata now spells the options out
    meta = export_model(DATA / "legacy_full_qkv.ckpt", tmp_path / "legacy.pt", radial_table=0)
    assert meta["config"]["qkv_projections"] == "full" and meta["config"]["layer_norm_eps"] == 1e-5
    module, _ = load_exported(tmp_path / "legacy.pt")
    out = module.compute(pos, numbers)
    np.testing.assert_allclose(out["energies"].detach().numpy(), ref["energies"], rtol=0, atol=1e-12)
    # and a config saved with today's keys loads as it is
    assert So3kratesConfig.from_dict(cfg.to_dict()) == cfg


# --- the so3lr preset against the reference layer stack -------------------------------------------

def so3lr_network(seed=0):
    torch.manual_seed(seed)
    return So3krates(preset("so3lr", elements=[1, 6, 7, 8], dtype="float64"))


def test_so3lr_preset_settings_and_parameter_shapes():
    net = so3lr_network()
    cfg = net.config
    # so3lr/params/hyperparameters.json, "model" and "data"
    assert (cfg.features, cfg.degrees, cfg.num_layers, cfg.num_heads, cfg.num_rbf, cfg.cutoff) == \
        (128, [1, 2, 3, 4], 3, 4, 32, 4.5)
    assert (cfg.radial_basis, cfg.cutoff_function, cfg.message_normalization) == ("bernstein", "physnet", "avg_neighbors")
    assert cfg.avg_num_neighbors == 13.168995780096482
    assert (cfg.layer_normalization_1, cfg.layer_normalization_2, cfg.residual_mlp_1, cfg.residual_mlp_2) == \
        (True, True, True, False)
    assert cfg.qk_non_linearity == "identity" and cfg.energy_head_width == 128 and cfg.zbl_repulsion
    assert cfg.energy_learn_atomic_type_scales and cfg.energy_learn_atomic_type_shifts
    f, h, nd = 128, 4, 4
    for layer in net.layers:
        # blocks/euclidean_transformer.py, EuclideanAttentionBlock.__init__: W_q_inv, W_k_inv, W_v_inv
        # (heads, F/heads, F/heads); W_q_ev, W_k_ev (len(degrees), F/n_D, F/n_D); no value for ev
        for proj in (layer.invariant_attention.query, layer.invariant_attention.key, layer.invariant_attention.value):
            assert proj.weight.shape == (h, f // h, f // h)
        for proj in (layer.euclidean_attention.query, layer.euclidean_attention.key):
            assert proj.weight.shape == (nd, f // nd, f // nd)
        # FilterNet.__init__: mlp_rbf Linear(K, F), Linear(F, F); mlp_ev Linear(n_D, F/4), Linear(F/4, F)
        for fnet in (layer.filter_inv, layer.filter_ev):
            assert fnet.radial_in.weight.shape == (f, 32) and fnet.radial_out.weight.shape == (f, f)
            assert fnet.spherical_in.weight.shape == (f // 4, nd) and fnet.spherical_out.weight.shape == (f, f // 4)
        # InteractionBlock.__init__: Linear(F + n_D, F + n_D, bias=True)
        assert layer.exchange.mix.weight.shape == (f + nd, f + nd) and layer.exchange.mix.bias is not None
        # EuclideanTransformer.__init__: layer_norm_inv_1/2 LayerNorm(F, eps=1e-6); mlp_1, no mlp_2
        for norm in (layer.layer_norm_1, layer.layer_norm_2):
            assert isinstance(norm, torch.nn.LayerNorm) and norm.eps == 1e-6 and norm.normalized_shape == (f,)
        assert isinstance(layer.mlp_1, ResidualMLP) and isinstance(layer.mlp_2, torch.nn.Identity)
    # blocks/output_block.py, AtomicEnergyOutputHead: Linear(F, 128), silu, Linear(128, 1); learnable
    # energy_shifts and energy_scales (energy_learn_atomic_type_shifts/scales)
    assert net.energy_hidden.weight.shape == (128, f) and net.energy_out.weight.shape == (1, 128)
    assert net.energy_shift.requires_grad and net.energy_scale.requires_grad
    assert net.energy_shift.dtype == net.energy_scale.dtype == torch.float64
    # blocks/physical_potentials.py, ZBLRepulsion: a1..a4, c1..c4, p, d
    assert net.zbl.a_raw.numel() == 4 and net.zbl.c_raw.numel() == 4 and net.zbl.switch_radius == 1.5


def l0_contraction(v, degrees):
    """blocks/so3_conv_invariants.py, L0Contraction: per degree sum_m v_lm^2 / sqrt(2l + 1)."""
    out, start = [], 0
    for l in degrees:
        out.append((v[:, start:start + 2 * l + 1] ** 2).sum(-1) / math.sqrt(2 * l + 1))
        start += 2 * l + 1
    return torch.stack(out, -1)


def reference_layer(layer, x, ev, rbf, sh, phi, senders, receivers, degrees, nu):
    """One layer in the order of blocks/euclidean_transformer.py, written out from it with this
    layer's weights: EuclideanAttentionBlock.forward (+ FilterNet.forward, _get_qkv), then
    EuclideanTransformer.forward (residual, layer_norm_inv_1, mlp_1, InteractionBlock.forward,
    residual, [mlp_2], layer_norm_inv_2)."""
    n, f = x.shape
    ev_inv = l0_contraction(ev[senders] - ev[receivers], degrees)

    def filter_net(net):   # FilterNet.forward: mlp_rbf(rbf) + mlp_ev(ev invariants)
        return (net.radial_out(fn.silu(net.radial_in(rbf)))
                + net.spherical_out(fn.silu(net.spherical_in(ev_inv))))

    w_inv, w_ev = filter_net(layer.filter_inv), filter_net(layer.filter_ev)
    inv_heads, ev_heads = layer.invariant_attention.num_heads, len(degrees)
    x_inv, x_ev = x.view(n, inv_heads, -1), x.view(n, ev_heads, -1)
    att = layer.invariant_attention
    q_inv = torch.einsum("nhd,hde->nhe", x_inv, att.query.weight)[receivers]
    k_inv = torch.einsum("nhd,hde->nhe", x_inv, att.key.weight)[senders]
    v_inv = torch.einsum("nhd,hde->nhe", x_inv, att.value.weight)[senders]
    eatt = layer.euclidean_attention
    q_ev = torch.einsum("nhd,hde->nhe", x_ev, eatt.query.weight)[receivers]
    k_ev = torch.einsum("nhd,hde->nhe", x_ev, eatt.key.weight)[senders]
    alpha_inv = (q_inv * k_inv * w_inv.reshape(-1, inv_heads, f // inv_heads)).sum(-1, keepdim=True) / nu
    alpha_ev = (q_ev * k_ev * w_ev.reshape(-1, ev_heads, f // ev_heads)).sum(-1) / nu
    d_inv = torch.zeros(n, inv_heads, f // inv_heads, dtype=x.dtype).index_add_(
        0, receivers, phi[:, None, None] * alpha_inv * v_inv).view(n, f)
    repeats = torch.tensor([2 * l + 1 for l in degrees])
    alpha_ev = torch.repeat_interleave(alpha_ev, repeats, dim=-1)
    d_ev = torch.zeros_like(ev).index_add_(0, receivers, phi[:, None] * alpha_ev * sh)
    x, ev = x + d_inv, ev + d_ev
    x = layer.layer_norm_1(x)
    x = x + layer.mlp_1.lin2(fn.silu(layer.mlp_1.lin1(fn.silu(x))))          # mlp_1: act, Linear, act, Linear
    y = layer.exchange.mix(torch.cat([x, l0_contraction(ev, degrees)], -1))  # InteractionBlock.forward
    dx, b = y[:, :f], y[:, f:]
    x, ev = x + dx, ev + torch.repeat_interleave(b, repeats, dim=-1) * ev
    return layer.layer_norm_2(x), ev


def test_so3lr_layer_order_of_operations_matches_reference():
    net = so3lr_network(seed=1)
    atoms = rattled_ethanol()
    pos = torch.tensor(atoms.positions)
    pot = Potential(net)
    i, j, s = pot.neighbors(pos)
    vectors = pos[j] - pos[i]
    r = vectors.norm(dim=-1)
    geometry = net.edge_geometry(vectors)
    torch.manual_seed(3)
    x = torch.randn(len(atoms), 128, dtype=torch.float64)
    ev = 0.3 * torch.randn(len(atoms), net.num_sh, dtype=torch.float64)
    degrees = net.config.degrees
    with torch.no_grad():
        for layer in net.layers:
            got = layer(x, ev, geometry, i, j, mirrored=False, ev_is_zero=False)
            want = reference_layer(layer, x, ev, geometry.rbf, geometry.sh, geometry.phi, j, i, degrees,
                                   net.config.avg_num_neighbors)
            torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-11)
            torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-11)
            # the half list (each pair once, messages both ways) is the same layer
            hi, hj, _ = half_pairs(i, j, s)
            keep = i < j
            half = EdgeGeometry(geometry.r[keep], geometry.rbf[keep], geometry.rows, geometry.weights, geometry.phi[keep],
                                geometry.sh[keep])
            mirrored = layer(x, ev, half, hi, hj, mirrored=True, ev_is_zero=False)
            torch.testing.assert_close(mirrored[0], want[0], rtol=0, atol=1e-11)
            torch.testing.assert_close(mirrored[1], want[1], rtol=0, atol=1e-11)
            x, ev = got
        # the network: embedding (Eq. 10, ev = 0) -> layers -> AtomicEnergyOutputHead.forward
        # (e * energy_scales[Z] + energy_shifts[Z]) + ZBL atomic energies (SO3LR.forward)
        species = pot.species_index(torch.tensor(atoms.numbers))
        x, ev = net.embedding(species), torch.zeros(len(atoms), net.num_sh, dtype=torch.float64)
        for t, layer in enumerate(net.layers):
            x, ev = reference_layer(layer, x, ev, geometry.rbf, geometry.sh, geometry.phi, j, i, degrees,
                                    net.config.avg_num_neighbors)
        e = net.energy_out(fn.silu(net.energy_hidden(x))).squeeze(-1)
        e = e * net.energy_scale[species] + net.energy_shift[species]
        e = e + net.zbl(r, geometry.phi, species, i, j, mirrored=False)
        torch.testing.assert_close(net(vectors, i, j, species), e, rtol=0, atol=1e-10)


# --- ZBL -----------------------------------------------------------------------------------------

KE = 14.399645351950548     # e^2 / (4 pi eps0), eV A
BOHR = 0.5291772105638411   # A


def zbl_formula(r, zi, zj, cutoff, r_switch=1.5):
    """The universal ZBL pair energy with SO3LR's switch and the PhysNet cutoff, written out."""
    c = np.array([0.1818, 0.5099, 0.2802, 0.02817])
    c = c / c.sum()
    a = np.array([3.2, 0.9423, 0.4028, 0.2016])
    screening_length = 0.8854 * BOHR / (zi ** 0.23 + zj ** 0.23)
    phi_screen = np.sum(c * np.exp(-a * r / screening_length))
    u = r / cutoff
    f_cut = 1 - 6 * u ** 5 + 15 * u ** 4 - 10 * u ** 3 if r < cutoff else 0.0

    def s(t):
        return math.exp(-1.0 / t) if t > 0 else 0.0

    x = r / r_switch
    w = s(1 - x) / (s(1 - x) + s(x))
    return w * f_cut * KE * zi * zj / r * phi_screen


def zero_network():
    net = random_network("tiny", energy_shift=None, zbl_repulsion=True)
    with torch.no_grad():
        net.energy_out.weight.zero_()
        net.energy_out.bias.zero_()
    return net


def dimer(zi, zj, r):
    from ase import Atoms
    return Atoms(numbers=[zi, zj], positions=[[0.1, -0.2, 0.3], [0.1 + r * 0.6, -0.2 + r * 0.8, 0.3]])


def test_zbl_energy_is_the_formula_for_a_model_whose_network_part_is_zero(tmp_path):
    net = zero_network()
    export_model(net, tmp_path / "zbl.pt", radial_table=0)
    exported, _ = load_exported(tmp_path / "zbl.pt")
    pot = Potential(net)
    for zi, zj in ((1, 1), (6, 8), (8, 8)):
        for r in np.linspace(0.1, 2.0, 12):
            want = zbl_formula(r, zi, zj, net.config.cutoff)
            for model in (pot, exported):
                got = compute(model, dimer(zi, zj, r))
                assert abs(got["energy"][0] - want) <= 1e-12 * max(1.0, abs(want)), (zi, zj, r)
                np.testing.assert_allclose(got["energies"], [want / 2, want / 2], rtol=1e-12, atol=1e-15)
    assert zbl_formula(2.0, 8, 8, 4.0) == 0.0 and zbl_formula(0.1, 1, 1, 4.0) > 50.0


def test_zbl_smooth_at_switching_radius_and_cutoff_and_forces_are_minus_gradient():
    torch.manual_seed(2)
    net = So3krates(preset("tiny", elements=[1, 6, 8], dtype="float64"))
    pot = Potential(net)
    for r0 in (net.config.zbl_switch_radius, net.config.cutoff):
        below, above = compute(pot, dimer(8, 1, r0 - 1e-9)), compute(pot, dimer(8, 1, r0 + 1e-9))
        assert abs(below["energy"][0] - above["energy"][0]) < 1e-7
        np.testing.assert_allclose(below["forces"], above["forces"], rtol=0, atol=1e-6)
    atoms = molecule("H2O")
    atoms.positions *= 0.8      # O-H 0.77 A, H-H 1.2 A: every pair inside the ZBL switch
    atoms.rattle(0.02, seed=4)
    forces = compute(pot, atoms)["forces"]
    assert np.abs(forces).max() > 1.0
    h = 1e-5
    for a in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, k] += h
            minus.positions[a, k] -= h
            fd = -(compute(pot, plus)["energy"][0] - compute(pot, minus)["energy"][0]) / (2 * h)
            assert abs(fd - forces[a, k]) < 1e-6 * max(1.0, abs(forces[a, k])), (a, k)


def test_zbl_per_atom_energies_from_pairs_directed_edges_and_owned_receivers():
    net = zero_network()
    atoms = molecule("CH3CH2OH")
    atoms.positions *= 0.7
    pos = torch.tensor(atoms.positions)
    species = Potential(net).species_index(torch.tensor(atoms.numbers))
    i, j, s = Potential(net).neighbors(pos)
    r = (pos[j] - pos[i]).norm(dim=-1)
    phi = net.cutoff_function(r)
    with torch.no_grad():
        directed = net.zbl(r, phi, species, i, j, mirrored=False)
        keep = i < j
        pairs = net.zbl(r[keep], phi[keep], species, i[keep], j[keep], mirrored=True)
        torch.testing.assert_close(directed, pairs, rtol=1e-14, atol=0)
        # a process that owns atoms 0..3 evaluates only the edges into them: same energies there
        owned = i < 4
        part = net.zbl(r[owned], phi[owned], species, i[owned], j[owned], mirrored=False)
        torch.testing.assert_close(part[:4], directed[:4], rtol=1e-14, atol=0)
        assert float(part[4:].abs().sum()) == 0.0
    # by hand: atom k gets half of each of its pairs
    z = atoms.numbers
    d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
    want = [0.5 * sum(zbl_formula(d[a, b], z[a], z[b], net.config.cutoff) for b in range(len(atoms)) if b != a)
            for a in range(len(atoms))]
    np.testing.assert_allclose(directed.numpy(), want, rtol=1e-12, atol=1e-14)


def test_zbl_coefficients_are_learnable_and_can_be_switched_off():
    net = zero_network()
    assert {n for n, p in net.named_parameters() if n.startswith("zbl.")} == {"zbl.a_raw", "zbl.c_raw", "zbl.p_raw", "zbl.d_raw"}
    atoms = dimer(8, 8, 0.8)
    e = Potential(net).compute(torch.tensor(atoms.positions), torch.tensor(atoms.numbers),
                               compute_forces=False)["energy"].sum()
    grads = torch.autograd.grad(e, [net.zbl.a_raw, net.zbl.c_raw, net.zbl.p_raw, net.zbl.d_raw])
    assert all(float(g.abs().sum()) > 0 for g in grads)
    torch.manual_seed(0)
    off = So3krates(preset("tiny", elements=[1, 6, 8], dtype="float64", zbl_repulsion=False))
    assert off.zbl is None and not any(n.startswith("zbl") for n in off.state_dict())
    with pytest.raises(ValueError, match="zbl_switch_radius"):
        preset("tiny", zbl_switch_radius=0.0)
