"""TorchScript-compatible neighbour search: a cell list, linear in the number of atoms.

Used inside the exported model for engines that pass only positions and a box (OpenMM).
Periodic images are added explicitly for atoms within one cutoff of a periodic face, so
orthorhombic and triclinic cells, mixed periodicity and unwrapped positions all work.
Each periodic cell height must be at least the cutoff (one image shell).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch



def cell_heights(cell: torch.Tensor) -> torch.Tensor:
    """Distances between opposite faces of the cell spanned by the rows of `cell`."""
    volume = torch.abs(torch.linalg.det(cell))
    a, b, c = cell[0], cell[1], cell[2]
    areas = torch.stack([torch.linalg.norm(torch.linalg.cross(b, c)),
                         torch.linalg.norm(torch.linalg.cross(c, a)),
                         torch.linalg.norm(torch.linalg.cross(a, b))])
    return volume / areas


def _bin_of(p: torch.Tensor, lo: torch.Tensor, size: torch.Tensor, nb: torch.Tensor) -> torch.Tensor:
    b = torch.floor((p - lo) / size).to(torch.long)
    return torch.minimum(torch.clamp(b, min=0), nb - 1)


def neighbor_list(positions: torch.Tensor, cutoff: float, cell: Optional[torch.Tensor] = None,
                  pbc: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Directed pairs i <- j with |R_j - R_i + shift| < cutoff.

    Returns (idx_i, idx_j, shifts) where shifts (E, 3) are Cartesian lattice translations to
    add to R_j - R_i, given for the positions exactly as passed in (wrapped or not).
    """
    pos = positions.detach()
    periodic: List[bool] = [False, False, False]
    if pbc is not None:
        periodic = [bool(pbc[0]), bool(pbc[1]), bool(pbc[2])]
    if periodic[0] or periodic[1] or periodic[2]:
        if cell is None:
            raise ValueError("periodic boundary conditions requested but no cell was given; "
                             "pass the 3x3 cell (rows are lattice vectors, Angstrom)")
        box = cell.detach().to(pos.dtype)
        wrap, pos_w, src_atom, src_shift, src_pos = periodic_sources(pos, cutoff, box, periodic)
    else:
        box = torch.eye(3, dtype=pos.dtype, device=pos.device)
        wrap = torch.zeros_like(pos)
        pos_w, src_pos, src_shift = pos, pos, torch.zeros_like(pos)
        src_atom = torch.arange(pos.shape[0], device=pos.device)
    pair_i, src = cell_list_candidates(pos_w, src_pos, cutoff)

    j_atom = src_atom.index_select(0, src)
    j_shift = src_shift.index_select(0, src)
    # (R_j - R_i) + T rather than (R_j + T) - R_i: the reverse pair then gets exactly -d in floating
    # point, so a pair at the cutoff is kept in both directions or in neither (a symmetric list).
    d = (pos_w.index_select(0, j_atom) - pos_w.index_select(0, pair_i)) + j_shift @ box
    within = (d * d).sum(-1) < cutoff * cutoff
    self_pair = (j_atom == pair_i) & (j_shift == 0).all(dim=-1)
    mask = within & ~self_pair
    idx_i = pair_i[mask]
    idx_j = j_atom[mask]
    # Translate the image shift into one for the positions as given (undo the wrapping).
    shift_int = j_shift[mask] - wrap.index_select(0, idx_j) + wrap.index_select(0, idx_i)
    return idx_i, idx_j, shift_int @ box


def periodic_sources(pos: torch.Tensor, cutoff: float, box: torch.Tensor, periodic: List[bool]
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The atoms wrapped into the cell, and the candidate senders: every atom and each of its
    periodic images (lattice translations in {-1, 0, 1}) that lies within one cutoff of the cell.

    Returns (wrap, wrapped positions, source atom, source shift in lattice units, source position)."""
    device, dtype = pos.device, pos.dtype
    heights = cell_heights(box)
    for a in range(3):
        if periodic[a]:
            h = float(heights[a])
            if not (h >= cutoff):
                raise ValueError("periodic box too small: the cell height along lattice vector "
                                 + str(a) + " is " + str(float(int(h * 1000.0)) / 1000.0) + " A, smaller than the cutoff "
                                 + str(cutoff) + " A; the neighbour search needs every periodic "
                                 "height >= the cutoff: use a supercell (e.g. atoms.repeat)")
    periodic_mask = torch.tensor(periodic, device=device)
    frac = pos @ torch.linalg.inv(box)
    wrap = torch.where(periodic_mask, torch.floor(frac), torch.zeros_like(frac))
    frac = frac - wrap
    pos_w = frac @ box
    choices: List[List[int]] = []
    for a in range(3):
        choices.append([-1, 0, 1] if periodic[a] else [0])
    image_list: List[List[float]] = []
    for s0 in choices[0]:
        for s1 in choices[1]:
            for s2 in choices[2]:
                image_list.append([float(s0), float(s1), float(s2)])
    images = torch.tensor(image_list, dtype=dtype, device=device)            # (S, 3)
    margin = torch.where(periodic_mask, cutoff / heights, torch.full_like(heights, float("inf")))
    img_frac = frac.unsqueeze(0) + images.unsqueeze(1)                          # (S, N, 3)
    keep = ((img_frac >= -margin) & (img_frac < 1.0 + margin)).all(dim=-1)     # (S, N)
    nz = torch.nonzero(keep)
    keep_s, keep_n = nz[:, 0], nz[:, 1]
    src_shift = images.index_select(0, keep_s)
    src_pos = pos_w.index_select(0, keep_n) + src_shift @ box
    return wrap, pos_w, keep_n, src_shift, src_pos


def cell_list_candidates(receivers: torch.Tensor, sources: torch.Tensor, cutoff: float
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Candidate pairs (receiver index, source index) from a cell list of the sources with cells
    of at least one cutoff: every source in the 27 cells around each receiver's cell. Linear in
    the number of atoms; the caller keeps the pairs within the cutoff."""
    device, dtype = sources.device, sources.dtype
    n = receivers.shape[0]
    if sources.shape[0] > 0:
        lo, hi = sources.min(dim=0).values, sources.max(dim=0).values
    else:
        lo, hi = torch.zeros(3, dtype=dtype, device=device), torch.zeros(3, dtype=dtype, device=device)
    extent = hi - lo
    nbins = torch.clamp(torch.floor(extent / cutoff), min=1.0)
    max_cells = float(max(8 * sources.shape[0], 27))  # coarser cells for sparse clusters
    total = float(nbins.prod())
    if total > max_cells:
        nbins = torch.clamp(torch.floor(nbins / (total / max_cells) ** (1.0 / 3.0)), min=1.0)
    size = extent / nbins
    size = torch.where(size > 0, size, torch.ones_like(size))
    nb = nbins.to(torch.long)

    src_bin = _bin_of(sources, lo, size, nb)
    src_key = (src_bin[:, 0] * nb[1] + src_bin[:, 1]) * nb[2] + src_bin[:, 2]
    order = torch.argsort(src_key)
    num_cells = int(nb[0] * nb[1] * nb[2])
    counts = torch.bincount(src_key, minlength=num_cells)
    starts = torch.cumsum(counts, 0) - counts

    offset_list: List[List[int]] = []
    for a in range(-1, 2):
        for b in range(-1, 2):
            for c in range(-1, 2):
                offset_list.append([a, b, c])
    offsets = torch.tensor(offset_list, dtype=torch.long, device=device)
    nbr = _bin_of(receivers, lo, size, nb).unsqueeze(1) + offsets.unsqueeze(0)                     # (N, 27, 3)
    valid = ((nbr >= 0) & (nbr < nb)).all(dim=-1)
    nbr_key = (nbr[..., 0] * nb[1] + nbr[..., 1]) * nb[2] + nbr[..., 2]
    nbr_key = torch.where(valid, nbr_key, torch.zeros_like(nbr_key)).reshape(-1)
    cnt = torch.where(valid.reshape(-1), counts.index_select(0, nbr_key), torch.zeros_like(nbr_key))
    receiver = torch.arange(n, device=device).repeat_interleave(27)
    pair_i = receiver.repeat_interleave(cnt)
    first = starts.index_select(0, nbr_key).repeat_interleave(cnt)
    begin = (torch.cumsum(cnt, 0) - cnt).repeat_interleave(cnt)
    local = torch.arange(pair_i.shape[0], device=device) - begin
    return pair_i, order.index_select(0, first + local)


def find_pairs(positions, cell, pbc, cutoff: float):
    """Full neighbour list of one structure from numpy arrays: (i, j, Cartesian shifts) as numpy.

    vesin (fast, C++) for molecules and fully periodic cells; vesin takes one periodicity flag
    for all directions, so mixed periodicity (e.g. a slab) uses the cell list above.
    """
    import numpy as np
    pbc = np.asarray(pbc, dtype=bool)
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    if pbc.any() and not pbc.all():
        i, j, shifts = neighbor_list(torch.from_numpy(positions), cutoff, torch.from_numpy(cell),
                                     torch.from_numpy(pbc))
        return i.numpy(), j.numpy(), shifts.double().numpy()
    import vesin
    periodic = bool(pbc.all())
    nl = vesin.NeighborList(cutoff=cutoff, full_list=True)
    i, j, s = nl.compute(points=positions, box=cell if periodic else np.zeros((3, 3)), periodic=periodic,
                         quantities="ijS")
    shifts = s.astype(np.float64) @ cell if periodic else np.zeros((len(i), 3))
    return i.astype(np.int64), j.astype(np.int64), shifts
