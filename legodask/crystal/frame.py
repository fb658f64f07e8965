"""The decode kernel over a partition: ``decode_frame``, with array operations.

Every row gets ``decode_row``'s verdict and, when valid, its exact symmetric form --
to the last bit, as ``decode_frame_rowwise`` (the reference it is tested against)
computes it: projections per (space group, Wyckoff index), distance checks per
symmetry (``overlap``).  ``to_generators`` writes every special site on its Wyckoff
generator's subspace, the form a tabular model learns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from ase.data import atomic_numbers

from .. import schema as S
from .cell import LATTICE_DOF, metric_tensor, symmetrize_cell
from .decode import (COORDINATES, ELEMENT, NO_SITE, WYCKOFF_INDEX, DecodeError, decode_row,
                     decoded_columns, dense_reason, off_position_reason, overlap_reason,
                     site_reason, too_many_reason)
from .overlap import overlaps
from .wyckoff import (WyckoffOps, generator_ops, group_info, orbit_many, project_many,
                      wyckoff_ops)

def decode_frame_rowwise(df: pd.DataFrame, tol: float = 0.5, min_distance: float = 0.6,
                         max_atoms: int = 2000, default_element: str | None = None
                         ) -> pd.DataFrame:
    """``decode_frame`` row by row with ``decode_row``: the reference the vectorised
    decoder is tested against, and its path for rows that fail a cheap check."""
    reasons = S.bad_values(df)
    df = S.conform(df)
    records = df.to_dict("records")
    out = []
    for rec in records:
        n_req = sum(1 for k in range(S.MAX_SITES)
                    if not pd.isna(rec.get(f"wp{k}")) and rec.get(f"wp{k}", -1) >= 0)
        try:
            dec = decode_row(rec, tol=tol, min_distance=min_distance, max_atoms=max_atoms,
                             default_element=default_element)
        except DecodeError as exc:
            rec.update(valid_xtal=False, error=str(exc), n_sites=n_req, natoms=0, dof=0)
        except Exception as exc:  # anything unforeseen is a recorded failure too
            rec.update(valid_xtal=False, error=f"{type(exc).__name__}: {exc}",
                       n_sites=n_req, natoms=0, dof=0)
        else:
            rec.update(decoded_columns(dec))
        out.append(rec)
    out = S.conform(pd.DataFrame.from_records(out, columns=list(df.columns), index=df.index))
    return _keep_bad_values(out, df, reasons)


def decode_frame(df: pd.DataFrame, tol: float = 0.5, min_distance: float = 0.6,
                 max_atoms: int = 2000, default_element: str | None = None) -> pd.DataFrame:
    """Decode every row of a partition: project sites onto their Wyckoff positions,
    symmetrise the cell, and fill ``natoms, n_sites, dof, valid_xtal, error``.

    Valid rows are rewritten in their exact symmetric form; invalid rows are kept
    as they came, with the reason in ``error``.  No row is dropped; other columns
    pass through.  The structure columns are ``decode_frame_rowwise``'s to the last
    bit, computed with array operations: projections per (space group, Wyckoff
    index), distance checks per symmetry.
    Rows whose group or cell is wrong take the row-wise path, which words the reason.
    A row with a value its column cannot hold (``schema.bad_values``: ``wp1 = '2b'``,
    ``spg = 70000``) is invalid with that reason, whatever the rest of it decodes to.
    """
    reasons = S.bad_values(df)
    df = S.conform(df)
    n = len(df)
    v = _FrameArrays(df, default_element)
    error = np.full(n, None, dtype=object)
    fast, fails, n_wp = v.checks()
    cell, G, lattice, volume = _frame_cells(v, fast)
    fast &= volume > 0                                 # the row-wise path says why
    # the row-wise order of checks, site by site: the checks before its projection,
    # the projection, the atom count; sites after a failed check are not projected
    k = np.arange(S.MAX_SITES)
    first_fail = np.where((fails > 0).any(1), np.argmax(fails > 0, axis=1), S.MAX_SITES)
    reached = v.used & fast[:, None] & (k < first_fail[:, None])
    proj = _project_sites(v, reached, G)
    cum = np.cumsum(np.where(reached, proj.mult, 0), axis=1)
    never = 3 * S.MAX_SITES
    event = np.minimum.reduce([np.where(reached & (proj.moved > tol), 3 * k + 1, never).min(1),
                               np.where(reached & (cum > max_atoms), 3 * k + 2, never).min(1),
                               3 * first_fail])
    for i in np.flatnonzero(fast & (event < never)):
        site, kind = divmod(int(event[i]), 3)
        if kind == 0:
            check = int(fails[i, site])
            value = int(v.wp[i, site]) if check == WYCKOFF_INDEX else v.el[i, site]
            error[i] = site_reason(site, check, value, int(n_wp[i]), int(v.spg[i]))
        elif kind == 1:
            ops = wyckoff_ops(int(v.spg[i]), int(v.wp[i, site]))
            error[i] = off_position_reason(site, v.xyz[i, site], proj.moved[i, site], ops, tol)
        else:
            error[i] = too_many_reason(max_atoms)
    natoms = cum[:, -1]
    todo = fast & (event == never)
    error[todo & (natoms == 0)] = NO_SITE
    todo &= natoms > 0
    dense = todo & (volume / np.maximum(natoms, 1) < 1.0)
    for i in np.flatnonzero(dense):
        error[i] = dense_reason(volume[i] / natoms[i])
    todo &= ~dense
    for i, d in overlaps(v.spg, v.wp, v.used, proj.free, proj.mult, todo, cell, G,
                         min_distance):
        error[i] = overlap_reason(d, min_distance)
    valid = todo & pd.isna(error)
    cols = {c: df[c].to_numpy(copy=True) for c in _REWRITTEN}
    _write_decoded(cols, v, proj, np.flatnonzero(valid), cell, lattice)
    bad = fast & ~valid
    cols[S.VALID_XTAL][bad] = False
    cols[S.ERROR][bad] = error[bad]
    cols[S.N_SITES][bad] = v.used[bad].sum(1)
    cols[S.NATOMS][bad] = cols[S.DOF][bad] = 0
    if not fast.all():
        ref = decode_frame_rowwise(df[~fast], tol, min_distance, max_atoms, default_element)
        for c in _REWRITTEN:
            cols[c][~fast] = ref[c].to_numpy()
    return _keep_bad_values(S.conform(df.assign(**cols)), df, reasons)


def _keep_bad_values(out: pd.DataFrame, given: pd.DataFrame, reasons: pd.Series
                     ) -> pd.DataFrame:
    """The decoded frame ``out`` with the rows that have a bad value (``reasons``) as
    they were ``given`` (conformed), invalid, with the reason."""
    bad = reasons.notna().to_numpy()
    if not bad.any():
        return out
    out = out.copy()
    for c in _REWRITTEN:
        out.loc[bad, c] = given.loc[bad, c]
    out.loc[bad, S.VALID_XTAL] = False
    out.loc[bad, S.ERROR] = reasons[bad]
    out.loc[bad, S.N_SITES] = (given.loc[bad, S.WP] >= 0).sum(axis=1).astype("int8")
    out.loc[bad, [S.NATOMS, S.DOF]] = 0
    return out


# the columns that decoding rewrites
_REWRITTEN = [*S.CELL, *S.WP, *S.EL, *S.XYZ_FLAT, *S.DERIVED]


def _frame_cells(v: _FrameArrays, rows: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(cell, metric, lattice type, volume)`` of the ``rows`` (a mask) of a frame, each
    cell symmetrised for its group; volume 0 where the angles give none (NaN elsewhere)."""
    n = len(v.spg)
    rows = np.flatnonzero(rows)
    cell = np.full((n, 6), np.nan)
    G = np.full((n, 3, 3), np.nan)
    lattice = np.full(n, "", dtype=object)
    for spg in np.unique(v.spg[rows]):
        r = rows[v.spg[rows] == spg]
        lattice[r] = group_info(int(spg))[0]
        cell[r] = symmetrize_cell(v.cell[r], lattice[r[0]])
    G[rows] = metric_tensor(cell[rows])
    det = np.linalg.det(G[rows])
    volume = np.full(n, np.nan)
    volume[rows] = np.where(det > 1e-6, np.sqrt(np.where(det > 1e-6, det, 1.0)), 0.0)
    return cell, G, lattice, volume


class _FrameArrays:
    """A conformed frame's structure columns as arrays (elements defaulted)."""

    def __init__(self, df: pd.DataFrame, default_element: str | None) -> None:
        n = len(df)
        self.spg = df[S.SPG].to_numpy(np.int64)
        self.cell = df[S.CELL].to_numpy(float)
        self.wp = df[S.WP].to_numpy(np.int64)
        self.xyz = df[S.XYZ_FLAT].to_numpy(float).reshape(n, S.MAX_SITES, 3)
        el = df[S.EL].to_numpy(object)
        self.el = np.where(pd.isna(el), default_element, el)
        self.used = self.wp >= 0

    def checks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The checks ``decode_row`` makes before projecting: the rows whose group
        and cell pass, each used site's first failed check (``WYCKOFF_INDEX``, ...,
        0 for none) and the number of Wyckoff positions of each row's group."""
        spg_ok = (self.spg >= 1) & (self.spg <= 230)
        n_wp = np.zeros(len(self.spg), np.int64)
        for spg in np.unique(self.spg[spg_ok]):
            n_wp[self.spg == spg] = group_info(int(spg))[1]
        lengths, angles = self.cell[:, :3], self.cell[:, 3:]
        with np.errstate(invalid="ignore"):
            cell_ok = (np.isfinite(self.cell).all(1) & (lengths >= 1.0).all(1)
                       & (lengths <= 200.0).all(1) & (angles > 10.0).all(1)
                       & (angles < 170.0).all(1))
        el_ok = pd.DataFrame(self.el).isin(list(atomic_numbers)).to_numpy()
        fails = np.select([self.wp >= n_wp[:, None], ~np.isfinite(self.xyz).all(2), ~el_ok],
                          [WYCKOFF_INDEX, COORDINATES, ELEMENT], 0)
        return spg_ok & cell_ok, np.where(self.used, fails, 0), n_wp


@dataclass
class _Projected:
    """Every site of a frame projected: (n, MAX_SITES, ...) arrays."""

    point: np.ndarray
    free: np.ndarray
    moved: np.ndarray
    mult: np.ndarray
    dof: np.ndarray


def _project_sites(v: _FrameArrays, sites: np.ndarray, G: np.ndarray,
                   chunk: int = 4096) -> _Projected:
    """Project ``sites`` (a (rows, MAX_SITES) mask), one batch per (group, Wyckoff index)."""
    n = len(v.spg)
    out = _Projected(np.full((n, S.MAX_SITES, 3), np.nan), np.full((n, S.MAX_SITES, 3), np.nan),
                     np.full((n, S.MAX_SITES), np.inf), np.zeros((n, S.MAX_SITES), np.int64),
                     np.zeros((n, S.MAX_SITES), np.int64))
    for ops, ri, ki in _site_batches(v, sites, chunk):
        point, free, moved = project_many(ops, v.xyz[ri, ki], G[ri])
        out.point[ri, ki], out.free[ri, ki], out.moved[ri, ki] = point, free, moved
        out.mult[ri, ki] = ops.multiplicity
        out.dof[ri, ki] = ops.dof
    return out


def _site_batches(v: _FrameArrays, sites: np.ndarray, chunk: int
                  ) -> Iterator[tuple[WyckoffOps, np.ndarray, np.ndarray]]:
    """``(Wyckoff position, rows, site indices)`` of the ``sites`` (a (rows, MAX_SITES)
    mask), one Wyckoff position at a time, in batches of about ``chunk`` orbit points."""
    r, k = np.nonzero(sites)
    keys = v.spg[r] * 10_000 + v.wp[r, k]
    order = np.argsort(keys, kind="stable")
    r, k, keys = r[order], k[order], keys[order]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    for rr, kk in zip(np.split(r, bounds), np.split(k, bounds)):
        if not len(rr):
            continue
        ops = wyckoff_ops(int(v.spg[rr[0]]), int(v.wp[rr[0], kk[0]]))
        step = max(1, chunk // len(ops.A))
        for s in range(0, len(rr), step):
            yield ops, rr[s:s + step], kk[s:s + step]


def to_generators(df: pd.DataFrame, snap: bool = False, chunk: int = 4096) -> pd.DataFrame:
    """Every special site of a frame written on its Wyckoff generator's subspace (the
    orbit's first member: pyxtal's ``(0, 0, z)`` of 4e, whichever atom a row named).

    ``snap=False`` (training rows): a site on its position moves to the first, in
    (x, y, z) order, of its orbit's atoms on that subspace -- the same crystal, each
    special site written one way, so that a tabular model learns the coordinates a
    position fixes as constants of its Wyckoff index.  A general site stays as given
    (every atom of its orbit is a generator).  ``snap=True`` (model output in that
    form): the nearest point of the generator's subspace, so that those coordinates
    are the group's, not the model's.  Sites of rows whose group, cell or Wyckoff
    index are wrong stay as they are (the decoder says why); other columns pass through.
    """
    df = S.conform(df)
    v = _FrameArrays(df, None)
    fast, fails, _ = v.checks()
    _, G, _, volume = _frame_cells(v, fast)
    ok = (fails != WYCKOFF_INDEX) & (fails != COORDINATES)
    sites = v.used & ok & (fast & (volume > 0))[:, None]
    xyz = v.xyz.copy()
    for ops, ri, ki in _site_batches(v, sites, chunk):
        gen = generator_ops(ops.spg, ops.index)
        if snap:
            xyz[ri, ki] = project_many(gen, v.xyz[ri, ki], G[ri])[0]
        elif ops.dof < 3:
            xyz[ri, ki] = _first_on_generator(ops, gen, v.xyz[ri, ki], G[ri])
    return df.assign(**dict(zip(S.XYZ_FLAT, xyz.reshape(len(df), 3 * S.MAX_SITES).T)))


def _first_on_generator(ops: WyckoffOps, gen: WyckoffOps, xyz: np.ndarray,
                        metric: np.ndarray) -> np.ndarray:
    """Of each site's orbit, the atom on the generator's subspace that comes first in
    (x, y, z) order (to 1e-6); (m, 3) for sites ``xyz`` on their position ``ops``."""
    m, J = len(xyz), len(ops.A)
    orbit = orbit_many(ops, project_many(ops, xyz, metric)[1])                 # (m, J, 3)
    moved = project_many(gen, orbit.reshape(-1, 3), np.repeat(metric, J, axis=0))[2]
    r = np.where((moved.reshape(m, J) < 1e-6)[..., None], np.round(orbit, 6), np.inf)
    keep = np.ones((m, J), bool)
    for a in range(3):
        ra = np.where(keep, r[..., a], np.inf)
        keep &= ra == ra.min(axis=1, keepdims=True)
    return orbit[np.arange(m), np.argmax(keep, axis=1)]


def _write_decoded(cols: dict[str, np.ndarray], v: _FrameArrays, proj: _Projected,
                   rows: np.ndarray, cell: np.ndarray, lattice: np.ndarray) -> None:
    """Rewrite the valid ``rows`` of the columns ``cols`` as ``_decoded_columns``
    does: the symmetrised cell, the used sites first and projected, derived columns."""
    order = np.argsort(~v.used[rows], axis=1, kind="stable")       # used sites first
    take = rows[:, None], order
    n_sites = v.used[rows].sum(1)
    keep = np.arange(S.MAX_SITES)[None, :] < n_sites[:, None]
    points = np.where(keep[..., None], proj.point[take], np.nan)
    values = {**dict(zip(S.CELL, cell[rows].T)),
              **dict(zip(S.WP, np.where(keep, v.wp[take], -1).T)),
              **dict(zip(S.EL, np.where(keep, v.el[take], None).T)),
              **dict(zip(S.XYZ_FLAT, points.reshape(len(rows), 3 * S.MAX_SITES).T))}
    lattice_dof = np.array([LATTICE_DOF[lt] for lt in lattice[rows]], np.int64)
    values.update(natoms=proj.mult[rows].sum(1), n_sites=n_sites,
                  dof=lattice_dof + proj.dof[rows].sum(1), valid_xtal=True, error=None)
    for c, val in values.items():
        cols[c][rows] = val
