"""The OpenMM engine: single points and MD in an OpenMM Context (see md.py, single_point.py)."""
from __future__ import annotations


class OpenMMEngine:
    name = "openmm"
    parallel = False
    needs_exported_file = True

    def single_point(self, model_path, atoms, ranks: int = 1):
        from .single_point import single_point
        return single_point(str(model_path), atoms)

    def run_md(self, model_path, atoms, settings, ranks: int = 1, progress: bool = True, observer=None):
        from .md import run_md
        return run_md(str(model_path), atoms, settings, progress=progress, observer=observer)


ENGINE = OpenMMEngine()
