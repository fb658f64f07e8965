"""Overlap kernels: the rows of a frame whose atoms come closer than a cutoff.

Rows of one symmetry (group and Wyckoff indices) are checked together, with array
operations; a distance that the decoder would round ambiguously is left to
``cell.nearest_distance``, what the row-wise check computes, so that both agree.
"""

from __future__ import annotations

import math

import numpy as np
from ase.geometry import cellpar_to_cell

from .cell import nearest_distance
from .wyckoff import orbit_many, wyckoff_ops

def overlaps(spg: np.ndarray, wp: np.ndarray, used: np.ndarray, free: np.ndarray,
             mult: np.ndarray, rows: np.ndarray, cell: np.ndarray, G: np.ndarray,
             cutoff: float) -> list[tuple[int, float]]:
    """``(row, shortest distance)`` of the rows (a mask) with atoms closer than ``cutoff``;
    ``spg`` (n,), ``wp``, ``used``, ``mult`` (n, MAX_SITES) and ``free`` (n, MAX_SITES, 3):
    each row's group, sites, their multiplicities and free parameters; ``cell`` (n, 6)
    and ``G`` (n, 3, 3) its symmetrised cell and metric.

    Rows of one symmetry (group and Wyckoff indices) are checked together: the
    distances from one atom of each site (every atom is the image of one of these
    under a symmetry operation, an isometry of the symmetrised cell) to every atom.
    A distance within 1e-9 Å of the cutoff or of a rounding step of the reason is
    left to ``nearest_distance`` (what the row-wise check computes), so that both
    paths agree exactly.
    """
    found: list[tuple[int, float]] = []
    idx = np.flatnonzero(rows)
    if not len(idx):
        return found
    _, groups = np.unique(np.column_stack([spg[idx], wp[idx]]), axis=0, return_inverse=True)
    groups = groups.ravel()
    for g in np.unique(groups):
        r = idx[groups == g]
        slots = np.flatnonzero(used[r[0]])
        frac = np.concatenate([orbit_many(wyckoff_ops(int(spg[r[0]]), int(wp[r[0], k])),
                                          free[r, k]) for k in slots], axis=1)
        reps = np.cumsum([0, *mult[r[0], slots][:-1]])
        # the cutoff in fractions of each lattice plane spacing
        span = cutoff * np.sqrt(np.diagonal(np.linalg.inv(G[r]), axis1=1, axis2=2))
        wide = span.max(1) <= 0.5
        shortest = np.empty(len(r))
        shortest[wide] = _shortest_minimum_image(frac[wide], reps, G[r[wide]])
        if not wide.all():
            shortest[~wide] = _shortest_over_shifts(frac[~wide], reps, G[r[~wide]],
                                                    span[~wide].max(0), cutoff)
        for i, f, d in zip(r, frac, shortest.tolist()):
            if abs(d - cutoff) < 1e-9 or (
                    d < cutoff and abs(d * 1000 - math.floor(d * 1000) - 0.5) < 1e-6):
                d = nearest_distance(f, cellpar_to_cell(cell[i]), cutoff)
            if d < cutoff:
                found.append((int(i), d))
    return found


def _shortest_minimum_image(frac: np.ndarray, reps: np.ndarray, G: np.ndarray,
                            budget: int = 1 << 21) -> np.ndarray:
    """Shortest distance from the atoms ``reps`` to any other, per row of ``frac``
    (m, N, 3), where the cutoff is at most half of every plane spacing: then only
    the nearest image of each atom can be closer than it."""
    out = np.empty(len(frac))
    step = max(1, budget // (len(reps) * frac.shape[1]))
    for s in range(0, len(frac), step):
        f = frac[s:s + step]
        delta = f[:, None, :, :] - f[:, reps, None, :]                 # (m, K, N, 3)
        delta -= np.round(delta)
        cart = delta @ np.linalg.cholesky(G[s:s + step])[:, None]
        d2 = (cart * cart).sum(-1)
        d2[:, np.arange(len(reps)), reps] = np.inf                     # an atom and itself
        out[s:s + step] = np.sqrt(d2.reshape(len(f), -1).min(1))
    return out


def _shortest_over_shifts(frac: np.ndarray, reps: np.ndarray, G: np.ndarray,
                          span: np.ndarray, cutoff: float, budget: int = 1 << 20
                          ) -> np.ndarray:
    """As ``_shortest_minimum_image`` for cells thinner than twice the cutoff: over
    every lattice shift within reach (``span``: the cutoff in plane spacings).
    Exact below the cutoff (plus 1e-6 Å); rows with no pair that close get a
    lower bound of their shortest distance that is at least the cutoff."""
    reach = np.ceil(span + 1e-9).astype(int)
    shifts = np.array(np.meshgrid(*[np.arange(-q, q + 1) for q in reach], indexing="ij"),
                      float).reshape(3, -1).T
    n_reps, n_atoms, n_shifts = len(reps), frac.shape[1], len(shifts)
    self_pair = np.zeros((n_reps, n_atoms, n_shifts), bool)
    self_pair[np.arange(n_reps), reps, n_shifts // 2] = True
    out = np.full(len(frac), np.inf)
    step = max(1, budget // self_pair.size)
    for s in range(0, len(frac), step):
        lat = np.linalg.cholesky(G[s:s + step])                        # rows: lattice vectors
        cart = frac[s:s + step] @ lat                                  # (m, N, 3)
        u = cart[:, None, :, :] - cart[:, reps, None, :]               # (m, K, N, 3)
        sc = shifts @ lat                                              # (m, S, 3)
        m = len(u)
        # |u + s|^2 expanded (one matrix product) finds the rows with a close pair ...
        d2 = ((u * u).sum(-1)[..., None] + (sc * sc).sum(-1)[:, None, None, :]
              + 2 * (u.reshape(m, -1, 3) @ np.swapaxes(sc, 1, 2)).reshape(
                  m, n_reps, n_atoms, n_shifts))
        near = np.flatnonzero(np.where(self_pair, np.inf, d2).reshape(m, -1).min(1)
                              < (cutoff + 1e-6) ** 2)
        # ... whose distances are then computed directly, without the cancellation
        delta = u[near, :, :, None, :] + sc[near, None, None, :, :]
        out[s + near] = np.sqrt(np.where(self_pair, np.inf, (delta * delta).sum(-1))
                                .reshape(len(near), self_pair.size).min(1, initial=np.inf))
    return out
