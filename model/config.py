"""One config object for every architecture choice of the network."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

MESSAGE_NORMALISATIONS = ("sqrt_d", "avg_neighbors")
RADIAL_BASES = ("bernstein", "gaussian")
CUTOFF_FUNCTIONS = ("cosine", "physnet")
DTYPES = ("float32", "float64")
QKV_PROJECTIONS = ("per_head", "full")
QK_NON_LINEARITIES = ("identity", "silu")


@dataclass
class So3kratesConfig:
    elements: List[int] = field(default_factory=lambda: [1, 6, 7, 8])  # atomic numbers, model order
    features: int = 128            # F, invariant feature width
    degrees: List[int] = field(default_factory=lambda: [1, 2, 3, 4])
    num_layers: int = 3            # T
    num_heads: int = 4             # H, heads of the invariant attention
    cutoff: float = 4.5            # r_c in Angstrom
    num_rbf: int = 32              # K
    radial_basis: str = "bernstein"
    bernstein_gamma: float = 0.9448630629  # 1/Angstrom, SO3LR default
    cutoff_function: str = "physnet"
    message_normalization: str = "sqrt_d"  # or "avg_neighbors"
    avg_num_neighbors: Optional[float] = None  # set from the training data when needed
    # q/k/v projections: "per_head" (as the reference: one (F/H x F/H) matrix per head in the
    # invariant attention, one (F/n_D x F/n_D) per degree in the Euclidean attention) or "full"
    # (one F x F matrix each: the form of configs saved before this option existed).
    qkv_projections: str = "per_head"
    qk_non_linearity: str = "identity"  # activation on queries and keys (mlff: qk_non_linearity)
    # The reference layer's optional blocks, named as in mlff / So3krates-torch. Order in a layer:
    # attention -> [layer_normalization_1] -> [residual_mlp_1] -> exchange -> [residual_mlp_2]
    # -> [layer_normalization_2]. SO3LR: both LayerNorms and residual_mlp_1.
    layer_normalization_1: bool = False
    layer_normalization_2: bool = False
    residual_mlp_1: bool = False
    residual_mlp_2: bool = False
    layer_norm_eps: float = 1e-6   # flax's default, as in the reference (PyTorch's is 1e-5)
    energy_head_width: Optional[int] = None  # R in the energy head (energy_regression_dim); defaults to F
    # Learnable per-element scale s_Z and shift mu_Z of the atomic energies (SO3LR: both on).
    energy_learn_atomic_type_scales: bool = False
    energy_learn_atomic_type_shifts: bool = False
    # ZBL screened nuclear repulsion (SO3LR's zbl_repulsion_bool), switched off smoothly between
    # 0 and zbl_switch_radius (Angstrom) and multiplied by the cutoff function; model/zbl.py.
    zbl_repulsion: bool = True
    zbl_switch_radius: float = 1.5
    # SO3LR's global inputs and long-range terms (model/charge_spin.py, model/heads.py,
    # model/electrostatics.py, model/dispersion.py), all off for a plain SO3krates network.
    charge_embedding: bool = False   # total charge Q of the structure (e)
    spin_embedding: bool = False     # number of unpaired electrons (multiplicity - 1)
    electrostatics: bool = False     # partial charges, erf-damped Coulomb over the long-range pairs
    dispersion: bool = False         # Hirshfeld ratios, vdW-QDO dispersion over the long-range pairs
    long_range_cutoff: float = 12.0  # r_lr, Angstrom (SO3LR's r_max_lr)
    electrostatics_sigma: float = 4.0  # erf damping width, Angstrom (electrostatic_energy_scale)
    dispersion_damping: float = 2.0  # switch-off width below r_lr, Angstrom (dispersion_energy_cutoff_lr_damping)
    dispersion_scale: float = 1.2    # scale of the damping radius (dispersion_energy_scale)
    dtype: str = "float64"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"invalid so3krates config: {msg}")

        if not self.elements:
            bad("elements is empty; list the atomic numbers the model must know, e.g. [1, 6, 8]")
        if len(set(self.elements)) != len(self.elements):
            bad(f"elements {self.elements} contains duplicates")
        if any(z < 1 or z > 118 for z in self.elements):
            bad(f"elements {self.elements} must be atomic numbers between 1 and 118")
        if not self.degrees or any(l < 0 or l > 4 for l in self.degrees):
            bad(f"degrees {self.degrees} must be a non-empty list of integers in 0..4")
        if len(set(self.degrees)) != len(self.degrees):
            bad(f"degrees {self.degrees} contains duplicates")
        if self.features % self.num_heads:
            bad(f"features ({self.features}) must be divisible by num_heads ({self.num_heads})")
        if self.features % len(self.degrees):
            bad(f"features ({self.features}) must be divisible by the number of degrees ({len(self.degrees)})")
        if self.features % 4:
            bad(f"features ({self.features}) must be divisible by 4 (the filter nets use F/4)")
        if self.cutoff <= 0:
            bad(f"cutoff must be positive, got {self.cutoff}")
        if self.num_layers < 1:
            bad("num_layers must be at least 1")
        if self.radial_basis not in RADIAL_BASES:
            bad(f"radial_basis {self.radial_basis!r}; choose one of {RADIAL_BASES}")
        if self.cutoff_function not in CUTOFF_FUNCTIONS:
            bad(f"cutoff_function {self.cutoff_function!r}; choose one of {CUTOFF_FUNCTIONS}")
        if self.message_normalization not in MESSAGE_NORMALISATIONS:
            bad(f"message_normalization {self.message_normalization!r}; choose one of {MESSAGE_NORMALISATIONS}")
        if self.dtype not in DTYPES:
            bad(f"dtype {self.dtype!r}; choose one of {DTYPES}")
        if self.qkv_projections not in QKV_PROJECTIONS:
            bad(f"qkv_projections {self.qkv_projections!r}; choose one of {QKV_PROJECTIONS}")
        if self.qk_non_linearity not in QK_NON_LINEARITIES:
            bad(f"qk_non_linearity {self.qk_non_linearity!r}; choose one of {QK_NON_LINEARITIES}")
        if not self.layer_norm_eps > 0:
            bad(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if self.long_range and not self.long_range_cutoff > self.cutoff:
            bad(f"long_range_cutoff ({self.long_range_cutoff} A) must exceed the cutoff ({self.cutoff} A)")
        if self.dispersion and not 0 < self.dispersion_damping < self.long_range_cutoff:
            bad(f"dispersion_damping must lie between 0 and long_range_cutoff, got {self.dispersion_damping}")
        if not self.zbl_switch_radius > 0:
            bad(f"zbl_switch_radius must be positive (Angstrom), got {self.zbl_switch_radius}")

    @property
    def interaction_range(self) -> float:
        """An atom's energy depends on atoms up to num_layers * cutoff away."""
        return self.num_layers * self.cutoff

    @property
    def long_range(self) -> bool:
        """Electrostatics or dispersion: a second pair list up to long_range_cutoff."""
        return self.electrostatics or self.dispersion

    @property
    def global_inputs(self) -> bool:
        """Total charge / spin embeddings (inputs of the whole structure)."""
        return self.charge_embedding or self.spin_embedding

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "So3kratesConfig":
        """A config dict as saved in checkpoints and exported metadata. A dict without
        `qkv_projections` was saved before the reference layer options existed: it keeps the
        architecture it was trained with (full q/k/v matrices, LayerNorm eps 1e-5, its one
        `layer_norm` switch for both LayerNorms, its `residual_mlp` after the exchange block, no ZBL)."""
        d = dict(d)
        if "qkv_projections" not in d:
            layer_norm = bool(d.pop("layer_norm", False))
            residual_mlp = bool(d.pop("residual_mlp", False))
            legacy = dict(qkv_projections="full", layer_norm_eps=1e-5, zbl_repulsion=False,
                          layer_normalization_1=layer_norm, layer_normalization_2=layer_norm,
                          residual_mlp_2=residual_mlp)
            d = {**legacy, **d}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown so3krates config keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "So3kratesConfig":
        return dataclasses.replace(self, **changes)


# Presets: "default" follows the paper/SO3LR sizes; tiny and small are for tests and the demo.
# "so3lr" is SO3LR's short-range network (so3lr/params/hyperparameters.json, "model"), which
# `so3krates train` can train. The whole published SO3LR (with its charge/spin embeddings,
# electrostatics and dispersion, switched on by the options above) ships with its parameters:
# so3krates/pretrained/so3lr/so3lr.json, `so3krates pretrained so3lr`.
PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(features=16, degrees=[1, 2], num_layers=1, num_heads=2, num_rbf=8, cutoff=4.0),
    "small": dict(features=48, degrees=[1, 2, 3], num_layers=2, num_heads=4, num_rbf=16, cutoff=4.5),
    "default": dict(features=128, degrees=[1, 2, 3, 4], num_layers=3, num_heads=4, num_rbf=32, cutoff=4.5),
    "so3lr": dict(features=128, degrees=[1, 2, 3, 4], num_layers=3, num_heads=4, num_rbf=32, cutoff=4.5,
                  cutoff_function="physnet", message_normalization="avg_neighbors",
                  avg_num_neighbors=13.168995780096482, layer_normalization_1=True,
                  layer_normalization_2=True, residual_mlp_1=True, residual_mlp_2=False,
                  layer_norm_eps=1e-6, qk_non_linearity="identity", qkv_projections="per_head",
                  radial_basis="bernstein", energy_head_width=128,
                  energy_learn_atomic_type_scales=True, energy_learn_atomic_type_shifts=True,
                  zbl_repulsion=True, zbl_switch_radius=1.5),
}


def preset(name: str, **overrides: Any) -> So3kratesConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return So3kratesConfig(**{**PRESETS[name], **overrides})
