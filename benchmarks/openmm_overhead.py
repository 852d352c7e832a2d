"""OpenMM step time (CPU platform) against the bare exported model, same structures, same run.

    python benchmarks/openmm_overhead.py [--preset default] [--dtype float32]
        [--sizes 9 300 1000 3000 10000] [--repeat 3] [--threads 1] [--no-backprop]

For each structure (ethanol, then periodic liquid water boxes) and in one process:
- bare: one `compute` (energy + forces) of the exported model on the structure (A, eV), as
  load_exported returns it; frozen: the same after torch.jit.freeze, as openmm-torch runs it;
- openmm: one VerletIntegrator step of an OpenMM Context (CPU platform) holding only the
  so3krates TorchForce as create_force builds it (the wrapper returns the model's forces,
  setOutputsForces(True));
- backprop: the same step with a wrapper that returns the energy only, and openmm-torch
  backpropagating to the positions (the alternative design, measured for comparison).
Every timing is the fastest of --repeat (more for small systems) interleaved measurements after
three warm-up calls (TorchScript's profiling executor optimises after the first call); on a shared
machine other jobs only ever add time, so the fastest run is the cost (medians are in the JSON). ratio = openmm / bare (the target: <= 1.15 from 1,000 atoms);
vs frozen = openmm / frozen (OpenMM's own overhead). Writes benchmarks/results/openmm_overhead.json.

--threads defaults to 1: on a small shared machine torch's intra-op threads compete with other
processes and make the timings noisy; the overhead ratio is what this benchmark is about.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch
from ase.build import molecule
from torch import nn

import so3krates.openmm_plugin  # noqa: F401  (loads openmm-torch's plugin)
from so3krates.export import export_model, load_exported
from so3krates.model import So3krates
from so3krates.model.config import preset
from so3krates.openmm_plugin import ANGSTROM_PER_NM, KJ_PER_MOL_PER_EV
from so3krates.structures import water_box


class EnergyOnlyModule(nn.Module):
    """The alternative wrapper: energy only (kJ/mol); openmm-torch backpropagates for forces."""

    def __init__(self, model, atomic_numbers, periodic: bool):
        super().__init__()
        self.model = model
        self.register_buffer("atomic_numbers", torch.tensor(atomic_numbers, dtype=torch.long))
        self.register_buffer("pbc", torch.tensor([periodic] * 3))
        self.periodic = periodic
        self.angstrom_per_nm = ANGSTROM_PER_NM
        self.kj_per_mol_per_ev = KJ_PER_MOL_PER_EV

    def forward(self, positions: torch.Tensor, boxvectors: Optional[torch.Tensor] = None) -> torch.Tensor:
        cell: Optional[torch.Tensor] = None
        pbc: Optional[torch.Tensor] = None
        if self.periodic and boxvectors is not None:
            cell, pbc = boxvectors.to(torch.float64) * self.angstrom_per_nm, self.pbc
        energy = self.model.forward(positions.to(torch.float64) * self.angstrom_per_nm, self.atomic_numbers, cell, pbc)
        return energy.to(torch.float64) * self.kj_per_mol_per_ev


def structure(n: int):
    return ("ethanol", molecule("CH3CH2OH")) if n <= 9 else ("water", water_box(n // 3))


def make_context(system_and_frame, force):
    import openmm
    system, frame = system_and_frame
    system.addForce(force)
    integrator = openmm.VerletIntegrator(0.0005)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(frame.positions_nm)
    return integrator, context


def bare_system(atoms):
    """An OpenMM System with the masses and box of `atoms` and no forces yet."""
    import openmm
    from so3krates.openmm_plugin.system import openmm_frame
    frame = openmm_frame(atoms)
    system = openmm.System()
    for mass in atoms.get_masses():
        system.addParticle(float(mass))
    if frame.box_nm is not None:
        system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) for row in frame.box_nm))
    return system, frame


def main():
    import openmmtorch
    from so3krates.openmm_plugin import create_force

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--sizes", type=int, nargs="+", default=[9, 300, 1000, 3000, 10000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--no-backprop", action="store_true", help="skip the energy-only (backprop) variant")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model.pt"
        torch.manual_seed(0)
        export_model(So3krates(preset(args.preset, elements=[1, 6, 8], dtype=args.dtype)), path, args.dtype)
        bare, metadata = load_exported(path)
        # openmm-torch calls torch::jit::freeze on the module it is given (weights become constants,
        # ops fold and fuse): compare with the model frozen the same way too, to separate OpenMM's
        # own cost from the gain of freezing.
        frozen = torch.jit.freeze(load_exported(path)[0].eval(), preserved_attrs=["compute"])
        print(f"preset {args.preset}, {args.dtype}, cutoff {metadata['cutoff_A']} A; OpenMM CPU platform; "
              f"torch threads {torch.get_num_threads()}; fastest of >= {args.repeat} interleaved runs after 3 warm-up calls")
        print(f"{'system':<9}{'atoms':>7}{'bare ms':>10}{'frozen ms':>11}{'openmm ms':>11}{'ratio':>7}"
              f"{'vs frozen':>10}{'backprop ms':>13}{'ratio':>7}")
        for n in args.sizes:
            name, atoms = structure(n)
            periodic = bool(atoms.pbc.all())
            pos, z = torch.tensor(atoms.positions), torch.tensor(atoms.numbers)
            cell = torch.tensor(atoms.cell.array) if periodic else None
            pbc = torch.tensor(atoms.pbc) if periodic else None
            timed = {"bare": lambda: bare.compute(pos, z, cell, pbc),
                     "frozen": lambda: frozen.compute(pos, z, cell, pbc)}
            step, keep_context = make_context(bare_system(atoms), create_force(path, atomic_numbers=atoms.numbers,
                                                                     periodic=periodic))
            timed["openmm"] = lambda step=step: step.step(1)
            if not args.no_backprop:
                force = openmmtorch.TorchForce(torch.jit.script(EnergyOnlyModule(bare, atoms.numbers.tolist(),
                                                                                 periodic)))
                force.setUsesPeriodicBoundaryConditions(periodic)
                backprop, keep_backprop_context = make_context(bare_system(atoms), force)
                timed["backprop"] = lambda backprop=backprop: backprop.step(1)
            for fn in timed.values():  # warm-up: TorchScript profiles on the first call, optimises on the next
                for _ in range(3):
                    fn()
            start = time.perf_counter()
            timed["bare"]()
            # small systems: more repeats (about 2 s of the bare model) to beat the noise
            repeat = max(args.repeat, min(50, int(2.0 / max(time.perf_counter() - start, 1e-6))))
            samples = {key: [] for key in timed}
            for _ in range(repeat):
                for key, fn in timed.items():
                    start = time.perf_counter()
                    fn()
                    samples[key].append(1000 * (time.perf_counter() - start))
            # The fastest of the interleaved runs: on a shared machine other jobs only ever add time.
            ms = {key: min(values) for key, values in samples.items()}
            medians = {f"{key}_median_ms": statistics.median(values) for key, values in samples.items()}
            row = {"system": name, "atoms": len(atoms), "bare_ms": ms["bare"], "frozen_bare_ms": ms["frozen"],
                   "openmm_step_ms": ms["openmm"], "ratio": ms["openmm"] / ms["bare"],
                   "ratio_vs_frozen": ms["openmm"] / ms["frozen"]}
            line = (f"{name:<9}{len(atoms):>7}{ms['bare']:>10.1f}{ms['frozen']:>11.1f}{ms['openmm']:>11.1f}"
                    f"{row['ratio']:>7.3f}{row['ratio_vs_frozen']:>10.3f}")
            row.update(medians, repeats=repeat)
            if "backprop" in ms:
                row.update(backprop_step_ms=ms["backprop"], backprop_ratio=ms["backprop"] / ms["bare"])
                line += f"{ms['backprop']:>13.1f}{row['backprop_ratio']:>7.3f}"
            rows.append(row)
            print(line, flush=True)
            del step, timed, keep_context  # free the Contexts before the next size
    out = Path(__file__).parent / "results" / "openmm_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "command": "python benchmarks/openmm_overhead.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if not isinstance(v, bool)) + (" --no-backprop" if args.no_backprop else ""),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
