"""One row -> a symmetric crystal (``decode_row``), or the reason it is none.

Decoding is exact and never silent: each site's (x, y, z) is projected onto its
Wyckoff position -- the nearest point, in Å under the cell's metric, of any of the
affine subspaces that make up the orbit -- and the row is invalid, with the reason,
only when that point is farther than ``tol`` Å.  pyxtal's own
``from_tabular_representation`` silently drops such sites (METHOD.md section 1).
It needs no pyxtal object, so that validity checks of millions of generated rows
are cheap (``frame.decode_frame`` is the same check over a partition's arrays).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from ase import Atoms
from ase.data import atomic_numbers
from ase.geometry import cellpar_to_cell

from .. import schema as S
from .cell import LATTICE_DOF, metric_tensor, nearest_distance, symmetrize_cell
from .wyckoff import WyckoffOps, group_info, orbit_many, project, wyckoff_ops

class DecodeError(ValueError):
    """A row that is not a valid crystal; the message says why."""


# the reason of a row whose sites all lie on their Wyckoff positions but whose atoms
# overlap: valid by pyxtal's decoder (the paper's criterion), which checks no distances
OVERLAP = "atoms on top of each other"


@dataclass
class Site:
    """One decoded Wyckoff site."""

    wp: WyckoffOps
    element: str
    point: np.ndarray        # the row's orbit member, projected, in [0, 1)
    free: np.ndarray         # free parameters: orbit point j is A[j] @ free + t[j]
    moved: float             # Å moved by the projection

    @property
    def generator(self) -> np.ndarray:
        """The orbit's first position (pyxtal's ``wp.ops[0]``), not wrapped."""
        return self.wp.A[0] @ self.free + self.wp.t[0]

    def orbit(self) -> np.ndarray:
        """Fractional coordinates of every atom of the orbit, (multiplicity, 3)."""
        return orbit_many(self.wp, self.free[None])[0]


@dataclass
class Decoded:
    """A row decoded into a symmetric crystal."""

    spg: int
    cell: np.ndarray               # symmetrized (a, b, c, alpha, beta, gamma)
    sites: list[Site] = field(default_factory=list)

    @property
    def natoms(self) -> int:
        return sum(s.wp.multiplicity for s in self.sites)

    @property
    def dof(self) -> int:
        lt, _ = group_info(self.spg)
        return LATTICE_DOF[lt] + sum(s.wp.dof for s in self.sites)

    def positions(self) -> tuple[np.ndarray, list[str]]:
        """Fractional coordinates of all atoms and their symbols."""
        frac, symbols = [], []
        for s in self.sites:
            o = s.orbit()
            frac.append(o)
            symbols += [s.element] * len(o)
        return np.concatenate(frac), symbols

    def to_atoms(self) -> Atoms:
        frac, symbols = self.positions()
        return Atoms(symbols=symbols, scaled_positions=frac,
                     cell=cellpar_to_cell(self.cell), pbc=True)


def _num(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def decode_row(row: Mapping[str, Any], tol: float = 0.5, min_distance: float = 0.6,
               max_atoms: int = 2000, default_element: str | None = None,
               check_distances: bool = True) -> Decoded:
    """Decode one row into a symmetric crystal, or raise ``DecodeError`` saying why.

    ``tol``: how far (Å) a site may be from its Wyckoff position before the row is
    invalid; ``min_distance``: atoms closer than this (Å) make the row invalid.
    """
    spg_f = _num(row, S.SPG)
    if not math.isfinite(spg_f) or spg_f != round(spg_f) or not 1 <= spg_f <= 230:
        raise DecodeError(f"space group {row.get(S.SPG)!r} is not an integer in 1..230")
    spg = int(spg_f)
    lattice_type, n_wp = group_info(spg)
    cell = np.array([_num(row, c) for c in S.CELL])
    if not np.all(np.isfinite(cell)):
        raise DecodeError("cell has NaN or infinite values")
    if np.any(cell[:3] < 1.0) or np.any(cell[:3] > 200.0):
        raise DecodeError(f"cell lengths {np.round(cell[:3], 3).tolist()} outside 1-200 Å")
    if np.any(cell[3:] <= 10.0) or np.any(cell[3:] >= 170.0):
        raise DecodeError(f"cell angles {np.round(cell[3:], 2).tolist()} outside 10-170°")
    cell = symmetrize_cell(cell, lattice_type)
    G = metric_tensor(cell)
    det = float(np.linalg.det(G))
    if not det > 1e-6:
        raise DecodeError("cell angles give no positive volume")
    volume = math.sqrt(det)
    out = Decoded(spg, cell)
    for k in range(S.MAX_SITES):
        wp_col, el_col, x_col, y_col, z_col = S.site_columns(k)
        wp_f = _num(row, wp_col)
        if math.isnan(wp_f) or wp_f < 0:
            continue
        if wp_f != round(wp_f) or wp_f >= n_wp:
            raise DecodeError(site_reason(k, WYCKOFF_INDEX, row.get(wp_col), n_wp, spg))
        xyz = np.array([_num(row, x_col), _num(row, y_col), _num(row, z_col)])
        if not np.all(np.isfinite(xyz)):
            raise DecodeError(site_reason(k, COORDINATES))
        el = row.get(el_col)
        if el is None or (isinstance(el, float) and math.isnan(el)):
            el = default_element
        if el not in atomic_numbers:
            raise DecodeError(site_reason(k, ELEMENT, el))
        ops = wyckoff_ops(spg, int(wp_f))
        point, free, moved = project(ops, xyz, G)
        if moved > tol:
            raise DecodeError(off_position_reason(k, xyz, moved, ops, tol))
        out.sites.append(Site(ops, str(el), point, free, moved))
        if out.natoms > max_atoms:
            raise DecodeError(too_many_reason(max_atoms))
    if not out.sites:
        raise DecodeError(NO_SITE)
    if volume / out.natoms < 1.0:
        raise DecodeError(dense_reason(volume / out.natoms))
    if check_distances:
        _check_distances(out, min_distance)
    return out


def _check_distances(dec: Decoded, min_distance: float) -> None:
    frac, _ = dec.positions()
    d = nearest_distance(frac, cellpar_to_cell(dec.cell), min_distance)
    if d < min_distance:
        raise DecodeError(overlap_reason(d, min_distance))


# The reasons of invalid rows that both decoders give (the row-wise one words the rest).
NO_SITE = "no occupied Wyckoff site"
# which of a site's checks before its projection fails (0: none)
WYCKOFF_INDEX, COORDINATES, ELEMENT = 1, 2, 3


def site_reason(k: int, check: int, value: Any = None, n_wp: int = 0, spg: int = 0) -> str:
    """Why site ``k`` failed ``check``; ``value``: its Wyckoff index or element."""
    if check == WYCKOFF_INDEX:
        return (f"site {k}: Wyckoff index {value!r} is not one of 0..{n_wp - 1} "
                f"of space group {spg}")
    if check == COORDINATES:
        return f"site {k}: coordinates have NaN or infinite values"
    if value is None:
        return f"site {k}: no element given (name it in el{k} or pass --element)"
    return f"site {k}: element {value!r} is not a chemical element"


def off_position_reason(k: int, xyz: np.ndarray, moved: float, ops: WyckoffOps,
                        tol: float) -> str:
    """Why site ``k`` at ``xyz`` is not on its position: it moved farther than ``tol``."""
    return (f"site {k}: ({xyz[0]:.4f}, {xyz[1]:.4f}, {xyz[2]:.4f}) is {moved:.3f} Å from "
            f"Wyckoff position {ops.label} (tolerance {tol} Å)")


def only_overlapping(df: pd.DataFrame) -> pd.Series:
    """Rows of a decoded frame that are invalid only because atoms overlap (every site
    on its Wyckoff position): valid without the distance check, as by pyxtal's decoder."""
    if S.ERROR not in df.columns:
        return pd.Series(False, index=df.index)
    return df[S.ERROR].astype("string").str.endswith(OVERLAP).fillna(False).astype(bool)


def too_many_reason(max_atoms: int) -> str:
    """Why a row's cell holds too many atoms."""
    return f"more than {max_atoms} atoms in the cell"


def dense_reason(volume_per_atom: float) -> str:
    """Why a cell too small for its atoms is invalid."""
    return f"{volume_per_atom:.3f} Å^3 per atom: {OVERLAP}"


def overlap_reason(d: float, min_distance: float) -> str:
    """Why a row with two atoms ``d`` Å apart is invalid."""
    return f"two atoms are {d:.3f} Å apart (< {min_distance} Å): {OVERLAP}"


def decoded_columns(dec: Decoded) -> dict[str, Any]:
    """The structure columns of a decoded row: its symmetrised cell, its sites in
    order, projected, unused sites empty, and the derived columns."""
    cols: dict[str, Any] = dict(zip(S.CELL, map(float, dec.cell)))
    for k in range(S.MAX_SITES):
        wp_col, el_col, x_col, y_col, z_col = S.site_columns(k)
        if k < len(dec.sites):
            s = dec.sites[k]
            cols.update({wp_col: s.wp.index, el_col: s.element,
                         x_col: float(s.point[0]), y_col: float(s.point[1]),
                         z_col: float(s.point[2])})
        else:
            cols.update({wp_col: -1, el_col: None, x_col: math.nan, y_col: math.nan,
                         z_col: math.nan})
    cols.update(natoms=dec.natoms, n_sites=len(dec.sites), dof=dec.dof, valid_xtal=True,
                error=None)
    return cols

