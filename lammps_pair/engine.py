"""The LAMMPS engine: `pair_style so3krates` on 1 rank (in-process) or N MPI ranks (`mpiexec lmp`)."""
from __future__ import annotations


class LammpsEngine:
    name = "lammps"
    parallel = True
    needs_exported_file = True

    def single_point(self, model_path, atoms, ranks: int = 1):
        from .single_point import single_point
        return single_point(str(model_path), atoms, ranks=ranks)

    def run_md(self, model_path, atoms, settings, ranks: int = 1, progress: bool = True, observer=None):
        from .md import run_md
        return run_md(str(model_path), atoms, settings, ranks=ranks, progress=progress, observer=observer)


ENGINE = LammpsEngine()
