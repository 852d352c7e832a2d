#!/usr/bin/env bash
# Create the peers' own virtual environment (benchmarks/peers/.venv, gitignored) with
# So3krates-torch and MACE at the versions pinned in requirements.txt. These are NOT project
# dependencies. requirements-lock.txt records the full set installed when the results were taken;
# install from it (--lock) to reproduce that environment exactly.
#   benchmarks/peers/setup.sh [--lock]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
reqs="$here/requirements.txt"
[[ "${1:-}" == "--lock" ]] && reqs="$here/requirements-lock.txt"
if [[ ! -x "$here/.venv/bin/python" ]]; then
    "$python" -m venv "$here/.venv"
fi
"$here/.venv/bin/pip" install -q -r "$reqs"
"$here/.venv/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("torch", "so3krates-torch", "mace-torch", "e3nn", "ase"):
    print(f"{name} {md.version(name)}")
PY
echo "peers venv ready: $here/.venv (mace_run_train and torchkrates-train are in $here/.venv/bin)"
