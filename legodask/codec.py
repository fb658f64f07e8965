"""Rows of the structure table <-> crystals (pyxtal, ASE).

Decoding is exact and never silent: each site's (x, y, z) is projected onto its
Wyckoff position -- the nearest point, in Å under the cell's metric, of any of the
affine subspaces that make up the orbit -- and the row is invalid, with the reason,
only when that point is farther than ``tol`` Å.  pyxtal's own
``from_tabular_representation`` silently drops such sites (METHOD.md section 1).

The numerical core (``decode_row``) needs no pyxtal object, so that validity
checks of millions of generated rows are cheap; pyxtal and ASE objects are built
from its result on demand.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from ase import Atoms
from ase.data import atomic_numbers
from ase.geometry import cellpar_to_cell

from . import schema as S

# Lattice degrees of freedom by lattice type (pyxtal's settings: monoclinic
# unique axis b, trigonal groups in the hexagonal setting).
LATTICE_DOF = {"triclinic": 6, "monoclinic": 4, "orthorhombic": 3, "tetragonal": 2,
               "trigonal": 2, "hexagonal": 2, "cubic": 1}


class DecodeError(ValueError):
    """A row that is not a valid crystal; the message says why."""


# the reason of a row whose sites all lie on their Wyckoff positions but whose atoms
# overlap: valid by pyxtal's (and the paper's) criterion, which checks no distances
OVERLAP = "atoms on top of each other"


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


@functools.lru_cache(maxsize=None)
def group_info(spg: int) -> tuple[str, int]:
    """``(lattice_type, number of Wyckoff positions)`` of a space group."""
    from pyxtal.symmetry import Group

    g = Group(spg)
    return g.lattice_type, len(g)


@functools.lru_cache(maxsize=None)
def wyckoff_ops(spg: int, index: int) -> WyckoffOps:
    """The orbit of Wyckoff position ``index`` of group ``spg`` as affine maps."""
    from pyxtal.symmetry import Group

    wp = Group(spg)[index]
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


# Lattice shifts tried by the projection, the zero shift first (ties prefer it).
_SHIFTS = np.array(sorted(([i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)),
                          key=lambda v: sum(map(abs, v))), float)


def project(ops: WyckoffOps, xyz: np.ndarray, metric: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Nearest point of the orbit's subspaces to fractional ``xyz``.

    Returns ``(point, free, distance_in_Å)``: the projected point (the same orbit
    member that ``xyz`` was nearest to, wrapped into [0, 1)), the free parameters
    ``x`` of the orbit (orbit point ``j`` is ``A[j] x + t[j]``) and the distance moved.
    """
    p = xyz - np.floor(xyz)
    if ops.dof == 3:  # a general position: every point is on it, as itself
        return _wrap(p), ops.pinv[0] @ (p - ops.t[0]), 0.0
    # displacement from each subspace's anchor, over lattice shifts: (J, 27, 3)
    d = p[None, None, :] - ops.t[:, None, :] - _SHIFTS[None, :, :]
    if ops.dof:
        B = ops.basis                                     # (J, 3, d)
        GB = np.einsum("ab,jbd->jad", metric, B)          # (J, 3, d)
        BtGB = np.einsum("jad,jae->jde", B, GB)           # (J, d, d)
        rhs = np.einsum("jad,jsa->jsd", GB, d)            # (J, 27, d)
        coef = np.einsum("jde,jse->jsd", np.linalg.inv(BtGB), rhs)
        along = np.einsum("jad,jsd->jsa", B, coef)        # (J, 27, 3)
    else:
        along = np.zeros_like(d)
    resid = d - along
    dist2 = np.einsum("jsa,ab,jsb->js", resid, metric, resid)
    # Ties (a general position lies on every member's subspace) go to the first
    # orbit member and the zero shift, so that a generator maps to itself.
    tied = dist2 <= dist2.min() + 1e-12
    j, s = np.unravel_index(int(np.argmax(tied)), dist2.shape)
    free = ops.pinv[j] @ along[j, s]
    point = along[j, s] + ops.t[j] + _SHIFTS[s]
    return _wrap(point), free, math.sqrt(max(float(dist2[j, s]), 0.0))


def _wrap(v: np.ndarray) -> np.ndarray:
    w = v - np.floor(v)
    w[np.isclose(w, 1.0, atol=1e-10)] = 0.0
    w[np.isclose(w, 0.0, atol=1e-12)] = 0.0
    return w


def symmetrize_cell(cell: np.ndarray, lattice_type: str) -> np.ndarray:
    """Impose the lattice type's constraints on ``(a, b, c, alpha, beta, gamma)``."""
    a, b, c, al, be, ga = cell
    if lattice_type == "cubic":
        a = b = c = (a + b + c) / 3
        al = be = ga = 90.0
    elif lattice_type == "tetragonal":
        a = b = (a + b) / 2
        al = be = ga = 90.0
    elif lattice_type in ("hexagonal", "trigonal"):
        a = b = (a + b) / 2
        al, be, ga = 90.0, 90.0, 120.0
    elif lattice_type == "orthorhombic":
        al = be = ga = 90.0
    elif lattice_type == "monoclinic":
        al = ga = 90.0
    return np.array([a, b, c, al, be, ga], float)


def metric_tensor(cell: np.ndarray) -> np.ndarray:
    a, b, c = cell[:3]
    ca, cb, cg = np.cos(np.radians(cell[3:]))
    return np.array([[a * a, a * b * cg, a * c * cb],
                     [a * b * cg, b * b, b * c * ca],
                     [a * c * cb, b * c * ca, c * c]])


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
        return _wrap(np.einsum("jab,b->ja", self.wp.A, self.free) + self.wp.t)


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
    spg_f = _num(row, "spg")
    if not math.isfinite(spg_f) or spg_f != round(spg_f) or not 1 <= spg_f <= 230:
        raise DecodeError(f"space group {row.get('spg')!r} is not an integer in 1..230")
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
            raise DecodeError(f"site {k}: Wyckoff index {row.get(wp_col)!r} is not one of "
                              f"0..{n_wp - 1} of space group {spg}")
        xyz = np.array([_num(row, x_col), _num(row, y_col), _num(row, z_col)])
        if not np.all(np.isfinite(xyz)):
            raise DecodeError(f"site {k}: coordinates have NaN or infinite values")
        el = row.get(el_col)
        if el is None or (isinstance(el, float) and math.isnan(el)):
            el = default_element
        if el not in atomic_numbers:
            raise DecodeError(f"site {k}: element {el!r} is not a chemical element")
        ops = wyckoff_ops(spg, int(wp_f))
        point, free, moved = project(ops, xyz, G)
        if moved > tol:
            raise DecodeError(f"site {k}: ({xyz[0]:.4f}, {xyz[1]:.4f}, {xyz[2]:.4f}) is "
                              f"{moved:.3f} Å from Wyckoff position {ops.multiplicity}"
                              f"{ops.letter} (tolerance {tol} Å)")
        out.sites.append(Site(ops, str(el), point, free, moved))
        if out.natoms > max_atoms:
            raise DecodeError(f"more than {max_atoms} atoms in the cell")
    if not out.sites:
        raise DecodeError("no occupied Wyckoff site")
    if volume / out.natoms < 1.0:
        raise DecodeError(f"{volume / out.natoms:.3f} Å^3 per atom: {OVERLAP}")
    if check_distances:
        _check_distances(out, min_distance)
    return out


def _check_distances(dec: Decoded, min_distance: float) -> None:
    frac, _ = dec.positions()
    d = nearest_distance(frac, cellpar_to_cell(dec.cell), min_distance)
    if d < min_distance:
        raise DecodeError(f"two atoms are {d:.3f} Å apart (< {min_distance} Å): {OVERLAP}")


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


# ---------------------------------------------------------------------------
# rows <-> crystals
# ---------------------------------------------------------------------------

def row_to_atoms(row: Mapping[str, Any], **kw: Any) -> Atoms:
    """ASE Atoms of a row (raises ``DecodeError`` for an invalid row)."""
    return decode_row(row, **kw).to_atoms()


def decoded_to_pyxtal(dec: Decoded) -> Any:
    """A pyxtal crystal with exactly the decoded sites (none dropped)."""
    from pyxtal import pyxtal
    from pyxtal.lattice import Lattice
    from pyxtal.symmetry import Group
    from pyxtal.wyckoff_site import atom_site

    group = Group(dec.spg)
    lat = Lattice.from_para(*dec.cell, ltype=group.lattice_type)
    species: list[str] = []
    for s in dec.sites:
        if s.element not in species:
            species.append(s.element)
    xtal = pyxtal()
    xtal.group = group
    xtal.lattice = lat
    xtal.dim, xtal.factor, xtal.PBC = 3, 1.0, group.PBC
    xtal.species = species
    xtal.numIons = [sum(s.wp.multiplicity for s in dec.sites if s.element == sp)
                    for sp in species]
    xtal.atom_sites = [atom_site(group[s.wp.index], s.generator, s.element)
                       for sp in species for s in dec.sites if s.element == sp]
    xtal.standard_setting = True
    xtal.valid = True
    xtal.source = "legodask"
    xtal._get_formula()
    return xtal


def row_to_pyxtal(row: Mapping[str, Any], **kw: Any) -> Any:
    """A pyxtal crystal of a row (raises ``DecodeError`` for an invalid row)."""
    return decoded_to_pyxtal(decode_row(row, **kw))


def pyxtal_to_row(xtal: Any, ids: list[int | None] | None = None,
                  **extra: Any) -> dict[str, Any]:
    """The table row of a pyxtal crystal; ``ids[k]`` picks which atom of site k's
    orbit represents it (the site's generator position by default)."""
    sites = xtal.atom_sites
    row: dict[str, Any] = {"spg": int(xtal.group.number)}
    para = xtal.lattice.get_para(degree=True)
    row.update(dict(zip(S.CELL, map(float, para))))
    ids = ids or [None] * len(sites)
    natoms = 0
    for k, (site, i) in enumerate(zip(sites, ids)):
        natoms += site.wp.multiplicity
        if k >= S.MAX_SITES:
            continue
        wp_col, el_col, x_col, y_col, z_col = S.site_columns(k)
        xyz = _wrap(np.array(site.position if i is None else site.coords[i], float))
        row.update({wp_col: int(site.wp.index), el_col: str(site.specie),
                    x_col: float(xyz[0]), y_col: float(xyz[1]), z_col: float(xyz[2])})
    lt = xtal.group.lattice_type
    row["natoms"] = natoms
    row["n_sites"] = len(sites)
    row["dof"] = LATTICE_DOF[lt] + sum(s.wp.get_dof() for s in sites)
    too_many = len(sites) > S.MAX_SITES
    row["valid_xtal"] = not too_many
    row["error"] = (f"{len(sites)} Wyckoff sites, more than the table's {S.MAX_SITES}"
                    if too_many else None)
    row.update(extra)
    return row


def atoms_to_pyxtal(atoms: Atoms, symprec: float = 1e-3) -> Any:
    """Symmetrise ASE Atoms into a pyxtal crystal (spglib tolerance ``symprec``)."""
    from pyxtal import pyxtal

    xtal = pyxtal()
    xtal.from_seed(atoms, tol=symprec)
    return xtal


def atoms_to_row(atoms: Atoms, symprec: float = 1e-3, **extra: Any) -> dict[str, Any]:
    """The table row of ASE Atoms, symmetrised with tolerance ``symprec``.

    The row is canonical: each site is given by its generator in pyxtal's standard
    Wyckoff setting, so that row -> crystal -> row is exact.
    """
    return canonical(pyxtal_to_row(atoms_to_pyxtal(atoms, symprec), **extra))


def canonical(row: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a valid row with each site's standard generator as its representative
    (spglib may hand a crystal over in an equivalent but non-standard orbit order)."""
    if not row.get("valid_xtal"):
        return row
    extra = {k: v for k, v in row.items() if k not in S.COLUMNS}
    keep = {k: row.get(k) for k in ("id", "source", "parent_id")}
    dec = decode_row(row, check_distances=False)
    return {**pyxtal_to_row(decoded_to_pyxtal(dec)), **extra,
            **{k: v for k, v in keep.items() if v is not None}}


def wyckoff_labels(row: Mapping[str, Any]) -> list[str]:
    """Wyckoff labels (``'8a'``) of a row's occupied sites."""
    spg = int(row["spg"])
    out = []
    for k in range(S.MAX_SITES):
        wp = row.get(f"wp{k}")
        if wp is not None and not pd.isna(wp) and int(wp) >= 0:
            ops = wyckoff_ops(spg, int(wp))
            out.append(f"{ops.multiplicity}{ops.letter}")
    return out


# ---------------------------------------------------------------------------
# the decode kernel over a partition
# ---------------------------------------------------------------------------

def decode_frame(df: pd.DataFrame, tol: float = 0.5, min_distance: float = 0.6,
                 max_atoms: int = 2000, default_element: str | None = None) -> pd.DataFrame:
    """Decode every row of a partition: project sites onto their Wyckoff positions,
    symmetrise the cell, and fill ``natoms, n_sites, dof, valid_xtal, error``.

    Valid rows are rewritten in their exact symmetric form; invalid rows are kept
    as they came, with the reason in ``error``.  No row is dropped.
    """
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
            rec.update(_decoded_columns(dec))
        out.append(rec)
    return S.conform(pd.DataFrame.from_records(out, columns=list(df.columns), index=df.index))


def _decoded_columns(dec: Decoded) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------
# discrete mode and the reference implementation's layout
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """Discrete mode: coordinates on an ``n_xyz`` grid, cell lengths in ``n_len``
    bins over (0, max_len] Å, angles in ``n_ang`` bins over [min_ang, max_ang]°."""

    n_xyz: int = 100
    n_len: int = 100
    max_len: float = 50.0
    n_ang: int = 100
    min_ang: float = 30.0
    max_ang: float = 150.0

    def to_bins(self, df: pd.DataFrame) -> pd.DataFrame:
        """Continuous rows -> integer bins (unused sites stay -1)."""
        out = df.copy()
        for c in S.LENGTHS:
            out[c] = np.clip(np.round(df[c] / self.max_len * self.n_len), 0, self.n_len)
        span = self.max_ang - self.min_ang
        for c in S.ANGLES:
            out[c] = np.clip(np.round((df[c] - self.min_ang) / span * self.n_ang), 0, self.n_ang)
        for k in range(S.MAX_SITES):
            used = df[f"wp{k}"] >= 0
            for c in S.XYZ[k]:
                out[c] = np.where(used, np.round(df[c] * self.n_xyz) % self.n_xyz, -1)
        return out

    def from_bins(self, df: pd.DataFrame) -> pd.DataFrame:
        """Integer bins -> continuous values (bin centres on the grid)."""
        out = df.copy()
        for c in S.LENGTHS:
            out[c] = df[c].astype(float) / self.n_len * self.max_len
        span = self.max_ang - self.min_ang
        for c in S.ANGLES:
            out[c] = self.min_ang + df[c].astype(float) / self.n_ang * span
        for k in range(S.MAX_SITES):
            used = df[f"wp{k}"] >= 0
            for c in S.XYZ[k]:
                out[c] = np.where(used, df[c].astype(float) / self.n_xyz, np.nan)
        return out


def from_reference_layout(df: pd.DataFrame, element: str = "C") -> pd.DataFrame:
    """Rows in the reference implementation's CSV layout (39 numeric columns,
    angles in radians, ``-1`` padding, optional ``energy``/``label``) -> table rows."""
    numeric = [c for c in df.columns if c not in ("energy", "label")]
    if len(numeric) < 7 or (len(numeric) - 7) % 4:
        raise ValueError(f"expected 7 + 4k numeric columns, got {len(numeric)}")
    vals = df[numeric].to_numpy(float)
    out = pd.DataFrame({"spg": vals[:, 0]}, index=df.index)
    for i, c in enumerate(S.CELL):
        out[c] = np.degrees(vals[:, 1 + i]) if c in S.ANGLES else vals[:, 1 + i]
    n_sites = min((len(numeric) - 7) // 4, S.MAX_SITES)
    for k in range(n_sites):
        wp, x, y, z = vals[:, 7 + 4 * k: 11 + 4 * k].T
        used = wp >= 0
        out[f"wp{k}"] = np.where(used, wp, -1)
        out[f"el{k}"] = np.where(used, element, None)
        for col, v in zip(S.XYZ[k], (x, y, z)):
            out[col] = np.where(used, v, np.nan)
    for extra in ("energy", "label"):
        if extra in df.columns:
            out[extra] = df[extra].to_numpy()
    return out
