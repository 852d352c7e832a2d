"""The SO3krates network (Frank, Unke, Mueller, Chmiela, Nat. Commun. 2024), its data and training."""
from .config import So3kratesConfig, PRESETS
from .network import So3krates
from .potential import Potential

__all__ = ["So3kratesConfig", "PRESETS", "So3krates", "Potential"]
