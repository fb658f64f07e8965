"""The periodic quotient graph of a crystal and what is exact about it.

A bonded crystal is a periodic net.  Its *quotient graph* has one vertex per atom
of the cell and one edge per bond, labelled with the lattice offset of the cell
its far end lies in (the edge ``(i, j, o)``: atom ``i`` of cell 0 is bonded to
atom ``j`` of cell ``o``).  Everything here works on that graph alone, so it
holds for any cell and any setting of the same crystal:

* ``periodicity``: per connected component of the quotient graph, the rank of
  the lattice spanned by the net voltages of its cycles (the component's
  dimension, 0 to 3) and its index in the saturated lattice of that rank (for a
  3-periodic component: the number of disjoint nets it unfolds into, i.e.
  interpenetration by a cell translation).  Exact integer arithmetic.
* ``coordination_sequences``: the number of vertices at each topological
  distance 1..N from a vertex of the *periodic* net, by a breadth-first search
  over (vertex, cell offset) pairs, vectorised over all start vertices at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from math import gcd

import numpy as np
from ase import Atoms

from .environment import BOND_FACTOR, covalent_radius


@dataclass(frozen=True)
class QuotientGraph:
    """Vertices ``0..n-1`` and undirected edges: atom ``src[k]`` of cell 0 is
    bonded to atom ``dst[k]`` of cell ``offset[k]``, each bond listed once."""

    n: int
    src: np.ndarray        # (m,) int64
    dst: np.ndarray        # (m,) int64
    offset: np.ndarray     # (m, 3) int64

    def directed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Both directions of every edge sorted by source vertex: source, target,
        offset, and the CSR pointer ``ptr`` (edges of ``v``: ``ptr[v]:ptr[v+1]``)."""
        s = np.concatenate([self.src, self.dst])
        d = np.concatenate([self.dst, self.src])
        o = np.concatenate([self.offset, -self.offset])
        order = np.argsort(s, kind="stable")
        ptr = np.searchsorted(s[order], np.arange(self.n + 1))
        return s[order], d[order], o[order], ptr

    @property
    def degree(self) -> np.ndarray:
        return np.bincount(np.concatenate([self.src, self.dst]), minlength=self.n)


def bond_graph(atoms: Atoms, factor: float = BOND_FACTOR) -> QuotientGraph:
    """Quotient graph of ``atoms`` with the environment check's bond rule: bonded
    when closer than ``factor`` x the sum of the covalent radii."""
    from ase.neighborlist import neighbor_list

    radii = [factor * covalent_radius(s) for s in atoms.get_chemical_symbols()]
    i, j, shift = neighbor_list("ijS", atoms, radii, self_interaction=False)
    # every bond appears as (i, j, S) and (j, i, -S): keep the first of the two
    lead = shift[np.arange(len(shift)), np.argmax(shift != 0, axis=1)]
    keep = (i < j) | ((i == j) & (lead > 0))
    return QuotientGraph(len(atoms), i[keep].astype(np.int64), j[keep].astype(np.int64),
                         shift[keep].astype(np.int64))


def from_genome(text: str) -> tuple[QuotientGraph, int]:
    """Quotient graph of a CrystalNets/Systre-style genome "D i j o_1..o_D ..."
    (vertices from 1; offsets padded to 3 components) and its interpenetration
    (CrystalNets writes a trailing "(k)" for k copies of the net)."""
    text = text.strip()
    fold = 1
    if text.endswith(")"):
        text, _, k = text[:-1].rpartition("(")
        fold = int(k)
    values = np.array(text.split(), dtype=np.int64)
    dim = int(values[0])
    edges = values[1:].reshape(-1, 2 + dim)
    offset = np.zeros((len(edges), 3), np.int64)
    offset[:, :dim] = edges[:, 2:]
    n = int(edges[:, :2].max())
    return QuotientGraph(n, edges[:, 0] - 1, edges[:, 1] - 1, offset), fold


def components(g: QuotientGraph) -> np.ndarray:
    """Connected-component label of every vertex (offsets ignored)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    adj = coo_matrix((np.ones(len(g.src)), (g.src, g.dst)), shape=(g.n, g.n))
    return connected_components(adj, directed=False)[1]


def periodicity(g: QuotientGraph, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dimension (rank of the cycle lattice) and index of every component.

    A spanning forest lifts each vertex to a cell (its potential); an edge
    outside the forest closes a cycle whose net voltage is ``offset + pot[src] -
    pot[dst]``, and these voltages span the component's cycle lattice.
    """
    s, d, o, _ = g.directed()
    edge_id = np.concatenate([np.arange(len(g.src))] * 2)[np.argsort(
        np.concatenate([g.src, g.dst]), kind="stable")]
    ncomp = int(labels.max()) + 1 if g.n else 0
    pot = np.zeros((g.n, 3), np.int64)
    seen = np.zeros(g.n, bool)
    seen[np.unique(labels, return_index=True)[1]] = True        # one root each
    tree = np.zeros(len(g.src), bool)
    while not seen.all():
        cand = np.flatnonzero(seen[s] & ~seen[d])
        _, first = np.unique(d[cand], return_index=True)
        e = cand[first]
        pot[d[e]] = pot[s[e]] + o[e]
        seen[d[e]] = True
        tree[edge_id[e]] = True
    cyc = ~tree
    volt = g.offset[cyc] + pot[g.src[cyc]] - pot[g.dst[cyc]]
    comp = labels[g.src[cyc]]
    dims = np.zeros(ncomp, np.int8)
    index = np.ones(ncomp, np.int64)
    for c in range(ncomp):
        dims[c], index[c] = lattice_rank_index(volt[comp == c])
    return dims, index


def lattice_rank_index(vectors: np.ndarray) -> tuple[int, int]:
    """Rank of the integer lattice spanned by ``vectors`` (k, 3) and its index in
    the saturated sublattice of Z^3 of that rank (the gcd of the maximal minors
    of a basis), by exact integer row reduction to echelon form."""
    rows = [[int(x) for x in v] for v in vectors if np.any(v)]
    basis: list[list[int]] = []
    for col in range(3):
        piv = [r for r in rows if r[col]]
        rows = [r for r in rows if not r[col]]
        while len(piv) > 1:                   # Euclid on the column
            piv.sort(key=lambda r: abs(r[col]))
            p, reduced = piv[0], []
            for r in piv[1:]:
                q = r[col] // p[col]
                reduced.append([a - q * b for a, b in zip(r, p)])
            piv = [p] + [r for r in reduced if r[col]]
            rows += [r for r in reduced if not r[col] and any(r)]
        basis += piv
    if not basis:
        return 0, 1
    m = np.array(basis, dtype=float)
    minors = [round(np.linalg.det(m[:, list(c)])) for c in combinations(range(3), len(basis))]
    index = 0
    for x in minors:
        index = gcd(index, abs(int(x)))
    return len(basis), index


def coordination_sequences(g: QuotientGraph, sources: np.ndarray, depth: int) -> np.ndarray:
    """Coordination sequences (len(sources), depth) of the periodic net.

    Breadth-first search over (source, vertex, cell offset) states for all
    sources at once; each state is one int64, and a shell is the set of states
    reached from the previous shell that are in neither of the last two shells.
    """
    sources = np.asarray(sources, np.int64)
    _, d, o, ptr = g.directed()
    deg = np.diff(ptr)
    half = depth * int(np.abs(g.offset).max(initial=0)) + 1
    base = 2 * half + 1

    def encode(si: np.ndarray, v: np.ndarray, off: np.ndarray) -> np.ndarray:
        c = off + half
        return ((si * g.n + v) * base + c[:, 0]) * base * base + c[:, 1] * base + c[:, 2]

    si = np.arange(len(sources), dtype=np.int64)
    v = sources.copy()
    off = np.zeros((len(sources), 3), np.int64)
    cur = np.sort(encode(si, v, off))
    prev = np.empty(0, np.int64)
    out = np.zeros((len(sources), depth), np.int64)
    for k in range(depth):
        counts = deg[v]
        rep = np.repeat(np.arange(len(v)), counts)
        start = np.repeat(ptr[v] - np.cumsum(counts) + counts, counts)
        e = start + np.arange(len(rep))
        nsi, nv, noff = si[rep], d[e], off[rep] + o[e]
        code, idx = np.unique(encode(nsi, nv, noff), return_index=True)
        keep = ~(_member(cur, code) | _member(prev, code))
        idx = idx[keep]
        si, v, off = nsi[idx], nv[idx], noff[idx]
        out[:, k] = np.bincount(si, minlength=len(sources))
        prev, cur = cur, code[keep]
    return out


def _member(ref: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Whether each of ``x`` is in the sorted array ``ref``."""
    if not len(ref):
        return np.zeros(len(x), bool)
    pos = np.minimum(np.searchsorted(ref, x), len(ref) - 1)
    return ref[pos] == x
