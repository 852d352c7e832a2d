"""One config object for every architecture choice of the network."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

MESSAGE_NORMALISATIONS = ("sqrt_d", "avg_neighbors")
RADIAL_BASES = ("bernstein", "gaussian")
CUTOFF_FUNCTIONS = ("cosine", "physnet")
DTYPES = ("float32", "float64")


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
    layer_norm: bool = False       # LayerNorm after attention and at the end of each layer
    residual_mlp: bool = False     # residual MLP on x at the end of each layer
    energy_head_width: Optional[int] = None  # R in the energy head; defaults to F
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

    @property
    def interaction_range(self) -> float:
        """An atom's energy depends on atoms up to num_layers * cutoff away."""
        return self.num_layers * self.cutoff

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "So3kratesConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown so3krates config keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "So3kratesConfig":
        return dataclasses.replace(self, **changes)


# Presets: "default" follows the paper/SO3LR sizes; tiny and small are for tests and the demo.
PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(features=16, degrees=[1, 2], num_layers=1, num_heads=2, num_rbf=8, cutoff=4.0),
    "small": dict(features=48, degrees=[1, 2, 3], num_layers=2, num_heads=4, num_rbf=16, cutoff=4.5),
    "default": dict(features=128, degrees=[1, 2, 3, 4], num_layers=3, num_heads=4, num_rbf=32, cutoff=4.5),
    "so3lr": dict(features=128, degrees=[1, 2, 3, 4], num_layers=3, num_heads=4, num_rbf=32, cutoff=4.5,
                  cutoff_function="physnet", message_normalization="avg_neighbors",
                  avg_num_neighbors=13.169, layer_norm=True, residual_mlp=True),
}


def preset(name: str, **overrides: Any) -> So3kratesConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return So3kratesConfig(**{**PRESETS[name], **overrides})
