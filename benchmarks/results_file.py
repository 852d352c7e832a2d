"""One result file per benchmark: a JSON with the latest run of each variant (e.g. each size or
training budget asked for), so that re-running a variant replaces its old figures and history
stays in git.

    {"runs": [{"key": {...}, "command": ..., "date": ..., ...}, ...]}
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional


def load_runs(path: str | os.PathLike) -> List[Dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return data["runs"] if "runs" in data else [data]


def find_run(path: str | os.PathLike, key: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    return next((run for run in load_runs(path) if run.get("key") == key), None)


def record_run(path: str | os.PathLike, result: Dict[str, Any], key: Dict[str, Any]) -> None:
    """Put `result` into the file under `key`, replacing an earlier run with the same key."""
    path = Path(path)
    runs = [run for run in load_runs(path) if run.get("key") != key]
    runs.append({"key": key, **result})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"runs": runs}, indent=1))
    os.replace(tmp, path)
