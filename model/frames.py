"""A periodic cell in the frame that OpenMM and LAMMPS require: lattice vector a along x, b in the
xy plane (a lower-triangular cell matrix). An arbitrary cell gets there by one rotation of the whole
system, which leaves energies unchanged and rotates forces and virials with it."""
from __future__ import annotations

from typing import Tuple

import numpy as np


def lower_triangular_frame(cell: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(rotation, lower) with lower = cell @ rotation lower-triangular and a positive diagonal;
    vectors go into the engine's frame as v @ rotation and come back as v @ rotation.T."""
    cell = np.asarray(cell, dtype=float)
    if abs(np.linalg.det(cell)) < 1e-9:
        raise ValueError("periodic structure with a degenerate cell: give three lattice vectors")
    # cell.T = Q R (QR): cell @ Q = R.T, lower-triangular; signs make its diagonal positive.
    q, r = np.linalg.qr(cell.T)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    q = q * signs
    lower = cell @ q
    lower[np.triu_indices(3, 1)] = 0.0    # round-off above the diagonal
    return q, lower
