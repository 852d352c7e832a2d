"""Markdown tables from benchmarks/results/peers_speed.json and peers_accuracy.json (every run in them).

    python benchmarks/peers/tables.py [--results benchmarks/results]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from results_file import load_runs  # noqa: E402


def speed_table(data):
    rows = data["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    cap = f", memory cap {data['memory_cap_gib']} GiB per worker" if data.get("memory_cap_gib") else ""
    lines = [f"Command: `{data['command']}` ({data['date']}, {data['threads']} thread(s){cap}, {data['elapsed_s']} s)", "",
             "| system | atoms | dtype | " + " | ".join(models) + " | ours compute() |",
             "|---|---:|---|" + "---:|" * (len(models) + 1)]
    keys = list(dict.fromkeys((r["system"], r["atoms"], r["dtype"]) for r in rows))
    for system, atoms, dtype in keys:
        cells = []
        for m in models:
            r = next(x for x in rows if (x["system"], x["dtype"], x["model"]) == (system, dtype, m))
            if r["ase_ms"] is None:
                status = r["status"]
                cells.append("out of memory" if "allocate memory" in status or "rc -9" in status
                             else status.split(":")[0])
            else:
                ratio = r.get("ratio_to_ours_export")
                cells.append(f"{r['ase_ms']:.1f}" + (f" ({ratio:.2f}x)" if ratio and m != "ours-export" else ""))
        exp = next(x for x in rows if (x["system"], x["dtype"], x["model"]) == (system, dtype, "ours-export"))
        comp = f"{exp['compute_ms']:.1f}" if exp.get("compute_ms") else "-"
        lines.append(f"| {system} | {atoms} | {dtype} | " + " | ".join(cells) + f" | {comp} |")
    lines += ["", "ms per energy+forces evaluation; (ratio) = model time / ours-export time, ASE calculator path "
              "with neighbour list for all; ours compute() = exported model with its built-in neighbour search."]
    return "\n".join(lines)


def accuracy_table(data):
    lines = [f"Command: `{data['command']}` ({data['date']}; budget {data['budget_s']:.0f} s per model, "
             f"{data['threads']} thread(s))", "",
             "| model | trained s | epochs (peers: last checkpoint) | energy MAE meV | energy MAE meV/atom | force MAE meV/A | force RMSE meV/A |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        t = r.get("test", {})
        if "energy_mae_meV" not in t:
            lines.append(f"| {r['model']} | {r.get('train_seconds', '-')} | - | {r.get('error', t.get('error', 'failed'))[:80]} | | | |")
            continue
        epochs = r.get("epochs", r.get("latest_checkpoint_epoch", "-"))
        lines.append(f"| {r['model']} | {r['train_seconds']} | {epochs} | {t['energy_mae_meV']:.1f} | "
                     f"{t['energy_mae_meV_per_atom']:.2f} | {t['forces_mae_meV_per_A']:.1f} | {t['forces_rmse_meV_per_A']:.1f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(HERE.parent / "results"))
    args = ap.parse_args()
    folder = Path(args.results)
    for run in load_runs(folder / "peers_speed.json"):
        print(f"### speed {run.get('key', '')}\n\n{speed_table(run)}\n")
    for run in load_runs(folder / "peers_accuracy.json"):
        print(f"### accuracy {run.get('key', '')}\n\n{accuracy_table(run)}\n")


if __name__ == "__main__":
    main()
