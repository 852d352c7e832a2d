"""The fused edge operator (so3krates::edge_attention, ops/edge_attention.cpp) against the plain
PyTorch path of the attention blocks: the same numbers (1e-12 relative in float64), its gradients,
the stages of the LAMMPS halo exchange, the export flag, loading in the three engines, and the
message when the operator is missing."""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms

from conftest import ethanol, random_network, random_water, triclinic
from so3krates import engines
from so3krates.cli import main as cli
from so3krates.export import export_model, load_model, read_metadata
from so3krates.fused import LIBRARY_ENV, load
from so3krates.model import Potential
from so3krates.model.checkpoint import save_checkpoint
from so3krates.model.layers import set_fused
from so3krates.model.potential import half_pairs



@pytest.fixture(autouse=True)
def operator_loaded():
    """`pip install .` builds libso3krates_ops.so; every fused export (the default) needs it. Loaded
    here so that each test also runs alone (the operator is otherwise loaded with a model)."""
    assert load(), "libso3krates_ops.so is not built or does not load"


def test_the_operator_is_built_and_loads():
    assert load()

TOLERANCE = 1e-12


def pair(tabulated: bool, preset: str = "small", **options):
    network = random_network(preset, "float64", **options)
    if tabulated:
        network.tabulate_radial_filters(256)
    plain = Potential(network).eval()
    fused = copy.deepcopy(plain)
    assert set_fused(fused, True) == 2 * len(network.layers)
    return plain, fused


def inputs(atoms: Atoms):
    periodic = bool(atoms.pbc.any())
    return (torch.tensor(atoms.positions), torch.tensor(atoms.numbers),
            torch.tensor(atoms.cell.array) if periodic else None, torch.tensor(atoms.pbc) if periodic else None)


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    scale = float(a.abs().max()) if a.numel() else 0.0
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert err <= TOLERANCE * max(scale, 1e-300), f"{what}: {err:.3e} against {scale:.3e}"


STRUCTURES = {"molecule": lambda: ethanol(), "periodic": lambda: random_water(12),
              "triclinic": lambda: triclinic(random_water(12))}


@pytest.mark.parametrize("tabulated", [False, True], ids=["exact", "tabulated"])
@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_fused_equals_plain(structure, tabulated):
    plain, fused = pair(tabulated, zbl_repulsion=True)
    args = inputs(STRUCTURES[structure]())
    a = plain.compute(*args, compute_virial=True)
    b = fused.compute(*args, compute_virial=True)
    assert a["forces"].abs().max() > 0
    for key in ("energy", "energies", "forces", "virial"):
        assert_close(a[key].detach(), b[key].detach(), key)


def test_fused_full_list_and_qk_silu():
    """The directed (not mirrored) edge pass and silu on queries and keys."""
    plain, fused = pair(False, qk_non_linearity="silu", qkv_projections="full")
    pos, z, cell, pbc = inputs(random_water(8, box=7.0))
    idx_i, idx_j, shifts = plain.neighbors(pos, cell, pbc)
    species = plain.species_index(z)
    for module in (plain, fused):
        module.vectors = module.edge_vectors(pos, idx_i, idx_j, shifts).requires_grad_(True)
        module.energies = module.network(module.vectors, idx_i, idx_j, species, half_list=False)
        module.grad, = torch.autograd.grad(module.energies.sum(), module.vectors)
    assert_close(plain.energies.detach(), fused.energies.detach(), "energies")
    assert_close(plain.grad, fused.grad, "dE/dr_ij")


def test_fused_stages_match_plain():
    """The stages of the LAMMPS halo exchange: layer t updates only the first num_receivers atoms
    (the rest are ghosts whose state is read); mirrored messages into ghosts are dropped."""
    plain, fused = pair(True)
    pos, z, cell, pbc = inputs(random_water(12))
    idx_i, idx_j, shifts = half_pairs(*plain.neighbors(pos, cell, pbc))
    owned = 20
    keep = idx_i < owned
    idx_i, idx_j, shifts = idx_i[keep], idx_j[keep], shifts[keep]
    species = plain.species_index(z)
    results = []
    for module in (plain, fused):
        vectors = module.edge_vectors(pos, idx_i, idx_j, shifts).requires_grad_(True)
        geometry = module.stage_geometry(vectors)
        x, ev = module.stage_embed(species)
        for t in range(module.num_layers):
            x, ev = module.stage_layer(t, x, ev, geometry, idx_i, idx_j, owned)
            # the ghosts' state as a neighbouring rank would send it: here, from the full evaluation
            x = torch.cat([x, x.detach()[:1].expand(len(z) - owned, -1)])
            ev = torch.cat([ev, ev.detach()[:1].expand(len(z) - owned, -1)])
        energies = module.stage_readout(x[:owned], species, geometry, idx_i, idx_j)
        grad, = torch.autograd.grad(energies.sum(), vectors)
        results.append((energies.detach(), grad))
    assert_close(results[0][0], results[1][0], "stage energies")
    assert_close(results[0][1], results[1][1], "stage dE/dr_ij")


def test_fused_edge_free_structure():
    """Two atoms beyond the cutoff: no edges, the same energies, zero forces."""
    plain, fused = pair(False)
    atoms = Atoms("OH", positions=[[0, 0, 0], [10.0, 0, 0]])
    a, b = plain.compute(*inputs(atoms)), fused.compute(*inputs(atoms))
    assert_close(a["energies"].detach(), b["energies"].detach(), "energies")
    assert float(b["forces"].abs().max()) == 0.0


def test_fused_forces_and_virial_match_finite_differences():
    """Forces = -dE/dR and virial = -dE/d(strain) of the fused model, by central differences."""
    _, fused = pair(True)
    atoms = triclinic(random_water(6, box=6.0))
    pos, z, cell, pbc = inputs(atoms)
    out = fused.compute(pos, z, cell, pbc, compute_virial=True)
    h = 1e-5
    energy = lambda p, c: float(fused.compute(p, z, c, pbc, compute_forces=False)["energy"].detach())
    for atom, axis in [(0, 0), (4, 2), (11, 1)]:
        step = torch.zeros_like(pos)
        step[atom, axis] = h
        numeric = -(energy(pos + step, cell) - energy(pos - step, cell)) / (2 * h)
        assert abs(numeric - float(out["forces"][atom, axis])) < 1e-6 * max(1.0, abs(numeric))
    for a, b in [(0, 0), (1, 2), (2, 1)]:
        strain = torch.zeros(3, 3, dtype=torch.float64)
        strain[a, b] = h
        deformed = [energy(pos @ (torch.eye(3, dtype=torch.float64) + s), cell @ (torch.eye(3, dtype=torch.float64) + s))
                    for s in (strain, -strain)]
        numeric = -(deformed[0] - deformed[1]) / (2 * h)
        virial = out["virial"][0].detach()
        assert abs(numeric - float(0.5 * (virial[a, b] + virial[b, a]))) < 1e-6 * max(1.0, abs(numeric))


@pytest.mark.parametrize("values_per_edge", [False, True], ids=["atom-values", "edge-values"])
@pytest.mark.parametrize("mirrored", [False, True], ids=["directed", "mirrored"])
def test_operator_gradcheck(values_per_edge, mirrored):
    """The hand-written backward against finite differences of the operator, every input."""
    g = torch.Generator().manual_seed(1)
    atoms, edges, features = 5, 9, 8
    segments = [0, 3, 8] if values_per_edge else [0, 4, 8]
    q, k = (torch.randn(atoms, features, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w = torch.randn(edges, features, generator=g, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(edges, generator=g, dtype=torch.float64, requires_grad=True)
    values = torch.randn(edges if values_per_edge else atoms, 8, generator=g, dtype=torch.float64, requires_grad=True)
    parity = torch.tensor([-1.0] * 3 + [1.0] * 5, dtype=torch.float64)
    idx_i = torch.randint(0, atoms, (edges,), generator=g)
    idx_j = torch.randint(0, atoms, (edges,), generator=g)
    op = lambda *t: torch.ops.so3krates.edge_attention(*t[:4], t[4], parity, segments, idx_i, idx_j, atoms,
                                                       values_per_edge, mirrored)
    assert torch.autograd.gradcheck(op, (q, k, w, scale, values))


def halo_problem(values_per_edge, seed=3):
    """A LAMMPS rank's edge pass: receivers [0, R) of N atoms, the first P edges pairs of two
    receivers (both ways), then one-way edges from any sender into a receiver."""
    g = torch.Generator().manual_seed(seed)
    receivers, atoms, pairs, one_way, features = 4, 7, 6, 5, 8
    edges = pairs + one_way
    idx_i = torch.cat([torch.randint(0, receivers, (pairs,), generator=g),
                       torch.randint(0, receivers, (one_way,), generator=g)])
    idx_j = torch.cat([torch.randint(0, receivers, (pairs,), generator=g),
                       torch.randint(0, atoms, (one_way,), generator=g)])
    segments = [0, 3, 8] if values_per_edge else [0, 4, 8]
    tensors = (torch.randn(receivers, features, generator=g, dtype=torch.float64, requires_grad=True),
               torch.randn(atoms, features, generator=g, dtype=torch.float64, requires_grad=True),
               torch.randn(edges, features, generator=g, dtype=torch.float64, requires_grad=True),
               torch.rand(edges, generator=g, dtype=torch.float64, requires_grad=True),
               torch.randn(edges if values_per_edge else atoms, 8, generator=g, dtype=torch.float64,
                           requires_grad=True))
    parity = torch.tensor([-1.0] * 3 + [1.0] * 5, dtype=torch.float64)
    return tensors, parity, segments, idx_i, idx_j, pairs


@pytest.mark.parametrize("values_per_edge", [False, True], ids=["atom-values", "edge-values"])
def test_pairs_operator_gradcheck_and_two_call_equivalent(values_per_edge):
    """edge_attention_pairs (one call per block on a LAMMPS rank: q of the receivers only, pairs both
    ways, then one-way halo edges): its backward against finite differences, and its numbers and
    gradients equal to the two calls of the older edge_attention schema (pairs mirrored + one-way
    edges, q padded to N rows) that the files exported before it make."""
    (q, k, w, scale, values), parity, segments, idx_i, idx_j, pairs = halo_problem(values_per_edge)
    op = lambda *t: torch.ops.so3krates.edge_attention_pairs(*t, parity, segments, idx_i, idx_j,
                                                             values_per_edge, pairs)
    assert torch.autograd.gradcheck(op, (q, k, w, scale, values))

    def two_calls(q, k, w, scale, values):
        n, p = k.shape[0], pairs
        padded = torch.cat([q, q.new_zeros([n - q.shape[0], q.shape[1]])])
        split = (values[:p], values[p:]) if values_per_edge else (values, values)
        both = torch.ops.so3krates.edge_attention(padded, k, w[:p], scale[:p], split[0], parity, segments,
                                                  idx_i[:p], idx_j[:p], n, values_per_edge, True)
        one = torch.ops.so3krates.edge_attention(padded, k, w[p:], scale[p:], split[1], parity, segments,
                                                 idx_i[p:], idx_j[p:], n, values_per_edge, False)
        return (both + one)[:q.shape[0]]

    weights = torch.randn(q.shape[0], 8, dtype=torch.float64)
    inputs = (q, k, w, scale, values)
    out_one, out_two = op(*inputs), two_calls(*inputs)
    assert torch.allclose(out_one, out_two, rtol=1e-13, atol=1e-13)
    for a, b in zip(torch.autograd.grad((out_one * weights).sum(), inputs),
                    torch.autograd.grad((out_two * weights).sum(), inputs)):
        assert torch.allclose(a, b, rtol=1e-13, atol=1e-13)


def test_pairs_operator_refuses_a_pair_whose_receiver_is_not_a_receiver():
    """A pair's second atom receives a message too: it must be one of q's rows."""
    (q, k, w, scale, values), parity, segments, idx_i, idx_j, pairs = halo_problem(False)
    idx_j = idx_j.clone()
    idx_j[0] = k.shape[0] - 1
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.so3krates.edge_attention_pairs(q, k, w, scale, values, parity, segments, idx_i, idx_j, False,
                                                 pairs)


@pytest.mark.parametrize("values_per_edge", [False, True], ids=["atom-values", "edge-values"])
def test_operator_partial_gradients(values_per_edge):
    """Each input's gradient alone (the backward skips the passes nobody needs) equals its gradient
    when all five are asked for."""
    g = torch.Generator().manual_seed(2)
    atoms, edges, features = 6, 11, 8
    segments = [0, 3, 8] if values_per_edge else [0, 4, 8]
    tensors = [torch.randn(atoms, features, generator=g, dtype=torch.float64),
               torch.randn(atoms, features, generator=g, dtype=torch.float64),
               torch.randn(edges, features, generator=g, dtype=torch.float64),
               torch.rand(edges, generator=g, dtype=torch.float64),
               torch.randn(edges if values_per_edge else atoms, 8, generator=g, dtype=torch.float64)]
    parity = torch.tensor([-1.0] * 3 + [1.0] * 5, dtype=torch.float64)
    idx_i = torch.randint(0, atoms, (edges,), generator=g)
    idx_j = torch.randint(0, atoms, (edges,), generator=g)
    weights = torch.randn(atoms, 8, generator=g, dtype=torch.float64)

    def grads(wanted):
        inputs = [t.clone().requires_grad_(n in wanted) for n, t in enumerate(tensors)]
        out = torch.ops.so3krates.edge_attention(*inputs[:5], parity, segments, idx_i, idx_j, atoms,
                                                 values_per_edge, True)
        return torch.autograd.grad((out * weights).sum(), [inputs[n] for n in wanted])

    everything = grads(range(5))
    assert all(float(d.abs().max()) > 0 for d in everything)
    for n in range(5):
        assert torch.equal(grads([n])[0], everything[n]), f"input {n}"


def test_both_instruction_set_variants_equal_plain(monkeypatch):
    """The operator's passes are compiled twice, for any x86-64 (SSE2) and for AVX2, and picked at run
    time; SO3KRATES_OPS_ISA=baseline forces the first. Both give the plain path's numbers, and they
    agree with each other in float32 to round-off."""
    plain, fused = pair(True, zbl_repulsion=True)
    args = inputs(triclinic(random_water(12)))
    reference = plain.compute(*args, compute_virial=True)
    results = {}
    for isa in ("baseline", "native"):
        monkeypatch.setenv("SO3KRATES_OPS_ISA", isa)
        out = fused.compute(*args, compute_virial=True)
        for key in ("energy", "forces", "virial"):
            assert_close(reference[key].detach(), out[key].detach(), f"{key} ({isa})")
        results[isa] = copy.deepcopy(fused).float().compute(*args)["forces"].detach()
    assert torch.allclose(results["baseline"], results["native"], rtol=0, atol=1e-5 * float(results["native"].abs().max()))


def test_hermite_lookup_equals_embedding_bag():
    """so3krates::hermite_lookup (ops/radial_lookup.cpp) against the plain export's embedding_bag
    lookup (model/radial_table.py): values and the weights' gradient, both instruction-set variants;
    the table is a constant (its gradient is refused)."""
    from so3krates.model.radial_table import hermite_weights, lookup
    g = torch.Generator().manual_seed(3)
    table = torch.randn(4 * 63, 16, generator=g, dtype=torch.float64)
    r = 4.5 * torch.rand(40, generator=g, dtype=torch.float64)
    rows, weights = hermite_weights(r, 4.5, 64)
    upstream = torch.randn(40, 16, generator=g, dtype=torch.float64)
    plain_w = weights.clone().requires_grad_(True)
    expected = lookup(table, rows, plain_w)
    expected_grad, = torch.autograd.grad((expected * upstream).sum(), plain_w)
    for isa in ("baseline", "native"):
        os.environ["SO3KRATES_OPS_ISA"] = isa
        try:
            fused_w = weights.clone().requires_grad_(True)
            out = torch.ops.so3krates.hermite_lookup(table, rows, fused_w)
            grad, = torch.autograd.grad((out * upstream).sum(), fused_w)
        finally:
            del os.environ["SO3KRATES_OPS_ISA"]
        assert_close(expected.detach(), out.detach(), f"lookup ({isa})")
        assert_close(expected_grad, grad, f"d weights ({isa})")
    assert torch.autograd.gradcheck(lambda w: torch.ops.so3krates.hermite_lookup(table, rows[:5], w),
                                    (weights[:5].clone().requires_grad_(True),))
    with pytest.raises(RuntimeError, match="the table is a constant"):
        out = torch.ops.so3krates.hermite_lookup(table.clone().requires_grad_(True), rows, weights)
        out.sum().backward()


def test_operator_missing_from_an_old_library(tmp_path):
    """A file that lists an operator the loaded library lacks (a library built before it): one line
    naming the operator and the fix, before torch.jit.load."""
    from so3krates.export.exporter import require_operators
    metadata = {"fused": True, "operators": ["so3krates::edge_attention", "so3krates::no_such_operator"]}
    with pytest.raises(RuntimeError, match="so3krates::no_such_operator.*make install.*--fused 0"):
        require_operators(tmp_path / "model.pt", metadata)


def test_second_derivatives_refused():
    _, fused = pair(False)
    pos, z, _, _ = inputs(ethanol())
    with pytest.raises(RuntimeError, match="no second derivative.*--fused 0"):
        out = fused.evaluate_edges(pos, fused.species_index(z), *fused.neighbors(pos), create_graph=True)
        torch.autograd.grad(out["forces"].sum(), pos, allow_unused=True)


def test_export_flag_and_metadata(tmp_path):
    network = random_network("tiny", "float64")
    fused_path, plain_path = tmp_path / "fused.pt", tmp_path / "plain.pt"
    export_model(network, fused_path)                       # fused by default
    export_model(network, plain_path, fused=False)
    assert read_metadata(fused_path)["fused"] is True
    assert read_metadata(fused_path)["operators"] == ["so3krates::edge_attention_pairs", "so3krates::hermite_lookup"]
    assert read_metadata(plain_path)["fused"] is False and read_metadata(plain_path)["operators"] == []
    fused, _ = load_model(fused_path)
    plain, _ = load_model(plain_path)
    # A plain file's code does not mention the operator: it loads where the operator is missing.
    for module, calls in ((fused, True), (plain, False)):
        for block in ("invariant_attention", "euclidean_attention"):
            assert ("edge_attention" in getattr(getattr(module.network.layers, "0"), block).code) is calls
        assert ("hermite_lookup" in getattr(module.network.layers, "0").filter_inv.code) is calls
    args = inputs(ethanol())
    assert_close(plain.compute(*args)["forces"], fused.compute(*args)["forces"], "forces")


def test_cli_export_fused_0_and_info(tmp_path, capsys):
    checkpoint = tmp_path / "model.ckpt"
    save_checkpoint(checkpoint, random_network("tiny", "float64"))
    for flag, expected in (("1", True), ("0", False)):
        out = tmp_path / f"fused{flag}.pt"
        assert cli(["export", str(checkpoint), "-o", str(out), "--fused", flag]) == 0
        assert read_metadata(out)["fused"] is expected
    assert cli(["info", str(tmp_path / "fused1.pt")]) == 0
    assert "fused (so3krates::edge_attention_pairs, so3krates::hermite_lookup, loaded)" in capsys.readouterr().out
    assert cli(["info", str(tmp_path / "fused0.pt")]) == 0
    assert "plain PyTorch" in capsys.readouterr().out


def test_missing_operator_message(tmp_path):
    """A fused file where the operator cannot be loaded: one line naming it and the fix, from the
    loader (ASE, OpenMM, validate...) and from `so3krates info` (which still prints the metadata)."""
    model = tmp_path / "fused.pt"
    export_model(random_network("tiny", "float64"), model)
    code = ("import sys\nfrom so3krates.export import load_model\nfrom so3krates.cli import main\n"
            "try:\n    load_model(%r)\nexcept RuntimeError as exc:\n    print('ERROR', exc)\n"
            "sys.exit(main(['info', %r]))\n" % (str(model), str(model)))
    env = {**os.environ, LIBRARY_ENV: str(tmp_path / "missing.so")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    error = done.stdout.splitlines()[0]
    assert error.startswith("ERROR") and "so3krates::edge_attention" in error and "not loaded" in error
    assert "--fused 0" in error and "missing.so" in error
    assert "NOT loaded here" in done.stdout


@pytest.mark.parametrize("engine", ["ase", "openmm", "lammps"])
def test_engines_run_fused_files(engine, tmp_path):
    """The operator loads in all three engines: a fused file gives the plain file's numbers."""
    network = random_network("tiny", "float64")
    paths = {}
    for fused in (True, False):
        paths[fused] = str(tmp_path / f"{fused}.pt")
        export_model(network, paths[fused], fused=fused)
    atoms = random_water(8, box=7.0)
    runner = engines.get(engine)
    a, b = runner.single_point(paths[False], atoms), runner.single_point(paths[True], atoms)
    assert np.isfinite(b["energy"]).all()
    np.testing.assert_allclose(b["forces"], a["forces"], rtol=0, atol=1e-9 * np.abs(a["forces"]).max())
    np.testing.assert_allclose(b["energy"], a["energy"], rtol=1e-12)
