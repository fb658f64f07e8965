"""Crystal identity: a fingerprint that one crystal has in every representation.

A row of the structure table is one *representation* of a crystal: any subgroup
setting, origin, orbit representative or cell choice of it.  Deduplication needs
a name for the crystal itself.  It is built in two levels:

* a **coarse key** (``fingerprint``) from invariants that are exact integers once
  spglib has found the symmetry: the space group of the crystal (not of the
  representation), the elements, orbit sizes and coordination numbers of the
  primitive cell (bonded as the environment check has it: closer than
  ``BOND_FACTOR`` x the sum of ``environment.covalent_radius``).  Wyckoff *letters*
  are left out on purpose: the affine normaliser of a group can swap them (diamond
  is 8a or 8b of Fd-3m depending on the origin), the orbit sizes cannot change.  Beside it, ``fp_vbin`` is the
  volume per atom on a logarithmic grid; a lookup probes the neighbouring bins too,
  so that a value on a bin edge still finds its twin.
* a **fine comparison** of two candidates that share a key: the sorted multisets of
  per-orbit environments (the first ``K_NEIGHBOURS`` neighbour distances of each
  orbit) and the volumes agree within a tolerance, then, by default, pymatgen's
  ``StructureMatcher`` confirms.  It is only ever called within a bucket.

``fp_data`` (JSON) carries the standardised primitive cell and the environments,
so that a later batch or another run can confirm against a structure it never saw.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from ase import Atoms
from ase.data import chemical_symbols

from .. import schema as S
from .convert import row_to_atoms
from .environment import BOND_FACTOR, covalent_radius

SYMPREC = 0.05          # spglib tolerance (Å): relaxed geometries carry small noise
K_NEIGHBOURS = 12       # neighbour distances per orbit in the environment multiset
VBIN = 0.03             # width of a volume-per-atom bin, in log units (3 %)
ENV_TOL = 0.1           # Å: environments of one crystal agree within this
VOL_TOL = 0.05          # relative: volumes per atom of one crystal agree within this
MATCHERS = ("pymatgen", "env")



class FingerprintError(ValueError):
    """A structure that cannot be fingerprinted; the message says why."""


@dataclass(frozen=True)
class Fingerprint:
    """The identity of one crystal: coarse key, volume bin and fine data."""

    key: str
    vbin: int
    spg: int
    natoms: int          # atoms in the primitive cell
    data: str            # JSON: primitive cell, environments, volume per atom


def fingerprint_atoms(atoms: Atoms, symprec: float = SYMPREC) -> Fingerprint:
    """Fingerprint of a crystal given as ASE Atoms in any cell and setting."""
    import spglib

    cell = (np.asarray(atoms.cell), atoms.get_scaled_positions(), atoms.numbers)
    prim = spglib.standardize_cell(cell, to_primitive=True, no_idealize=False,
                                   symprec=symprec)
    if prim is None:
        raise FingerprintError(f"spglib found no symmetry at symprec {symprec}")
    lattice, frac, numbers = (np.asarray(x) for x in prim)
    dataset = spglib.get_symmetry_dataset((lattice, frac, numbers), symprec=symprec)
    if dataset is None:
        raise FingerprintError(f"spglib found no space group at symprec {symprec}")
    reps, sizes = np.unique(dataset.equivalent_atoms, return_counts=True)
    vpa = abs(float(np.linalg.det(lattice))) / len(numbers)
    env, cn = _environments(lattice, frac, numbers, reps, vpa)
    orbits = sorted((int(numbers[r]), int(n), int(c)) for r, n, c in zip(reps, sizes, cn))
    key_text = f"{dataset.number}|{orbits}"
    key = hashlib.blake2b(key_text.encode(), digest_size=8).hexdigest()
    env_rows = sorted([float(numbers[r]), float(n), *d] for r, n, d in zip(reps, sizes, env))
    data = json.dumps({"lattice": np.round(lattice, 6).tolist(),
                       "frac": np.round(frac, 6).tolist(), "numbers": numbers.tolist(),
                       "env": np.round(env_rows, 4).tolist(), "vpa": round(vpa, 5)})
    return Fingerprint(key, int(round(math.log(vpa) / VBIN)), int(dataset.number),
                       len(numbers), data)


def _environments(lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray,
                  reps: np.ndarray, vpa: float) -> tuple[np.ndarray, np.ndarray]:
    """First ``K_NEIGHBOURS`` neighbour distances and the coordination number of
    each orbit representative, by brute force over the periodic images of a
    Minkowski-reduced cell (the cutoff grows until every one has K neighbours)."""
    from ase.geometry import minkowski_reduce

    reduced, _ = minkowski_reduce(lattice)
    cart = frac @ lattice
    wrapped = (cart @ np.linalg.inv(reduced)) % 1.0 @ reduced
    heights = abs(np.linalg.det(reduced)) / np.linalg.norm(
        np.cross(reduced[[1, 2, 0]], reduced[[2, 0, 1]]), axis=1)
    radii = np.array([covalent_radius(chemical_symbols[z]) for z in numbers])
    bond = BOND_FACTOR * (radii[reps][:, None] + radii[None, :])   # the environment's rule
    cutoff = max(3.0, 2.5 * vpa ** (1 / 3))
    while True:
        n = np.ceil(cutoff / heights).astype(int)
        shifts = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in n], indexing="ij"),
                          -1).reshape(-1, 3) @ reduced
        # (reps, atoms, images) distances
        vec = wrapped[None, :, None, :] + shifts[None, None] - wrapped[reps][:, None, None, :]
        dist = np.linalg.norm(vec, axis=-1)
        dist[dist < 1e-8] = np.inf                        # the atom itself
        flat = np.sort(dist.reshape(len(reps), -1), axis=1)[:, :K_NEIGHBOURS]
        if flat.shape[1] == K_NEIGHBOURS and np.all(flat[:, -1] <= cutoff):
            break
        cutoff *= 1.5
    cn = np.count_nonzero(dist < bond[:, :, None], axis=(1, 2))
    return flat, cn


# ---------------------------------------------------------------------------
# the fine comparison
# ---------------------------------------------------------------------------

def same_structure(a: str, b: str, matcher: str = "pymatgen", env_tol: float = ENV_TOL,
                   vol_tol: float = VOL_TOL, scale: bool = False) -> bool:
    """Whether two ``fp_data`` of one bucket are the same crystal: environments and
    volume within tolerance, then (``matcher='pymatgen'``) StructureMatcher.

    ``scale``: compare shapes only, ``b`` rescaled to ``a``'s volume, for crystals
    relaxed by different models (DFT training geometry against ReaxFF or MACE).
    """
    if matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {MATCHERS}, not {matcher!r}")
    da, db = _parsed(a), _parsed(b)
    eb = db["env"]
    if scale:
        eb = np.concatenate([eb[:, :2], eb[:, 2:] * (da["vpa"] / db["vpa"]) ** (1 / 3)], 1)
    elif abs(da["vpa"] - db["vpa"]) > vol_tol * max(da["vpa"], db["vpa"]):
        return False
    if not _environments_match(da["env"], eb, env_tol):
        return False
    if matcher == "env":
        return True
    return bool(_structure_matcher().fit(_pymatgen_structure(a), _pymatgen_structure(b)))


def _environments_match(ea: np.ndarray, eb: np.ndarray, tol: float) -> bool:
    """Whether the orbits of two environment multisets pair up one to one, each
    pair with the same element and orbit size and distances within ``tol``
    (a perfect bipartite matching, so that the order of near-ties does not matter)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    if ea.shape != eb.shape:
        return False
    if (np.array_equal(ea[:, :2], eb[:, :2])
            and np.max(np.abs(ea[:, 2:] - eb[:, 2:]), initial=0.0) <= tol):
        return True                       # the same order: no matching needed
    ok = (np.all(ea[:, None, :2] == eb[None, :, :2], axis=-1)
          & (np.max(np.abs(ea[:, None, 2:] - eb[None, :, 2:]), axis=-1) <= tol))
    if not ok.any(axis=1).all() or not ok.any(axis=0).all():
        return False
    match = maximum_bipartite_matching(csr_matrix(ok), perm_type="column")
    return bool(np.all(match >= 0))


@functools.lru_cache(maxsize=8192)
def _parsed(data: str) -> dict[str, Any]:
    d = json.loads(data)
    d["env"] = np.asarray(d["env"], float)
    return d


@functools.lru_cache(maxsize=4096)
def _pymatgen_structure(data: str) -> Any:
    from pymatgen.core import Lattice, Structure

    d = _parsed(data)
    return Structure(Lattice(d["lattice"]), d["numbers"], d["frac"])


@functools.lru_cache(maxsize=1)
def _structure_matcher() -> Any:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher()


# ---------------------------------------------------------------------------
# rows -> crystals -> fingerprints
# ---------------------------------------------------------------------------

def row_atoms(row: Mapping[str, Any], geometry: str | None = None) -> Atoms:
    """The crystal of a row: its ``relaxed_<geometry>`` column (the rank stage's
    extended-XYZ text) when given and filled, else the row's own tabular form."""
    if geometry and filled(row.get(f"{S.RELAXED}{geometry}")):
        from ..energy.relax import text_to_atoms

        return text_to_atoms(row[f"{S.RELAXED}{geometry}"])
    return row_to_atoms(row, check_distances=False)


def fingerprint_frame(df: pd.DataFrame, geometry: str | None = None,
                      symprec: float = SYMPREC,
                      require: Iterable[str] = (S.VALID_XTAL, S.VALID_ENV)) -> pd.DataFrame:
    """The fingerprint kernel: ``df`` with the ``schema.FP_DTYPES`` columns added.

    Rows for which a ``require`` column (those present) is not True are skipped
    (null fingerprint, the reason in ``fp_error``); a row that cannot be read or
    standardised gets its reason too.  No row is dropped.
    """
    need = [c for c in require if c in df.columns]
    out = {c: [] for c in S.FP_DTYPES}
    for rec in df.to_dict("records"):
        fp, error = None, None
        failed = [c for c in need if not _true(rec.get(c))]
        if failed:
            error = f"skipped: {failed[0]} is not True"
        else:
            try:
                fp = fingerprint_atoms(row_atoms(rec, geometry), symprec)
            except Exception as exc:  # any failure is recorded on the row
                error = f"{type(exc).__name__}: {exc}"
        out[S.FINGERPRINT].append(fp.key if fp else None)
        out[S.FP_VBIN].append(fp.vbin if fp else -1)
        out[S.FP_SPG].append(fp.spg if fp else -1)
        out[S.FP_NATOMS].append(fp.natoms if fp else 0)
        out[S.FP_DATA].append(fp.data if fp else None)
        out[S.FP_ERROR].append(error)
    res = df.drop(columns=[c for c in S.FP_DTYPES if c in df.columns])
    for col, dtype in S.FP_DTYPES.items():
        res[col] = pd.Series(out[col], index=df.index, dtype=dtype)
    return res


def filled(v: Any) -> bool:
    """Whether a cell of a table holds a value (not None, NaN or NA)."""
    return v is not None and not (np.ndim(v) == 0 and pd.isna(v))


def _true(v: Any) -> bool:
    return filled(v) and bool(v)
