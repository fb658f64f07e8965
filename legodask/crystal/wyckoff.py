"""Wyckoff positions as arrays: orbits, projection onto a position, the one wrap.

A Wyckoff position of a space group is an orbit of affine maps: orbit point ``j`` of
free parameters ``x`` is ``A[j] @ x + t[j]``.  ``project_many`` finds the nearest
point (in Å under a cell's metric) of any of the orbit's affine subspaces, which is
how the decoder tells a site on its position from one that is not (METHOD.md
section 1).  pyxtal's group tables are read once per process, under one lock.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

@dataclass(frozen=True)
class WyckoffOps:
    """A Wyckoff position as arrays: orbit point ``j`` is ``A[j] @ x + t[j]``."""

    spg: int
    index: int
    letter: str
    multiplicity: int
    A: np.ndarray          # (J, 3, 3)
    t: np.ndarray          # (J, 3)
    basis: np.ndarray      # (J, 3, d): orthonormal basis of each A[j]'s column space
    pinv: np.ndarray       # (J, 3, 3): pseudo-inverse of each A[j]
    dof: int

    @property
    def label(self) -> str:
        """The position's name as the International Tables write it: ``'8a'``."""
        return f"{self.multiplicity}{self.letter}"


# One thread at a time in pyxtal calls that parse or print: pyxtal builds a Group by
# ``ast.literal_eval`` of its tables, and CPython's parser fails ("AST constructor
# recursion depth mismatch") when threads parse at once; and ``sys.stdout`` is the
# process's, so two threads' interleaved redirects would leave it pointing at a buffer.
PYXTAL_LOCK = threading.RLock()


def new_group(spg: int) -> Any:
    """A new pyxtal ``Group``, built by one thread at a time."""
    from pyxtal.symmetry import Group

    with PYXTAL_LOCK:
        return Group(spg)


@functools.lru_cache(maxsize=None)
def _group(spg: int) -> Any:
    """pyxtal's ``Group`` (slow to build: once per process and group)."""
    return new_group(spg)


@functools.lru_cache(maxsize=None)
def group_info(spg: int) -> tuple[str, int]:
    """``(lattice_type, number of Wyckoff positions)`` of a space group."""
    g = _group(spg)
    return g.lattice_type, len(g)


@functools.lru_cache(maxsize=None)
def wyckoff_ops(spg: int, index: int) -> WyckoffOps:
    """The orbit of Wyckoff position ``index`` of group ``spg`` as affine maps."""
    wp = _group(spg)[index]
    aff = np.array([op.affine_matrix for op in wp.ops])
    A, t = aff[:, :3, :3], aff[:, :3, 3]
    dof = int(np.linalg.matrix_rank(A[0])) if wp.get_dof() else 0
    bases, pinvs = [], []
    for Aj in A:
        u, s, _ = np.linalg.svd(Aj)
        bases.append(u[:, :dof])
        pinvs.append(np.linalg.pinv(Aj))
    basis = np.array(bases).reshape(len(A), 3, dof)
    return WyckoffOps(spg, index, wp.letter, wp.multiplicity, A, t % 1.0, basis,
                      np.array(pinvs), dof)


@functools.lru_cache(maxsize=None)
def generator_ops(spg: int, index: int) -> WyckoffOps:
    """Wyckoff position ``index`` of group ``spg`` reduced to its first orbit member,
    the generator: projecting onto it gives the nearest point of the generator's form."""
    ops = wyckoff_ops(spg, index)
    return replace(ops, A=ops.A[:1], t=ops.t[:1], basis=ops.basis[:1], pinv=ops.pinv[:1])


# How close to 1 (and above 0) a wrapped coordinate is taken for 0: the decoder's
# tolerances, those of ``np.isclose(w, 1.0, atol=1e-10)`` and ``np.isclose(w, 0.0, atol=1e-12)``.
NEAR_ONE = 1e-10 + 1e-5
NEAR_ZERO = 1e-12


def wrap(v: np.ndarray, near_one: float = NEAR_ONE, near_zero: float | None = NEAR_ZERO
         ) -> np.ndarray:
    """Fractional coordinates into [0, 1): a value within ``near_one`` below 1, or within
    ``near_zero`` above 0 (``None``: no such rule), becomes 0.  The one wrap of the
    project; a caller that wrote its rows with other tolerances passes them, so that
    its rows stay what they were."""
    w = v - np.floor(v)
    w[np.abs(w - 1.0) <= near_one] = 0.0
    if near_zero is not None:
        w[np.abs(w) <= near_zero] = 0.0
    return w


# Lattice shifts tried by the projection, the zero shift first (ties prefer it).
_SHIFTS = np.array(sorted(([i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)),
                          key=lambda v: sum(map(abs, v))), float)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum over the last axis of ``a * b`` (broadcast), term by term in a fixed order.

    No BLAS and no einsum: a row's result is the same to the last bit whatever
    batch it is computed in, so the vectorised decoder equals the row-wise one.
    """
    out = a[..., 0] * b[..., 0]
    for i in range(1, a.shape[-1]):
        out += a[..., i] * b[..., i]
    return out


def project_many(ops: WyckoffOps, xyz: np.ndarray, metric: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``project`` of ``m`` points at once: ``xyz`` (m, 3), ``metric`` (m, 3, 3).

    Returns ``(point, free, moved)`` of shapes (m, 3), (m, 3), (m,).  The (m, J, 27)
    candidates (orbit member, lattice shift) are held one Cartesian component per
    array, so that every operation runs over contiguous memory.
    """
    p = xyz - np.floor(xyz)
    if ops.dof == 3:  # a general position: every point is on it, as itself
        return wrap(p), _dot(ops.pinv[0], (p - ops.t[0])[:, None, :]), np.zeros(len(p))
    # displacement from each subspace's anchor, over lattice shifts: 3 x (m, J, 27)
    d = [p[:, a, None, None] - ops.t[None, :, a, None] - _SHIFTS[None, None, :, a]
         for a in range(3)]
    if ops.dof:
        B = ops.basis                                                  # (J, 3, d)
        # G B: (m, J, 3, d), then B^T G B: (m, J, d, d)
        GB = _dot(metric[:, None, :, None, :], np.swapaxes(B, 1, 2)[None, :, None])
        BtGB = _dot(np.swapaxes(B, 1, 2)[None, :, :, None, :], np.swapaxes(GB, 2, 3)[:, :, None])
        inv = np.linalg.inv(BtGB)
        rhs = [_sum3(GB[:, :, 0, e, None], GB[:, :, 1, e, None], GB[:, :, 2, e, None], d)
               for e in range(ops.dof)]                               # d x (m, J, 27)
        coef = [_sum(inv[:, :, c, e, None] * rhs[e] for e in range(ops.dof))
                for c in range(ops.dof)]
        along = [_sum(B[None, :, a, c, None] * coef[c] for c in range(ops.dof))
                 for a in range(3)]                                    # 3 x (m, J, 27)
        resid = [d[a] - along[a] for a in range(3)]
    else:
        along, resid = [np.zeros_like(d[0])] * 3, d
    G = metric[:, None, None]                                          # (m, 1, 1, 3, 3)
    dist2 = _sum(resid[a] * _sum3(G[..., a, 0], G[..., a, 1], G[..., a, 2], resid)
                 for a in range(3))
    # Ties (a general position lies on every member's subspace) go to the first
    # orbit member and the zero shift, so that a generator maps to itself.
    flat = dist2.reshape(len(p), -1)
    first = np.argmax(flat <= flat.min(axis=1, keepdims=True) + 1e-12, axis=1)
    j, s = np.divmod(first, len(_SHIFTS))
    rows = np.arange(len(p))
    chosen = np.stack([along[a][rows, j, s] for a in range(3)], axis=1)
    free = _dot(ops.pinv[j], chosen[:, None, :])
    point = chosen + ops.t[j] + _SHIFTS[s]
    return wrap(point), free, np.sqrt(np.maximum(flat[rows, first], 0.0))


def _sum(terms: Any) -> np.ndarray:
    """The sum of arrays, left to right."""
    it = iter(terms)
    out = next(it)
    for t in it:
        out = out + t
    return out


def _sum3(x: np.ndarray, y: np.ndarray, z: np.ndarray, v: list[np.ndarray]) -> np.ndarray:
    """``x * v[0] + y * v[1] + z * v[2]``, left to right."""
    return x * v[0] + y * v[1] + z * v[2]


def project(ops: WyckoffOps, xyz: np.ndarray, metric: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Nearest point of the orbit's subspaces to fractional ``xyz``.

    Returns ``(point, free, distance_in_Å)``: the projected point (the same orbit
    member that ``xyz`` was nearest to, wrapped into [0, 1)), the free parameters
    ``x`` of the orbit (orbit point ``j`` is ``A[j] x + t[j]``) and the distance moved.
    """
    point, free, moved = project_many(ops, xyz[None], metric[None])
    return point[0], free[0], float(moved[0])


def orbit_many(ops: WyckoffOps, free: np.ndarray, near_one: float = NEAR_ONE,
               near_zero: float | None = NEAR_ZERO) -> np.ndarray:
    """Fractional coordinates of the orbits of ``m`` sites, (m, multiplicity, 3), in
    the order of the position's operations, wrapped by ``wrap`` (its tolerances)."""
    return wrap(_dot(ops.A[None], free[:, None, None, :]) + ops.t, near_one, near_zero)
