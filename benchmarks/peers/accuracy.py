"""Accuracy at equal training wall-clock: ours, So3krates-torch and MACE on rMD17 ethanol.

    /work/main/.venv/bin/python benchmarks/peers/accuracy.py --budget 8m [--models ours so3krates-torch mace]
        [--threads 1] [--run-dir /tmp/peers_accuracy] [--out benchmarks/results/peers_accuracy.json]

Each model trains on ../shared/data/rmd17_ethanol/train.xyz (1000 frames, eV) for the same
wall-clock --budget, one after another, with its own training CLI and its documented defaults:
  ours             so3krates train --preset default --max-time BUDGET (it stops itself)
  so3krates-torch  torchkrates-train --config (YAML; see so3krates_torch_config below)
  mace             mace_run_train with its defaults (128x0e+128x1o, 5 A, ...), --E0s average
The peers' CLIs have no time limit: they get a large epoch count and are stopped (SIGTERM) when
the budget is spent, counted from process start; their CLI is then run once more with
restart-from-latest-checkpoint and the epoch limit set to the epochs done, which trains
nothing and writes the final model file. Every model is then evaluated with the same code
(evaluate_model.py) on ../shared/data/rmd17_ethanol/ethanol_reduced_100_kcal.xyz (kcal/mol
converted to eV once). Ours is also evaluated with `so3krates evaluate`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
from results_file import find_run, record_run  # noqa: E402
DATA = REPO.parent / "shared" / "data" / "rmd17_ethanol"
OURS_BIN = Path(sys.executable).parent
PEERS_BIN = HERE / ".venv" / "bin"
EV_PER_KCAL_MOL = 4.184 / 96.485332  # 1 kcal = 4.184 kJ; 1 eV = 96.485332 kJ/mol (CODATA)
MODELS = ("ours", "so3krates-torch", "mace")


def parse_budget(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh]?)", text.strip())
    if not m:
        raise SystemExit(f"--budget {text!r}: give seconds or a number with s, m or h, e.g. 8m")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def prepare_data(folder):
    """REF_energy/REF_forces copies (the peers' default keys); the test set converted to eV."""
    from ase.io import read, write
    folder.mkdir(parents=True, exist_ok=True)
    train, test = folder / "train_ref.xyz", folder / "test_eV.xyz"
    frames = read(DATA / "train.xyz", index=":")
    for a in frames:
        a.info["REF_energy"] = a.get_potential_energy()
        a.arrays["REF_forces"] = a.get_forces()
        a.calc = None
        a.info.pop("energy", None)
    write(train, frames, format="extxyz")
    frames = read(DATA / "ethanol_reduced_100_kcal.xyz", index=":")
    for a in frames:
        a.info["REF_energy"] = a.get_potential_energy() * EV_PER_KCAL_MOL
        a.arrays["REF_forces"] = a.get_forces() * EV_PER_KCAL_MOL
        a.calc = None
        a.info.pop("energy", None)
    write(test, frames, format="extxyz")
    return train, test


def so3krates_torch_config(train, seed, epochs, restart, gamma_085=False):
    """Its documented defaults (F 128, degrees required -> [1,2,3,4], 3 layers, 4.5 A, Bernstein 32,
    cosine cutoff, Adam, exponential decay, forces weight 1000, float64); the SO3LR long-range terms
    (ZBL, electrostatics, dispersion) off because plain So3krates is compared. batch_size,
    valid_batch_size and lr have no default there: 16/32 like ours, lr 1e-3 as in SO3LR training.
    lr_scheduler_gamma: its README documents 0.9993 per epoch, but the code's default is 0.85, which
    leaves 1e-3 * 0.85^40 = 1.5e-6 after 40 epochs; gamma_085=True reproduces the code default."""
    gamma = 0.85 if gamma_085 else 0.9993
    return {
        "GENERAL": {"name_exp": "so3krates_torch", "seed": seed, "default_dtype": "float64"},
        "ARCHITECTURE": {"degrees": [1, 2, 3, 4], "zbl_repulsion_bool": False,
                         "electrostatic_energy_bool": False, "dispersion_energy_bool": False},
        "TRAINING": {"path_to_train_data": str(train), "batch_size": 16, "valid_batch_size": 32, "lr": 1e-3,
                     "num_epochs": epochs, "lr_scheduler_gamma": gamma},
        "MISC": {"device": "cpu", "restart_latest": restart},
    }


def mace_command(train, seed, epochs, restart):
    cmd = [str(PEERS_BIN / "mace_run_train"), "--name", "mace", "--train_file", str(train), "--E0s", "average",
           "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--device", "cpu", "--seed", str(seed),
           "--max_num_epochs", str(epochs)]
    return cmd + (["--restart_latest"] if restart else [])


def latest_epoch(checkpoints):
    epochs = [int(m.group(1)) for p in checkpoints.glob("*.pt") if (m := re.search(r"_epoch-(\d+)", p.name))]
    return max(epochs) if epochs else None


def run_for(cmd, cwd, env, budget_s, log):
    """Run until it exits or budget_s is spent (then SIGTERM, SIGKILL after 30 s): (seconds, stopped)."""
    start = time.time()
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=budget_s)
            stopped = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            stopped = True
    return time.time() - start, stopped, proc.returncode


def train_peer(name, folder, train, budget_s, env, seed, gamma_085=False):
    import yaml
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "train.log"
    big = 100000

    def command(epochs, restart):
        if name == "mace":
            return mace_command(train, seed, epochs, restart)
        cfg = folder / "config.yaml"
        cfg.write_text(yaml.safe_dump(so3krates_torch_config(train, seed, epochs, restart, gamma_085)))
        return [str(PEERS_BIN / "torchkrates-train"), "--config", str(cfg)]

    seconds, stopped, rc = run_for(command(big, False), folder, env, budget_s, log)
    checkpoints = folder / "checkpoints"
    epoch = latest_epoch(checkpoints)
    info = {"train_seconds": round(seconds, 1), "stopped_at_budget": stopped, "returncode": rc,
            "latest_checkpoint_epoch": epoch}
    if epoch is None:
        info["error"] = "no checkpoint written within the budget (no epoch finished)"
        return None, info
    # Finalise: restart from the latest checkpoint with the epoch limit reached -> writes the model.
    _, _, rc2 = run_for(command(epoch, True), folder, env, 900, log)
    model = folder / ("mace.model" if name == "mace" else "so3krates_torch.model")
    info["finalise_returncode"] = rc2
    if not model.is_file():
        info["error"] = f"no model file {model.name} after finalising; see {log}"
        return None, info
    return model, info


def train_ours(folder, train, budget_s, threads, seed):
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [str(OURS_BIN / "so3krates"), "train", "--train", str(DATA / "train.xyz"), "--out", str(folder),
           "--preset", "default", "--max-time", f"{int(budget_s)}s", "--threads", str(threads), "--seed", str(seed),
           "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    # Its own --max-time stops it; the hard limit only guards against a hang.
    seconds, stopped, rc = run_for(cmd, folder, env, budget_s + 300, folder / "train.log")
    model = folder / "best.ckpt"
    info = {"train_seconds": round(seconds, 1), "stopped_at_budget": stopped, "returncode": rc,
            "command": " ".join(cmd)}
    if not model.is_file():
        info["error"] = f"no {model.name}; see {folder / 'train.log'}"
        return None, info
    out = folder / "so3krates_evaluate.json"
    subprocess.run([str(OURS_BIN / "so3krates"), "evaluate", str(model), str(DATA / "ethanol_reduced_100_kcal.xyz"),
                    "--energy-unit", "kcal/mol", "--json", str(out)], check=False, capture_output=True)
    if out.is_file():
        info["so3krates_evaluate"] = json.loads(out.read_text())
    metrics = folder / "metrics.csv"
    if metrics.is_file():
        info["epochs"] = max(len(metrics.read_text().splitlines()) - 1, 0)
    return model, info


def evaluate(kind, model, test):
    python = OURS_BIN / "python" if kind == "ours" else PEERS_BIN / "python"
    proc = subprocess.run([str(python), str(HERE / "evaluate_model.py"), "--kind", kind, str(model), str(test)],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    if proc.returncode:
        return {"error": proc.stderr[-800:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="8m", help="training wall-clock per model, e.g. 8m, 30m, 1800")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for every training run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-dir", default="/tmp/peers_accuracy")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "peers_accuracy.json"))
    ap.add_argument("--s3t-code-default-gamma", action="store_true",
                    help="so3krates-torch with its code's lr decay 0.85/epoch instead of the documented 0.9993")
    ap.add_argument("--merge", action="store_true", help="keep the other models' rows already in --out")
    args = ap.parse_args()
    budget_s = parse_budget(args.budget)
    if not (DATA / "train.xyz").is_file():
        sys.exit(f"{DATA} is missing: the accuracy benchmark needs ../shared/data/rmd17_ethanol")
    run_dir = Path(args.run_dir)
    train, test = prepare_data(run_dir / "data")
    peer_env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    rows = []
    for name in args.models:
        load_before = os.getloadavg()
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        print(f"training {name} for {budget_s:.0f} s ...", flush=True)
        if name == "ours":
            model, info = train_ours(run_dir / name, train, budget_s, args.threads, args.seed)
        else:
            model, info = train_peer(name, run_dir / name, train, budget_s, peer_env, args.seed,
                                     args.s3t_code_default_gamma)
        row = {"model": name, "started": started, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
               **info}
        if model is not None:
            row["test"] = evaluate(name, model, test)
            row["model_file"] = str(model)
        print(json.dumps(row), flush=True)
        rows.append(row)
    commands = {name: " ".join([Path(sys.executable).name, *sys.argv]) for name in args.models}
    key = {"budget_s": budget_s}
    old = find_run(args.out, key) if args.merge else None
    if old is not None:
        kept = [r for r in old["rows"] if r["model"] not in args.models]
        commands = {**{r["model"]: old.get("commands", {}).get(r["model"], old["command"]) for r in kept}, **commands}
        rows = sorted(kept + rows, key=lambda r: MODELS.index(r["model"].split(" ")[0]))
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "commands": commands,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "budget_s": budget_s, "threads": args.threads,
              "train_data": str(DATA / "train.xyz"), "test_data": str(DATA / "ethanol_reduced_100_kcal.xyz"),
              "so3krates_torch_config": so3krates_torch_config("train_ref.xyz", args.seed, "<large>", False,
                                                               args.s3t_code_default_gamma),
              "mace_command": " ".join(mace_command("train_ref.xyz", args.seed, "<large>", False)),
              "rows": rows}
    record_run(args.out, result, key)   # one file; this budget replaces its earlier run
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
