"""Cell maths: a lattice type's constraints on the cell, the metric tensor, the
shortest interatomic distance of a periodic crystal."""

from __future__ import annotations

import numpy as np

# Lattice degrees of freedom by lattice type (pyxtal's settings: monoclinic
# unique axis b, trigonal groups in the hexagonal setting).
LATTICE_DOF = {"triclinic": 6, "monoclinic": 4, "orthorhombic": 3, "tetragonal": 2,
               "trigonal": 2, "hexagonal": 2, "cubic": 1}


def symmetrize_cell(cell: np.ndarray, lattice_type: str) -> np.ndarray:
    """Impose the lattice type's constraints on ``(a, b, c, alpha, beta, gamma)``
    (one cell, or cells along the first axes: shape (..., 6))."""
    cell = np.asarray(cell, float)
    out = cell.copy()
    a, b, c = cell[..., 0], cell[..., 1], cell[..., 2]
    if lattice_type == "cubic":
        out[..., :3] = ((a + b + c) / 3)[..., None]
    elif lattice_type in ("tetragonal", "hexagonal", "trigonal"):
        out[..., :2] = ((a + b) / 2)[..., None]
    if lattice_type in ("cubic", "tetragonal", "orthorhombic"):
        out[..., 3:] = 90.0
    elif lattice_type in ("hexagonal", "trigonal"):
        out[..., 3:] = (90.0, 90.0, 120.0)
    elif lattice_type == "monoclinic":
        out[..., 3] = out[..., 5] = 90.0
    return out


def metric_tensor(cell: np.ndarray) -> np.ndarray:
    """Metric tensor of a cell (3, 3), or of cells (..., 6) -> (..., 3, 3)."""
    cell = np.asarray(cell, float)
    a, b, c = cell[..., 0], cell[..., 1], cell[..., 2]
    cos = np.cos(np.radians(cell[..., 3:]))
    ca, cb, cg = cos[..., 0], cos[..., 1], cos[..., 2]
    rows = [[a * a, a * b * cg, a * c * cb],
            [a * b * cg, b * b, b * c * ca],
            [a * c * cb, b * c * ca, c * c]]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def nearest_distance(frac: np.ndarray, cell: np.ndarray, cutoff: float) -> float:
    """Shortest distance between two atoms of a periodic crystal, or ``inf`` when
    none is shorter than ``cutoff`` (a k-d tree over the images within reach)."""
    from scipy.spatial import cKDTree

    recip = np.linalg.inv(cell).T                      # rows: reciprocal vectors / 2π
    reach = np.ceil(cutoff * np.linalg.norm(recip, axis=1)).astype(int)
    shifts = np.array(np.meshgrid(*[np.arange(-r, r + 1) for r in reach],
                                  indexing="ij")).reshape(3, -1).T
    images = (frac[None, :, :] + shifts[:, None, :]).reshape(-1, 3) @ cell
    dist, _ = cKDTree(images).query(frac @ cell, k=2, distance_upper_bound=cutoff)
    return float(dist[:, 1].min())

