"""One crystal as a function of its free variables.

The free variables are the free cell parameters of the lattice type and the free
coordinates of each Wyckoff site (the pivot components of the site's parameters,
e.g. x and z of ``(x, 2x, z)``), so the space group is kept exactly.  Bounds:
cell lengths 1.5-50 Å, angles 30-150°; fractional coordinates are unbounded (the
objective is periodic in them; the written row wraps them into [0, 1)).  Each
variable has a unit of about 1 Å (lengths in Å, angles / 10°, coordinates x cell
length) so that one step size fits all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..crystal.cell import metric_tensor
from ..crystal.decode import Decoded, decode_row
from ..crystal.wyckoff import group_info, wrap
from .. import schema as S
from ..crystal.descriptor import SO3Params, power_spectrum
from ..crystal.environment import Environment

LENGTHS = (1.5, 50.0)
ANGLES = (30.0, 150.0)
ANGLE_UNIT = 10.0          # degrees per scaled unit


# For each lattice type, which free cell variable sets each of (a, b, c, al, be, ga);
# -1: fixed by the lattice type (the constant is symmetrize_cell's).
_CELL_VARS = {
    "cubic": (0, 0, 0, -1, -1, -1),
    "tetragonal": (0, 0, 1, -1, -1, -1),
    "hexagonal": (0, 0, 1, -1, -1, -1),
    "trigonal": (0, 0, 1, -1, -1, -1),
    "orthorhombic": (0, 1, 2, -1, -1, -1),
    "monoclinic": (0, 1, 2, -1, 3, -1),
    "triclinic": (0, 1, 2, 3, 4, 5),
}


@dataclass
class Problem:
    """A decoded crystal and the map from its free variables to its atoms."""

    dec: Decoded
    x0: np.ndarray            # free variables: cell ones, then site coordinates
    kind: np.ndarray          # 0 length (Å), 1 angle (°), 2 fractional coordinate
    unit: np.ndarray          # the variable's size of about 1 Å
    cell_var: np.ndarray      # (6,) index into x, -1 for a constant
    cell_const: np.ndarray    # (6,)
    site_var: np.ndarray      # (n_sites, 3) index into x, -1: the site's constant
    site_const: np.ndarray    # (n_sites, 3) free parameters that are not variables
    atom_A: np.ndarray        # (N, 3, 3): atom a = A[a] @ f[site(a)] + t[a]
    atom_t: np.ndarray        # (N, 3)
    atom_site: np.ndarray     # (N,)
    rep_atom: np.ndarray      # (n_sites,) an atom of each site (orbit member 0)
    row_member: np.ndarray    # (n_sites,) the orbit member the row gave
    numbers: np.ndarray       # (N,) atomic numbers

    @property
    def natoms(self) -> int:
        return len(self.numbers)

    def cell(self, x: np.ndarray) -> np.ndarray:
        par = self.cell_const.copy()
        used = self.cell_var >= 0
        par[used] = x[self.cell_var[used]]
        return par

    def free(self, x: np.ndarray) -> np.ndarray:
        f = self.site_const.copy()
        used = self.site_var >= 0
        f[used] = x[self.site_var[used]]
        return f


def _pivots(A0: np.ndarray, dof: int) -> list[int]:
    """Columns of ``A0`` that span its column space: the site's free coordinates."""
    piv: list[int] = []
    for col in range(3):
        if len(piv) == dof:
            break
        if np.linalg.matrix_rank(A0[:, piv + [col]], tol=1e-8) > len(piv):
            piv.append(col)
    return piv


def build_problem(row: Mapping[str, Any] | Decoded) -> Problem:
    """The free-variable model of a row (raises ``DecodeError`` for an invalid row)."""
    dec = row if isinstance(row, Decoded) else decode_row(row, check_distances=False)
    lattice_type, _ = group_info(dec.spg)
    cvar = np.array(_CELL_VARS[lattice_type])
    n_cell = cvar.max() + 1
    x0, kind, unit = [], [], []
    for v in range(n_cell):
        k = int(np.flatnonzero(cvar == v)[0])
        x0.append(dec.cell[k])
        kind.append(0 if k < 3 else 1)
        unit.append(1.0 if k < 3 else ANGLE_UNIT)
    const = dec.cell.copy()
    const[cvar >= 0] = 0.0
    site_var = -np.ones((len(dec.sites), 3), int)
    site_const = np.zeros((len(dec.sites), 3))
    A, t, owner, rep, member, numbers = [], [], [], [], [], []
    from ase.data import atomic_numbers

    for s, site in enumerate(dec.sites):
        rep.append(len(owner))
        ops = site.wp
        site_const[s] = site.free
        for col in _pivots(ops.A[0], ops.dof):
            site_var[s, col] = len(x0)
            site_const[s, col] = 0.0
            x0.append(site.free[col])
            kind.append(2)
            unit.append(1.0 / dec.cell[col])
        A.append(ops.A)
        t.append(ops.t)
        owner += [s] * ops.multiplicity
        numbers += [atomic_numbers[site.element]] * ops.multiplicity
        d = site.orbit() - site.point
        d -= np.round(d)
        member.append(int(np.argmin(np.abs(d).sum(1))))
    return Problem(dec, np.array(x0, float), np.array(kind), np.array(unit), cvar, const,
                   site_var, site_const, np.concatenate(A), np.concatenate(t),
                   np.array(owner), np.array(rep), np.array(member), np.array(numbers))


def bounds(p: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the free variables (coordinates unbounded)."""
    lo = np.select([p.kind == 0, p.kind == 1], [LENGTHS[0], ANGLES[0]], -np.inf)
    hi = np.select([p.kind == 0, p.kind == 1], [LENGTHS[1], ANGLES[1]], np.inf)
    return lo, hi


def relaxed_row(p: Problem, x: np.ndarray) -> dict[str, Any]:
    """The row's cell and site coordinates at free variables ``x`` (each site
    keeps the orbit member that the row gave)."""
    cell = p.cell(x)
    out: dict[str, Any] = dict(zip(S.CELL, map(float, cell)))
    f = p.free(x)
    for s, site in enumerate(p.dec.sites):
        j = p.row_member[s]
        # near 1 as np.isclose(xyz, 1.0, atol=1e-12) has it, as pre-relaxed rows were written
        xyz = wrap(site.wp.A[j] @ f[s] + site.wp.t[j], 1e-12 + 1e-5, None)
        out.update(zip(S.XYZ[s], map(float, xyz)))
    return out


def volume_per_atom(p: Problem, x: np.ndarray) -> float:
    """Cell volume per atom (Å³) of ``p`` at free variables ``x``."""
    det = float(np.linalg.det(metric_tensor(p.cell(x))))
    return math.sqrt(max(det, 0.0)) / p.natoms


def at_density(p: Problem, vpa: float) -> np.ndarray:
    """The start ``p.x0`` with every cell length scaled alike to ``vpa`` Å³ per atom;
    angles and fractional coordinates kept, so the symmetry is."""
    x = p.x0.copy()
    x[p.kind == 0] *= (vpa / volume_per_atom(p, x)) ** (1 / 3)
    lo, hi = bounds(p)
    return np.clip(x, lo, hi)


@dataclass
class Outcome:
    """What an optimiser did to one structure."""

    x: np.ndarray
    loss: float
    iterations: int
    seconds: float
    error: str | None = None      # the relaxation was cut (budget) or blew up
    valid: bool = False           # the relaxed crystal has the environment
    reason: str | None = None     # why not, when it has not


# ---------------------------------------------------------------------------
# reference targets
# ---------------------------------------------------------------------------

_TARGETS: dict[tuple[int, SO3Params], tuple[Environment, dict[str, np.ndarray]]] = {}


def targets(env: Environment, params: SO3Params) -> dict[str, np.ndarray]:
    """Distinct reference spectra of each element, (K, size), cached per environment
    and descriptor."""
    key = (id(env), params)
    if key in _TARGETS and _TARGETS[key][0] is env:
        return _TARGETS[key][1]
    ref = env.reference
    spectra = power_spectrum(ref, params)
    out = {}
    for el in set(ref.get_chemical_symbols()):
        rows = spectra[np.array(ref.get_chemical_symbols()) == el]
        keep: list[np.ndarray] = []
        for r in rows:
            if not any(np.allclose(r, k, rtol=1e-6, atol=1e-8) for k in keep):
                keep.append(r)
        out[el] = np.array(keep)
    _TARGETS[key] = (env, out)
    return out

