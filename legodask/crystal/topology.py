"""What a found crystal is: its dimensionality and the topology of its net.

The bonds are the environment check's (closer than ``BOND_FACTOR`` x the sum of
the covalent radii, 1.872 Å for C-C), and everything below is computed on the
periodic quotient graph they make (``quotient``), never on a geometry:

* **dimension**: per bonded component of the cell, the rank of its cycle lattice
  (exact; agrees with ASE's rank-determination algorithm).  The crystal's
  dimension is the largest; ``components`` counts the components in the cell
  (a cell-dependent number: graphite's cell holds two layers); ``fold`` counts
  the disjoint 3-periodic nets of the whole crystal (interpenetration), which is
  not.
* **topology key**: a 16-hex-digit hash of the interpenetration and of the
  multiset over the vertices of the periodic net of (their component's
  dimension, their coordination sequence to ``DEPTH`` = 12 shells), as fractions
  of the vertex count reduced by their gcd.  It does not depend on the cell (a
  supercell scales every count alike), the setting, the atom order or the
  geometry beyond which atoms are bonded; element types are ignored (a net, not
  a coloured net).  It is an **invariant, not the topological genome**
  (CrystalNets/Systre's canonical form of the net): equal nets always get equal
  keys, but two different nets get the same key when their vertex classes have
  the same coordination sequences up to 12 shells.  That happens for nets that
  are locally alike beyond 12 bonds (of the 150 SACADA sp2 nets, pbz-m and
  nku-a differ first at shell 12, mct at shell 10) and for the rare distinct
  nets with identical coordination sequences.  On those 150 it partitions
  exactly as CrystalNets' genomes do.
* **name**: the RCSR symbol of the key when it is one of ``NETS`` (built here
  from coordinates, never from a database), else "".

Coordination sequences are computed for one vertex per symmetry orbit when the
caller knows the orbits (a table row's Wyckoff sites; degrees are checked to
agree within an orbit, else every vertex is used), for every vertex otherwise.

``atoms_topology`` is the one-structure call; ``topology_frame`` the kernel
over a pandas frame of structure-table rows.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from ase import Atoms

from .. import schema as S
from .environment import BOND_FACTOR
from .quotient import (QuotientGraph, bond_graph, components, coordination_sequences,
                       from_genome, periodicity)

DEPTH = 12      # coordination shells: the least that separates the 150 SACADA nets

# RCSR nets as carbon structures: space group, cell (Å, degrees) and one
# position per Wyckoff orbit (spglib's standard setting; ASE's first setting).
# dia, lon, hcb are the textbook structures; the others are the SACADA sp2
# allotropes with that net, coordinates rounded.
NETS: dict[str, tuple[int, tuple[float, ...], tuple[tuple[float, float, float], ...]]] = {
    "dia": (227, (3.567, 3.567, 3.567, 90, 90, 90), ((0.0, 0.0, 0.0),)),
    "lon": (194, (2.52, 2.52, 4.12, 90, 90, 120), ((1 / 3, 2 / 3, 0.0625),)),
    "hcb": (191, (2.46, 2.46, 10.0, 90, 90, 120), ((1 / 3, 2 / 3, 0.0),)),
    "srs": (214, (4.017, 4.017, 4.017, 90, 90, 90), ((0.125, 0.125, 0.125),)),
    "ths": (141, (2.469, 2.469, 8.489, 90, 90, 90), ((0.5, 0.5, 0.4164),)),
    "bto": (180, (2.463, 2.463, 6.385, 90, 90, 120), ((0.5, 0.0, 0.6112),)),
    "eta": (181, (4.097, 4.097, 3.482, 90, 90, 120), ((0.4, 0.8, 0.0),)),
    "etb": (166, (7.087, 7.087, 3.488, 90, 90, 120), ((0.0665, 1 / 3, 5 / 6),)),
    "lig": (141, (5.690, 5.690, 4.004, 90, 90, 90), ((0.8752, 0.75, 0.125),)),
    "pcu-h": (166, (7.199, 7.199, 1.983, 90, 90, 120), ((0.8872, 0.1128, 0.053),)),
    "pbz": (224, (6.026, 6.026, 6.026, 90, 90, 90), ((0.25, 0.5833, 0.0833),)),
    "pbp": (229, (7.742, 7.742, 7.742, 90, 90, 90), ((0.1909, 0.1909, 0.4088),)),
    "utc": (214, (7.142, 7.142, 7.142, 90, 90, 90), ((0.8429, 0.1507, 0.0353),)),
    "clh": (131, (2.461, 2.461, 8.518, 90, 90, 90), ((0.0, 0.5, 0.4166), (0.0, 0.0, 0.8334))),
}


class TopologyError(ValueError):
    """A structure whose topology cannot be computed; the message says why."""


@dataclass(frozen=True)
class Topology:
    """Dimensionality and net of one crystal."""

    dimension: int       # largest dimension of a bonded component (0..3)
    components: int      # bonded components in the cell
    fold: int            # disjoint 3-periodic nets in the crystal (0: none)
    key: str             # topology key (hex)
    name: str            # RCSR symbol of the key, or ""


def atoms_topology(atoms: Atoms, orbits: np.ndarray | None = None, depth: int = DEPTH,
                   factor: float = BOND_FACTOR) -> Topology:
    """Topology of one crystal.  ``orbits``: a label per atom, equal for atoms
    that a symmetry of the crystal maps onto each other (fewer searches)."""
    if len(atoms) == 0:
        raise TopologyError("no atoms")
    if not np.all(atoms.pbc):
        raise TopologyError("not periodic in three directions")
    return graph_topology(bond_graph(atoms, factor), orbits, depth)


def genome_topology(genome: str, depth: int = DEPTH) -> Topology:
    """Topology of the net a CrystalNets genome string describes."""
    graph, fold = from_genome(genome)
    return graph_topology(graph, None, depth, copies=fold)


def graph_topology(g: QuotientGraph, orbits: np.ndarray | None = None, depth: int = DEPTH,
                   copies: int = 1) -> Topology:
    """Topology of a quotient graph (``copies``: the net is that many times
    interpenetrated beyond what the graph shows)."""
    dimension, ncomp, fold, key = _invariants(g, orbits, depth, copies)
    return Topology(dimension, ncomp, fold, key, net_names().get(key, ""))


def _invariants(g: QuotientGraph, orbits: np.ndarray | None, depth: int,
                copies: int) -> tuple[int, int, int, str]:
    labels = components(g)
    dims, index = periodicity(g, labels)
    reps, weights = _representatives(g, orbits)
    cs = coordination_sequences(g, reps, depth)
    rows = np.column_stack([dims[labels[reps]], cs])
    uniq, inverse = np.unique(rows, axis=0, return_inverse=True)
    counts = np.bincount(inverse.ravel(), weights=weights).astype(np.int64)
    counts //= np.gcd.reduce(counts)
    fold = copies * int(index[dims == 3].sum())
    text = f"{fold};" + ";".join(f"{c}:{','.join(map(str, r))}" for c, r in zip(counts, uniq))
    key = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    return int(dims.max()), len(dims), fold, key


def _representatives(g: QuotientGraph, orbits: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """One vertex per orbit and the orbit sizes; every vertex when no orbits are
    given or when an orbit mixes degrees (then it is no orbit of the net)."""
    if orbits is not None:
        orbits = np.asarray(orbits)
        if len(orbits) != g.n:
            raise ValueError(f"{len(orbits)} orbit labels for {g.n} atoms")
        _, first, inverse, sizes = np.unique(orbits, return_index=True,
                                             return_inverse=True, return_counts=True)
        deg = g.degree
        if np.array_equal(deg, deg[first][inverse.ravel()]):
            return first, sizes
    return np.arange(g.n), np.ones(g.n, np.int64)


def net_atoms(name: str) -> Atoms:
    """The carbon structure of the RCSR net ``name`` of ``NETS``."""
    from ase.spacegroup import crystal

    spg, cellpar, basis = NETS[name]
    return crystal(["C"] * len(basis), basis, spacegroup=spg, cellpar=cellpar,
                   primitive_cell=True)


@functools.lru_cache(maxsize=1)
def net_names() -> dict[str, str]:
    """Topology key -> RCSR symbol, computed from the ``NETS`` coordinates."""
    return {_invariants(bond_graph(net_atoms(name)), None, DEPTH, 1)[3]: name
            for name in NETS}


# ---------------------------------------------------------------------------
# the kernel over structure-table rows
# ---------------------------------------------------------------------------

def row_structure(row: Mapping[str, Any], geometry: str | None = None
                  ) -> tuple[Atoms, np.ndarray | None]:
    """Atoms of a row and their orbit labels: the ``relaxed_<geometry>`` column
    when given and filled (no orbits), else the decoded Wyckoff sites."""
    from .decode import decode_row
    from .fingerprint import filled, row_atoms

    if geometry and filled(row.get(f"{S.RELAXED}{geometry}")):
        return row_atoms(row, geometry), None
    dec = decode_row(row, check_distances=False)
    sizes = [s.wp.multiplicity for s in dec.sites]
    return dec.to_atoms(), np.repeat(np.arange(len(sizes)), sizes)


def topology_frame(df: pd.DataFrame, geometry: str | None = None,
                   depth: int = DEPTH, rows: np.ndarray | None = None) -> pd.DataFrame:
    """The topology kernel: ``df`` with the ``schema.TOPOLOGY_DTYPES`` columns added.

    ``rows``: a boolean mask of the rows to analyse (default: all); the others,
    and a row that cannot be decoded or analysed, keep dimension -1, components
    -1, null key and name (a row analysed and failed has the reason in
    ``topology_error``); no row is dropped.
    """
    n = len(df)
    out: dict[str, list] = {S.DIMENSION: [-1] * n, S.COMPONENTS: [-1] * n,
                            S.TOPOLOGY_KEY: [None] * n, S.TOPOLOGY: [None] * n,
                            S.TOPOLOGY_ERROR: [None] * n}
    chosen = np.arange(n) if rows is None else np.flatnonzero(np.asarray(rows, bool))
    for i, rec in zip(chosen, df.iloc[chosen].to_dict("records")):
        try:
            topo = atoms_topology(*row_structure(rec, geometry), depth=depth)
        except Exception as exc:  # any failure is recorded on the row
            out[S.TOPOLOGY_ERROR][i] = f"{type(exc).__name__}: {exc}"
            continue
        out[S.DIMENSION][i], out[S.COMPONENTS][i] = topo.dimension, topo.components
        out[S.TOPOLOGY_KEY][i], out[S.TOPOLOGY][i] = topo.key, topo.name
    res = df.drop(columns=[c for c in S.TOPOLOGY_DTYPES if c in df.columns])
    for col, dtype in S.TOPOLOGY_DTYPES.items():
        res[col] = pd.Series(out[col], index=df.index, dtype=dtype)
    return res
