"""CPU time of the model's stages for one LAMMPS rank's share of a water box, in process, against
half of the whole box on one rank: what the halo rows and the edges across the rank boundary cost,
with and without stage_layer's num_pairs (the one-way halo edges, docs/model-format.md).

    python benchmarks/halo_stages.py [--atoms 5000] [--repeats 4]

"Rank 0 of 2" is built as LAMMPS builds it (pair_so3krates.cpp, build_edges): the atoms of the
left half of the box (along x) are owned; a pair of two owned atoms is listed once (messages both
ways); an edge from an atom of the right half is listed one way, its sender gets a halo row. The
whole box on one rank is the half list of all pairs. Each evaluation is stage_geometry ->
stage_embed -> stage_layer per layer -> stage_readout, then dE/dr for all edges (one autograd
graph; the halo rows' state is stood in by owned rows: the cost does not depend on the values).
CPU time (time.process_time) of the fastest of --calls calls; the three variants run interleaved,
--repeats rounds. One torch thread. Prints the ratios; writes benchmarks/results/halo_stages.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from results_file import record_run
from so3krates.export import export_model, load_exported
from so3krates.model import So3krates
from so3krates.model.config import preset
from so3krates.model.neighbors import find_pairs
from so3krates.structures import water_box


def one_rank_graph(positions, i, j, vectors, species):
    keep = (i < j) | ((i == j) & (vectors[:, 0] > 0))
    return (torch.tensor(vectors[keep]), torch.tensor(i[keep]), torch.tensor(j[keep]), species, len(positions), -1)


def rank0_graph(positions, length, i, j, shifts, vectors, species):
    """Owned atoms, then halo rows; pairs first, then the one-way edges from halo senders."""
    own = positions[:, 0] % length < length / 2
    owned = np.nonzero(own)[0]
    row = np.full(len(positions), -1)
    row[owned] = np.arange(len(owned))
    mine = own[i]
    i, j, shifts, vectors = i[mine], j[mine], shifts[mine], vectors[mine]
    pair = own[j] & ((row[i] < row[j]) | ((i == j) & (vectors[:, 0] > 0)))
    one_way = ~own[j]
    # a halo row per ghost: per (atom, periodic image)
    ghosts, halo_rows = np.unique(np.column_stack([j[one_way], np.round(shifts[one_way], 3)]), axis=0,
                                  return_inverse=True)
    idx_i = np.concatenate([row[i[pair]], row[i[one_way]]])
    idx_j = np.concatenate([row[j[pair]], len(owned) + halo_rows.ravel()])
    rows_species = torch.cat([species[owned], species[ghosts[:, 0].astype(int)]])
    return (torch.tensor(np.concatenate([vectors[pair], vectors[one_way]])), torch.tensor(idx_i),
            torch.tensor(idx_j), rows_species, len(owned), int(pair.sum()))


def cpu_ms(module, num_layers, graph, use_num_pairs: bool, calls: int) -> float:
    vectors, idx_i, idx_j, species, n_own, num_pairs = graph
    times = []
    for _ in range(calls):
        start = time.process_time()
        v = vectors.clone().requires_grad_(True)   # stage_geometry converts to the model dtype
        geometry = module.stage_geometry(v)
        x, ev = module.stage_embed(species)
        for t in range(num_layers):
            extra = species.shape[0] - x.shape[0]
            if extra:   # the halo rows' state (values do not matter for the cost)
                x, ev = torch.cat([x, x[:extra]]), torch.cat([ev, ev[:extra]])
            args = (t, x, ev, geometry, idx_i, idx_j, n_own) + ((num_pairs,) if use_num_pairs else ())
            x, ev = module.stage_layer(*args)
        energies = module.stage_readout(x, species, geometry, idx_i, idx_j)
        torch.autograd.grad(energies.sum(), v)
        times.append(time.process_time() - start)
    return 1000 * min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=int, default=5000)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "halo_stages.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    cfg = preset(args.preset, elements=[1, 8], dtype=args.dtype)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        export_model(So3krates(cfg), Path(tmp) / "model.pt", args.dtype)
        module = load_exported(Path(tmp) / "model.pt")[0]
    atoms = water_box(max(1, round(args.atoms / 3)))
    positions, cell = atoms.positions, atoms.cell.array
    i, j, shifts = find_pairs(positions, cell, [True] * 3, cfg.cutoff)
    vectors = positions[j] + shifts - positions[i]
    species = torch.tensor([0 if z == 1 else 1 for z in atoms.numbers])
    whole = one_rank_graph(positions, i, j, vectors, species)
    rank0 = rank0_graph(positions, cell[0, 0], i, j, shifts, vectors, species)
    print(f"{len(atoms)} atoms, preset {args.preset}, {args.dtype}: 1 rank {len(whole[1])} edges; rank 0 of 2: "
          f"{rank0[4]} owned, {rank0[3].shape[0] - rank0[4]} halo rows, {len(rank0[1])} edges of which "
          f"{rank0[5]} pairs")
    rounds = []
    for r in range(args.repeats):
        one = cpu_ms(module, cfg.num_layers, whole, False, args.calls)
        before = cpu_ms(module, cfg.num_layers, rank0, False, args.calls)
        now = cpu_ms(module, cfg.num_layers, rank0, True, args.calls)
        rounds.append({"one_rank_ms": one, "rank0_all_pairs_ms": before, "rank0_num_pairs_ms": now})
        print(f"round {r + 1}: 1 rank {one:.1f} ms; rank 0 of 2: every edge a pair {before:.1f} ms, with num_pairs "
              f"{now:.1f} ms; efficiency {one / (2 * before):.3f} -> {one / (2 * now):.3f}; "
              f"num_pairs / all pairs {now / before:.3f}", flush=True)
    ratio = statistics.median(r["rank0_num_pairs_ms"] / r["rank0_all_pairs_ms"] for r in rounds)
    eff = {k: statistics.median(r["one_rank_ms"] / (2 * r[k]) for r in rounds)
           for k in ("rank0_all_pairs_ms", "rank0_num_pairs_ms")}
    print(f"median: num_pairs / all pairs {ratio:.3f}; stage-level efficiency {eff['rank0_all_pairs_ms']:.3f} -> "
          f"{eff['rank0_num_pairs_ms']:.3f} (load average {load_start:.1f} -> {os.getloadavg()[0]:.1f}, "
          f"{os.cpu_count()} cores)")
    record_run(args.out, {
        "command": f"python benchmarks/halo_stages.py --atoms {args.atoms} --preset {args.preset} --dtype {args.dtype} "
                   f"--repeats {args.repeats} --calls {args.calls}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "load_average_start_end": [load_start, os.getloadavg()[0]],
        "atoms": len(atoms), "one_rank_edges": len(whole[1]), "rank0_owned": rank0[4],
        "rank0_halo_rows": rank0[3].shape[0] - rank0[4], "rank0_edges": len(rank0[1]), "rank0_pairs": rank0[5],
        "rounds": rounds, "median_num_pairs_over_all_pairs": ratio,
        "median_stage_efficiency": {"all_pairs": eff["rank0_all_pairs_ms"], "num_pairs": eff["rank0_num_pairs_ms"]}},
        key={"atoms": args.atoms, "preset": args.preset, "dtype": args.dtype})


if __name__ == "__main__":
    main()
