"""Write and read the exported model: TorchScript + metadata JSON in the same archive.

The metadata is stored as the archive's extra file `extra/so3krates.json`, so it can be read
without running (or even loading) the model: from Python with zipfile, from C++ with
torch::jit::load(path, device, extra_files).
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

import so3krates
from so3krates.model.checkpoint import atomic_write, network_from_checkpoint
from so3krates.model.layers import set_fused
from so3krates.model.network import So3krates
from so3krates.model.potential import Potential
from so3krates.model.radial_table import DEFAULT_POINTS

# 2: the stage methods (stage_geometry, stage_embed, stage_layer, stage_readout) and the per-atom
# state widths (`state`), which the LAMMPS pair style needs for its per-layer halo exchange.
FORMAT_VERSION = 2
METADATA_FILE = "so3krates.json"


class NotASo3kratesModel(ValueError):
    pass


# The custom operators a fused export calls (ops/, so3krates/fused.py): the edge pass, and the
# table lookup of tabulated radial filters.
FUSED_OPERATOR = "so3krates::edge_attention_pairs"
LOOKUP_OPERATOR = "so3krates::hermite_lookup"


def build_metadata(network: So3krates, dtype: str, provenance: Optional[Dict[str, Any]] = None,
                   fused: bool = False) -> Dict[str, Any]:
    radial = ({"kind": "cubic Hermite table", "points": network.table_points} if network.tabulated
              else {"kind": "exact"})
    cfg = network.config
    shifts = network.energy_shift.detach().double().cpu().tolist()
    return {
        "format_version": FORMAT_VERSION,
        "so3krates_version": so3krates.__version__,
        "torch_version": torch.__version__,
        "model": "so3krates",
        "elements": [int(z) for z in cfg.elements],
        "cutoff_A": float(cfg.cutoff),
        "num_layers": int(cfg.num_layers),
        "interaction_range_A": float(cfg.interaction_range),
        "state": {"x": int(network.features), "ev": int(network.num_sh)},
        "length_unit": "A",
        "energy_unit": "eV",
        "dtype": dtype,
        "energy_shifts_eV": {str(z): s for z, s in zip(cfg.elements, shifts)},
        "radial_filters": radial,
        # The edge pass of the attention blocks: the fused C++ operator (inference only: no second
        # derivatives), or plain PyTorch. `operators`: the custom operators a reader must load.
        "fused": bool(fused),
        "operators": ([FUSED_OPERATOR] + ([LOOKUP_OPERATOR] if network.tabulated else [])) if fused else [],
        **long_range_metadata(cfg),
        "config": {**cfg.to_dict(), "dtype": dtype},
        "provenance": {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       **(provenance or {})},
    }


def long_range_metadata(cfg) -> Dict[str, Any]:
    """What engines must honour for SO3LR-like models: the long-range pair range (the engine's
    pairs / ghost atoms must reach it) and the structure-wide inputs (total charge, multiplicity)."""
    meta: Dict[str, Any] = {}
    if cfg.long_range:
        meta["long_range_cutoff_A"] = float(cfg.long_range_cutoff)
        meta["long_range_terms"] = [name for name, on in (("electrostatics", cfg.electrostatics),
                                                          ("dispersion", cfg.dispersion)) if on]
    inputs = []
    if cfg.charge_embedding or cfg.electrostatics:
        inputs.append("charge")
    if cfg.spin_embedding:
        inputs.append("multiplicity")
    if inputs:
        meta["global_inputs"] = inputs
    return meta


def export_model(source, output: str | os.PathLike, dtype: str = "float64",
                 provenance: Optional[Dict[str, Any]] = None, radial_table: int = DEFAULT_POINTS,
                 fused: bool = True) -> Dict[str, Any]:
    """Export a checkpoint path, a checkpoint dict or a So3krates network to ONE TorchScript file.

    radial_table: grid points of the tabulated radial filters (model/radial_table.py; faster, with a
    force error below 1e-7 of the largest force at the default, docs/benchmarks.md); 0 keeps the
    exact radial branch. fused: the attention blocks' edge pass is the C++ operator
    so3krates::edge_attention_pairs (less memory, same numbers; readers must load it, which
    `import so3krates` and the LAMMPS plugin do); False keeps plain PyTorch."""
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if radial_table and radial_table < 16:
        raise ValueError(f"radial_table must be 0 (exact filters) or at least 16 grid points, got {radial_table}")
    payload_meta: Dict[str, Any] = {}
    if isinstance(source, So3krates):
        network = source
    else:
        network, payload = network_from_checkpoint(source)
        payload_meta = dict(payload.get("metadata", {}))
    network = copy.deepcopy(network).to(getattr(torch, dtype)).eval()
    network.config = network.config.replace(dtype=dtype)
    if radial_table and not network.tabulated:
        network.tabulate_radial_filters(radial_table)
    set_fused(network, fused)
    metadata = build_metadata(network, dtype, {**payload_meta, **(provenance or {})}, fused=fused)
    scripted = torch.jit.script(Potential(network))
    extra = {METADATA_FILE: json.dumps(metadata, indent=1)}
    atomic_write(output, lambda tmp: torch.jit.save(scripted, tmp, _extra_files=extra))
    return metadata


# What every reader of the metadata (info, the engines, validate) relies on.
REQUIRED_FIELDS = ("format_version", "so3krates_version", "torch_version", "elements", "cutoff_A", "num_layers",
                   "interaction_range_A", "length_unit", "energy_unit", "dtype")

_checked: Dict[Tuple[str, int, int], bool] = {}


def check_archive(path: str | os.PathLike) -> None:
    """Refuse an archive whose content is damaged: every member's CRC-32 against the zip's record.
    torch.jit.load does not check them (libtorch's miniz is built without CRC checks), so a
    flipped byte in the weights would load and give wrong energies. One read of the file; the
    answer is kept per (path, size, mtime)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _checked:
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise NotASo3kratesModel(f"{path} is damaged ({exc.__class__.__name__}: {exc}); export the model "
                                 f"again or copy it again") from None
    if bad is not None:
        raise NotASo3kratesModel(f"{path} is damaged: the CRC-32 of {bad} does not match the archive's record "
                                 f"(a changed byte); export the model again or copy it again")
    _checked[key] = True


def read_metadata(path: str | os.PathLike) -> Dict[str, Any]:
    """Metadata of an exported model, read from the archive without loading the model; the
    archive's CRCs are checked (a damaged file is refused)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise NotASo3kratesModel(f"{path} is not a TorchScript archive; export a trained checkpoint "
                                 f"with `so3krates export CHECKPOINT -o model.pt`")
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith("/extra/" + METADATA_FILE)]
        if not names and any(n.endswith("/data.pkl") for n in archive.namelist()) and not any(
                "/code/" in n for n in archive.namelist()):
            raise NotASo3kratesModel(f"{path} is a training checkpoint, not an exported model: export it with "
                                     f"`so3krates export {path} -o model.pt`")
        if not names:
            raise NotASo3kratesModel(f"{path} has no so3krates metadata (extra/{METADATA_FILE}): it is not "
                                     f"a so3krates model; export one with `so3krates export CHECKPOINT -o model.pt`")
        try:
            metadata = json.loads(archive.read(names[0]))
        except (ValueError, zipfile.BadZipFile) as exc:
            raise NotASo3kratesModel(f"{path}: its metadata (extra/{METADATA_FILE}) cannot be read "
                                     f"({exc.__class__.__name__}: {exc}); export the model again") from None
    if not isinstance(metadata, dict):
        raise NotASo3kratesModel(f"{path}: its metadata (extra/{METADATA_FILE}) is not a JSON object; "
                                 f"export the model again")
    if isinstance(metadata.get("format_version"), int) and metadata["format_version"] > FORMAT_VERSION:
        raise NotASo3kratesModel(f"{path} uses model format {metadata['format_version']}, newer than this "
                                 f"so3krates ({so3krates.__version__}, format {FORMAT_VERSION}); upgrade so3krates")
    missing = [k for k in REQUIRED_FIELDS if k not in metadata]
    if missing:
        raise NotASo3kratesModel(f"{path}: its metadata lacks the field(s) {', '.join(missing)}; it was not "
                                 f"written by `so3krates export` or was edited: export the model again")
    check_archive(path)
    return metadata


def require_operators(path: str | os.PathLike, metadata: Dict[str, Any]) -> None:
    """A fused model needs its operator registered before torch.jit.load: say so in one line."""
    if metadata.get("fused"):
        from so3krates.fused import library_path, require
        require(f"{path} (exported with --fused 1)")
        for name in metadata.get("operators", []):
            namespace, op = name.split("::")
            try:
                getattr(getattr(torch.ops, namespace), op)
            except (AttributeError, RuntimeError):
                raise RuntimeError(f"{path} needs the operator {name}, which the loaded operator library "
                                   f"({library_path()}) does not have (built before it was added): rebuild "
                                   f"so3krates (`make install`) or export the model with --fused 0") from None


def load_exported(path: str | os.PathLike, device: str = "cpu") -> Tuple[torch.jit.ScriptModule, Dict[str, Any]]:
    from so3krates.allocator import tune_glibc_malloc
    metadata = read_metadata(path)
    require_operators(path, metadata)
    tune_glibc_malloc()   # unless SO3KRATES_MALLOC_TUNING=0 (so3krates/allocator.py)
    module = torch.jit.load(str(path), map_location=device)
    return module.eval(), metadata
