"""Rows of the structure table <-> crystals: pyxtal, ASE, and pyxtal's own verdicts.

``atoms_to_row`` symmetrises a crystal into its canonical row (each site by its
generator in pyxtal's standard setting), so that row -> crystal -> row is exact;
``row_to_atoms`` / ``row_to_pyxtal`` build crystals from ``decode_row``'s result.
``symmetry_key`` names a row's symmetry (space group and Wyckoff positions).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
from ase import Atoms

from .. import schema as S
from .cell import LATTICE_DOF
from .decode import Decoded, decode_row
from .wyckoff import PYXTAL_LOCK, new_group, wrap, wyckoff_ops


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
    """Swallow prints, one thread at a time (``PYXTAL_LOCK``)."""
    with PYXTAL_LOCK, contextlib.redirect_stdout(io.StringIO()):
        yield


def pyxtal_verdicts(df: pd.DataFrame) -> np.ndarray:
    """What pyxtal's own decoder (``from_tabular_representation``, the paper's
    validity) says of each row: (n, 2) bools, [valid, valid with fewer sites than
    the row has] -- it drops a site it cannot place and still calls the crystal valid."""
    from pyxtal import pyxtal

    out = np.zeros((len(df), 2), dtype=bool)
    for k, row in enumerate(df.to_dict("records")):
        rep = [row[S.SPG], *[row[c] for c in S.LENGTHS], *np.radians([row[c] for c in S.ANGLES])]
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
    row: dict[str, Any] = {S.SPG: int(xtal.group.number)}
    para = xtal.lattice.get_para(degree=True)
    row.update(dict(zip(S.CELL, map(float, para))))
    ids = ids or [None] * len(sites)
    natoms = 0
    for k, (site, i) in enumerate(zip(sites, ids)):
        natoms += site.wp.multiplicity
        if k >= S.MAX_SITES:
            continue
        wp_col, el_col, x_col, y_col, z_col = S.site_columns(k)
        xyz = wrap(np.array(site.position if i is None else site.coords[i], float))
        row.update({wp_col: int(site.wp.index), el_col: str(site.specie),
                    x_col: float(xyz[0]), y_col: float(xyz[1]), z_col: float(xyz[2])})
    lt = xtal.group.lattice_type
    row[S.NATOMS] = natoms
    row[S.N_SITES] = len(sites)
    row[S.DOF] = LATTICE_DOF[lt] + sum(s.wp.get_dof() for s in sites)
    too_many = len(sites) > S.MAX_SITES
    row[S.VALID_XTAL] = not too_many
    row[S.ERROR] = (f"{len(sites)} Wyckoff sites, more than the table's {S.MAX_SITES}"
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
    if not row.get(S.VALID_XTAL):
        return row
    extra = {k: v for k, v in row.items() if k not in S.COLUMNS}
    keep = {k: row.get(k) for k in (S.ID, S.SOURCE, S.PARENT_ID)}
    dec = decode_row(row, check_distances=False)
    return {**pyxtal_to_row(decoded_to_pyxtal(dec)), **extra,
            **{k: v for k, v in keep.items() if v is not None}}


def wyckoff_labels(row: Mapping[str, Any]) -> list[str]:
    """Wyckoff labels (``'8a'``) of a row's occupied sites."""
    spg = int(row[S.SPG])
    out = []
    for k in range(S.MAX_SITES):
        wp = row.get(f"wp{k}")
        if wp is not None and not pd.isna(wp) and int(wp) >= 0:
            out.append(wyckoff_ops(spg, int(wp)).label)
    return out


def symmetry_key(df: pd.DataFrame) -> pd.Series:
    """Each row's symmetry as in the paper's Table I: space group and the sorted
    Wyckoff labels of its sites, e.g. ``"227 8a"`` or ``"216 4a 4d"`` (the same for
    any order of the sites).  The one name of a row's symmetry: counts of symmetries
    and the symmetries new to a training set are sets of these."""
    wp = np.sort(df.reindex(columns=S.WP, fill_value=-1).to_numpy(dtype=float), axis=1)
    wp = np.where(np.isnan(wp), -1, wp).astype(int)
    spg = df[S.SPG].to_numpy(dtype=int)
    combos, inverse = np.unique(np.column_stack([spg, wp]), axis=0, return_inverse=True)
    names = [" ".join([str(spg_k), *sorted(wyckoff_ops(int(spg_k), int(w)).label
                                           for w in sites if w >= 0)])
             for spg_k, *sites in combos]
    return pd.Series(np.array(names, dtype=object)[inverse.ravel()], index=df.index,
                     name="symmetry")
