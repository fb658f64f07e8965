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

import contextlib
import functools
import io
import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
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
# overlap: valid by pyxtal's decoder (the paper's criterion), which checks no distances
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


# One thread at a time in pyxtal calls that parse or print: pyxtal builds a Group by
# ``ast.literal_eval`` of its tables, and CPython's parser fails ("AST constructor
# recursion depth mismatch") when threads parse at once; and ``sys.stdout`` is the
# process's, so two threads' interleaved redirects would leave it pointing at a buffer.
_PYXTAL = threading.RLock()


def new_group(spg: int) -> Any:
    """A new pyxtal ``Group``, built by one thread at a time."""
    from pyxtal.symmetry import Group

    with _PYXTAL:
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
        return _wrap(p), _dot(ops.pinv[0], (p - ops.t[0])[:, None, :]), np.zeros(len(p))
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
    return _wrap(point), free, np.sqrt(np.maximum(flat[rows, first], 0.0))


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


def orbit_many(ops: WyckoffOps, free: np.ndarray) -> np.ndarray:
    """Fractional coordinates of the orbits of ``m`` sites, (m, multiplicity, 3)."""
    return _wrap(_dot(ops.A[None], free[:, None, None, :]) + ops.t)


def _wrap(v: np.ndarray) -> np.ndarray:
    """Fractional coordinates into [0, 1); those within 1e-5 (``np.isclose``'s
    default relative tolerance) of 1 or 1e-12 of 0 become 0 -- written out, as
    ``np.isclose(w, 1.0, atol=1e-10)`` and ``np.isclose(w, 0.0, atol=1e-12)``."""
    w = v - np.floor(v)
    w[np.abs(w - 1.0) <= 1e-10 + 1e-5] = 0.0
    w[np.abs(w) <= 1e-12] = 0.0
    return w


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
            raise DecodeError(_site_reason(k, WYCKOFF_INDEX, row.get(wp_col), n_wp, spg))
        xyz = np.array([_num(row, x_col), _num(row, y_col), _num(row, z_col)])
        if not np.all(np.isfinite(xyz)):
            raise DecodeError(_site_reason(k, COORDINATES))
        el = row.get(el_col)
        if el is None or (isinstance(el, float) and math.isnan(el)):
            el = default_element
        if el not in atomic_numbers:
            raise DecodeError(_site_reason(k, ELEMENT, el))
        ops = wyckoff_ops(spg, int(wp_f))
        point, free, moved = project(ops, xyz, G)
        if moved > tol:
            raise DecodeError(_off_position_reason(k, xyz, moved, ops, tol))
        out.sites.append(Site(ops, str(el), point, free, moved))
        if out.natoms > max_atoms:
            raise DecodeError(_too_many_reason(max_atoms))
    if not out.sites:
        raise DecodeError(NO_SITE)
    if volume / out.natoms < 1.0:
        raise DecodeError(_dense_reason(volume / out.natoms))
    if check_distances:
        _check_distances(out, min_distance)
    return out


def _check_distances(dec: Decoded, min_distance: float) -> None:
    frac, _ = dec.positions()
    d = nearest_distance(frac, cellpar_to_cell(dec.cell), min_distance)
    if d < min_distance:
        raise DecodeError(_overlap_reason(d, min_distance))


# The reasons of invalid rows that both decoders give (the row-wise one words the rest).
NO_SITE = "no occupied Wyckoff site"
# which of a site's checks before its projection fails (0: none)
WYCKOFF_INDEX, COORDINATES, ELEMENT = 1, 2, 3


def _site_reason(k: int, check: int, value: Any = None, n_wp: int = 0, spg: int = 0) -> str:
    """Why site ``k`` failed ``check``; ``value``: its Wyckoff index or element."""
    if check == WYCKOFF_INDEX:
        return (f"site {k}: Wyckoff index {value!r} is not one of 0..{n_wp - 1} "
                f"of space group {spg}")
    if check == COORDINATES:
        return f"site {k}: coordinates have NaN or infinite values"
    if value is None:
        return f"site {k}: no element given (name it in el{k} or pass --element)"
    return f"site {k}: element {value!r} is not a chemical element"


def _off_position_reason(k: int, xyz: np.ndarray, moved: float, ops: WyckoffOps,
                         tol: float) -> str:
    return (f"site {k}: ({xyz[0]:.4f}, {xyz[1]:.4f}, {xyz[2]:.4f}) is {moved:.3f} Å from "
            f"Wyckoff position {ops.multiplicity}{ops.letter} (tolerance {tol} Å)")


def only_overlapping(df: pd.DataFrame) -> pd.Series:
    """Rows of a decoded frame that are invalid only because atoms overlap (every site
    on its Wyckoff position): valid without the distance check, as by pyxtal's decoder."""
    if "error" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["error"].astype("string").str.endswith(OVERLAP).fillna(False).astype(bool)


def _too_many_reason(max_atoms: int) -> str:
    return f"more than {max_atoms} atoms in the cell"


def _dense_reason(volume_per_atom: float) -> str:
    return f"{volume_per_atom:.3f} Å^3 per atom: {OVERLAP}"


def _overlap_reason(d: float, min_distance: float) -> str:
    return f"two atoms are {d:.3f} Å apart (< {min_distance} Å): {OVERLAP}"


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
    from pyxtal.wyckoff_site import atom_site

    group = new_group(dec.spg)
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


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Swallow prints, one thread at a time (``_PYXTAL``)."""
    with _PYXTAL, contextlib.redirect_stdout(io.StringIO()):
        yield


def pyxtal_verdicts(df: pd.DataFrame) -> np.ndarray:
    """What pyxtal's own decoder (``from_tabular_representation``, the paper's
    validity) says of each row: (n, 2) bools, [valid, valid with fewer sites than
    the row has] -- it drops a site it cannot place and still calls the crystal valid."""
    from pyxtal import pyxtal

    out = np.zeros((len(df), 2), dtype=bool)
    for k, row in enumerate(df.to_dict("records")):
        rep = [row["spg"], *[row[c] for c in S.LENGTHS], *np.radians([row[c] for c in S.ANGLES])]
        used = 0
        for wp, xyz in zip(S.WP, S.XYZ):
            used += row[wp] >= 0
            rep += [row[wp], *(row[c] for c in xyz)] if row[wp] >= 0 else [-1, -1, -1, -1]
        x = pyxtal()
        try:
            with _quiet_stdout():  # pyxtal prints each site it drops
                x.from_tabular_representation(np.nan_to_num(np.array(rep, float), nan=-1.0))
        except Exception:  # pyxtal's own failure: not valid by its measure either
            continue
        out[k] = [x.valid, x.valid and len(x.atom_sites) < used]
    return out


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
            rec.update(_decoded_columns(dec))
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
            error[i] = _site_reason(site, check, value, int(n_wp[i]), int(v.spg[i]))
        elif kind == 1:
            ops = wyckoff_ops(int(v.spg[i]), int(v.wp[i, site]))
            error[i] = _off_position_reason(site, v.xyz[i, site], proj.moved[i, site], ops, tol)
        else:
            error[i] = _too_many_reason(max_atoms)
    natoms = cum[:, -1]
    todo = fast & (event == never)
    error[todo & (natoms == 0)] = NO_SITE
    todo &= natoms > 0
    dense = todo & (volume / np.maximum(natoms, 1) < 1.0)
    for i in np.flatnonzero(dense):
        error[i] = _dense_reason(volume[i] / natoms[i])
    todo &= ~dense
    for i, d in _overlaps(v, proj, todo, cell, G, min_distance):
        error[i] = _overlap_reason(d, min_distance)
    valid = todo & pd.isna(error)
    cols = {c: df[c].to_numpy(copy=True) for c in _REWRITTEN}
    _write_decoded(cols, v, proj, np.flatnonzero(valid), cell, lattice)
    bad = fast & ~valid
    cols["valid_xtal"][bad] = False
    cols["error"][bad] = error[bad]
    cols["n_sites"][bad] = v.used[bad].sum(1)
    cols["natoms"][bad] = cols["dof"][bad] = 0
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
    out.loc[bad, "valid_xtal"] = False
    out.loc[bad, "error"] = reasons[bad]
    out.loc[bad, "n_sites"] = (given.loc[bad, S.WP] >= 0).sum(axis=1).astype("int8")
    out.loc[bad, ["natoms", "dof"]] = 0
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
        self.spg = df["spg"].to_numpy(np.int64)
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


def _overlaps(v: _FrameArrays, proj: _Projected, rows: np.ndarray, cell: np.ndarray,
              G: np.ndarray, cutoff: float) -> list[tuple[int, float]]:
    """``(row, shortest distance)`` of the rows (a mask) with atoms closer than ``cutoff``.

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
    _, groups = np.unique(np.column_stack([v.spg[idx], v.wp[idx]]), axis=0, return_inverse=True)
    groups = groups.ravel()
    for g in np.unique(groups):
        r = idx[groups == g]
        slots = np.flatnonzero(v.used[r[0]])
        frac = np.concatenate([orbit_many(wyckoff_ops(int(v.spg[r[0]]), int(v.wp[r[0], k])),
                                          proj.free[r, k]) for k in slots], axis=1)
        reps = np.cumsum([0, *proj.mult[r[0], slots][:-1]])
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
    """Rows in the reference implementation's CSV layout, columns by position (angles
    in radians, ``-1`` padding, optional ``energy``/``label``) -> table rows."""
    from . import layouts

    return layouts.to_table(df, layouts.Layout(layouts.REFERENCE, True, element))
