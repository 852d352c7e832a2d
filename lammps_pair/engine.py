"""The LAMMPS engine: `pair_style so3krates` on 1 rank (in-process) or N MPI ranks (`mpiexec lmp`)."""
from __future__ import annotations


class LammpsEngine:
    name = "lammps"
    parallel = True
    needs_exported_file = True

    def single_point(self, model_path, atoms, ranks: int = 1):
        refuse_long_range(model_path)
        from .single_point import single_point
        return single_point(str(model_path), atoms, ranks=ranks)

    def run_md(self, model_path, atoms, settings, ranks: int = 1, progress: bool = True, observer=None):
        refuse_long_range(model_path)
        from .md import run_md
        return run_md(str(model_path), atoms, settings, ranks=ranks, progress=progress, observer=observer)


def refuse_long_range(model_path) -> None:
    """SO3LR-like models (long-range terms, total charge / spin inputs) do not run in the pair style
    yet (it errors out too): say so before LAMMPS starts."""
    from so3krates.export import read_metadata
    meta = read_metadata(model_path)
    if "long_range_cutoff_A" in meta or meta.get("global_inputs"):
        raise ValueError(f"{model_path} has long-range terms / total-charge and spin inputs (SO3LR); the LAMMPS "
                         f"pair style cannot run it yet (docs/pretrained.md): use --engine openmm or --engine ase")


ENGINE = LammpsEngine()
