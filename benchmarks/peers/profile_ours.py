"""Where ours spends its time: torch.profiler over energy+forces evaluations of the SO3LR-sized model.

    /work/main/.venv/bin/python benchmarks/peers/profile_ours.py [--atoms 1536] [--dtype float32]
        [--model eager|export] [--threads 1] [--top 15] [--out benchmarks/results/peers_profile.json]

Profiles the same call the speed benchmark times (So3kratesCalculator: vesin pairs + compute),
after warm-up, and prints the top operators by self CPU time (forward and backward together).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from ase.calculators.calculator import all_changes
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import models  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=int, default=1536, help="water atoms (rounded to whole molecules)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--model", default="eager", choices=["eager", "export"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", default=str(HERE.parent / "results" / "peers_profile.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from so3krates.structures import water_box
    atoms = water_box(max(args.atoms // 3, 1))
    calc, _ = models.build(f"ours-{args.model}", args.dtype)
    props = ["energy", "forces", "stress"]
    for _ in range(3):
        calc.calculate(atoms, props, all_changes)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.repeat):
            calc.calculate(atoms, props, all_changes)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:args.top]
    table = [{"op": e.key, "self_ms_per_eval": e.self_cpu_time_total / 1000 / args.repeat,
              "share": e.self_cpu_time_total / total, "calls_per_eval": e.count / args.repeat} for e in rows]
    print(f"ours-{args.model} {args.dtype}, water {len(atoms)} atoms, {args.threads} thread(s): "
          f"{total / 1000 / args.repeat:.0f} ms self CPU per evaluation")
    for r in table:
        print(f"  {r['op']:<42}{r['self_ms_per_eval']:9.1f} ms {100 * r['share']:5.1f}%  {r['calls_per_eval']:6.0f} calls")
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    previous[f"ours-{args.model} {args.dtype} water {len(atoms)}"] = {
        "command": " ".join(["python", *sys.argv]), "threads": args.threads,
        "self_cpu_ms_per_eval": total / 1000 / args.repeat, "top_ops": table}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(previous, indent=1))


if __name__ == "__main__":
    main()
