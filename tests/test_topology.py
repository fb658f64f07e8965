"""Dimensionality and net topology (legodask.crystal): exact pieces, invariance,
RCSR names, and agreement with CrystalNets on the 150 SACADA sp2 structures."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from ase.build import bulk, make_supercell, molecule

from legodask.crystal.quotient import (bond_graph, components, coordination_sequences,
                                       from_genome, lattice_rank_index, periodicity)
from legodask.crystal.topology import (NETS, atoms_topology, genome_topology, net_atoms,
                                       topology_frame)

LONSDALEITE = Atoms("C4", cell=[[2.51, 0, 0], [-1.255, 2.51 * 3 ** 0.5 / 2, 0], [0, 0, 4.17]],
                    scaled_positions=[(1 / 3, 2 / 3, 1 / 16), (2 / 3, 1 / 3, 9 / 16),
                                      (1 / 3, 2 / 3, 7 / 16), (2 / 3, 1 / 3, 15 / 16)], pbc=True)
GRAPHITE = Atoms("C4", cell=[[2.464, 0, 0], [-1.232, 2.464 * 3 ** 0.5 / 2, 0], [0, 0, 6.711]],
                 scaled_positions=[(0, 0, 1 / 4), (0, 0, 3 / 4), (1 / 3, 2 / 3, 1 / 4),
                                   (2 / 3, 1 / 3, 3 / 4)], pbc=True)


def test_lattice_rank_and_index() -> None:
    assert lattice_rank_index(np.eye(3, dtype=int)) == (3, 1)
    assert lattice_rank_index(np.array([[2, 0, 0], [0, 1, 0], [0, 0, 1]])) == (3, 2)
    assert lattice_rank_index(np.array([[1, 1, 0], [2, 2, 0], [3, 3, 0]])) == (1, 1)
    assert lattice_rank_index(np.array([[2, 2, 0]])) == (1, 2)
    assert lattice_rank_index(np.array([[1, 1, 0], [1, -1, 0]])) == (2, 2)
    assert lattice_rank_index(np.zeros((0, 3), int)) == (0, 1)


def test_coordination_sequences_of_known_nets() -> None:
    dia = bond_graph(bulk("C", "diamond", a=3.567))
    assert coordination_sequences(dia, [0, 1], 8).tolist() == [
        [4, 12, 24, 42, 64, 92, 124, 162]] * 2
    hcb = bond_graph(GRAPHITE)
    assert coordination_sequences(hcb, np.arange(4), 6).tolist() == [[3, 6, 9, 12, 15, 18]] * 4
    srs = bond_graph(net_atoms("srs"))
    assert coordination_sequences(srs, [0], 10).tolist() == [
        [3, 6, 12, 24, 35, 48, 69, 86, 108, 138]]       # checked by BFS on a 12^3 supercell


def test_dimensions_of_molecule_chain_layer_and_framework() -> None:
    benzene = molecule("C6H6")
    benzene.cell = [12, 12, 12]
    benzene.pbc = True
    chain = Atoms("C2", cell=[2.6, 10, 10], positions=[(0, 5, 5), (1.3, 5, 5)], pbc=True)
    got = [atoms_topology(a) for a in (benzene, chain, GRAPHITE, bulk("C", "diamond", a=3.567))]
    assert [t.dimension for t in got] == [0, 1, 2, 3]
    assert [t.components for t in got] == [1, 1, 2, 1]
    assert [t.fold for t in got] == [0, 0, 0, 1]


def test_names_of_textbook_structures() -> None:
    dia = atoms_topology(bulk("C", "diamond", a=3.567, cubic=True))
    lon = atoms_topology(LONSDALEITE)
    graphite = atoms_topology(GRAPHITE)
    assert (dia.name, lon.name) == ("dia", "lon")
    assert dia.key != lon.key
    assert (graphite.name, graphite.dimension) == ("hcb", 2)
    assert len({atoms_topology(net_atoms(n)).key for n in NETS}) == len(NETS)


def _other_representation(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    """The same crystal in a non-diagonal supercell, axes permuted, origin moved,
    atoms shuffled and each displaced by 0.1 Å in a random direction."""
    sc = make_supercell(atoms, [[1, 1, 0], [0, 1, 1], [1, 0, 2]])     # 3x the cell
    perm = [2, 0, 1]
    out = Atoms(sc.numbers, cell=sc.cell[perm],
                scaled_positions=sc.get_scaled_positions()[:, perm], pbc=True)
    out.translate([0.37, -1.1, 2.3])
    out.wrap()
    out = out[rng.permutation(len(out))]
    step = rng.normal(size=(len(out), 3))
    out.positions += 0.1 * step / np.linalg.norm(step, axis=1, keepdims=True)
    return out


@pytest.mark.parametrize("name", ["dia", "lon", "srs", "ths", "hcb"])
def test_key_is_invariant(name: str) -> None:
    rng = np.random.default_rng(7)
    atoms = {"lon": LONSDALEITE, "hcb": GRAPHITE}.get(name) or net_atoms(name)
    ref = atoms_topology(atoms)
    other = atoms_topology(_other_representation(atoms, rng))
    assert (other.key, other.name, other.dimension, other.fold) == (ref.key, name, ref.dimension,
                                                                    ref.fold)


def test_orbits_are_trusted_unless_they_mix_degrees() -> None:
    atoms = net_atoms("clh")                 # two orbits, all 3-connected
    assert atoms_topology(atoms, orbits=np.zeros(len(atoms), int)).key != atoms_topology(atoms).key
    benzene = molecule("C6H6")               # C has 3 neighbours, H one: caught
    benzene.cell, benzene.pbc = [12, 12, 12], True
    assert atoms_topology(benzene, orbits=np.zeros(12, int)).key == atoms_topology(benzene).key
    chain = Atoms("C3", cell=[3.9, 10, 10], positions=[(0, 5, 5), (1.3, 5, 5), (2.6, 5, 5)],
                  pbc=True)
    assert atoms_topology(chain, orbits=[0, 0, 0]).key == atoms_topology(chain).key


def test_topology_frame_reads_rows_and_keeps_failures() -> None:
    from legodask.crystal.convert import atoms_to_row

    rows = [atoms_to_row(bulk("C", "diamond", a=3.567)), atoms_to_row(GRAPHITE),
            {"spg": 999, "a": 1.0}]
    out = topology_frame(pd.DataFrame(rows))
    assert out["dimension"].tolist() == [3, 2, -1]
    assert str(out["dimension"].dtype) == "int8"
    assert out["topology"].tolist()[:2] == ["dia", "hcb"]
    assert out["topology_key"].tolist()[0] == atoms_topology(bulk("C", "diamond", a=3.567)).key
    assert out["topology_key"].isna().tolist() == [False, False, True]
    assert out["topology_error"].notna().tolist() == [False, False, True]


# ---------------------------------------------------------------------------
# the 150 SACADA sp2 structures against CrystalNets' own results
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sacada(sacada_db) -> list[tuple]:
    """(row, atoms, our topology) for every row of the db."""
    from ase.db import connect

    rows = list(connect(sacada_db).select())
    return [(r, a, atoms_topology(a)) for r in rows for a in [r.toatoms()]]


def _reference(row) -> str:
    """CrystalNets' identity of the net: its genome, or its RCSR name when the
    db stores the name instead ("None" genome)."""
    return row.topology if row.topology_detail == "None" else row.topology_detail


def test_sacada_dimension_agrees(sacada) -> None:
    assert all(t.dimension == r.dimension for r, _, t in sacada)
    assert len(sacada) == 150


def test_sacada_dimension_agrees_with_ase(sacada) -> None:
    """ASE's rank-determination algorithm on the same bonds: the same histogram
    of component dimensions (ASE's pure-Python traversal is slow: the rows of up
    to 24 atoms, and graphite)."""
    from ase.geometry.dimensionality.rank_determination import RDA

    small = [atoms for _, atoms, _ in sacada if len(atoms) <= 24]
    assert len(small) >= 40
    for atoms in small + [GRAPHITE]:
        g = bond_graph(atoms)
        rda = RDA(g.n)
        for i, j, o in zip(g.src, g.dst, g.offset):
            rda.insert_bond(int(i), int(j), tuple(int(x) for x in o))
        dims, _ = periodicity(g, components(g))
        assert tuple(rda.check()) == tuple(np.bincount(dims, minlength=4))


def test_sacada_partition_equals_crystalnets(sacada) -> None:
    ours = [t.key for _, _, t in sacada]
    theirs = [_reference(r) for r, _, _ in sacada]
    pairs = set(zip(ours, theirs))
    assert len(pairs) == len(set(ours)) == len(set(theirs))      # a bijection
    folds = Counter(t.fold for _, _, t in sacada)
    assert folds == Counter({1: 148, 2: 2})                      # the two "(2)" genomes


def test_sacada_keys_equal_the_keys_of_crystalnets_genomes(sacada) -> None:
    """Our key of the atoms equals our key of CrystalNets' genome graph wherever
    CrystalNets bonded as we do (every vertex 3-connected); two rows where it
    also bonded contacts of 1.90-2.2 Å (5- and 4-connected vertices) differ."""
    differ = []
    for r, _, t in sacada:
        if r.topology_detail == "None":
            continue
        graph, _ = from_genome(r.topology_detail)
        if np.all(graph.degree == 3):
            assert genome_topology(r.topology_detail).key == t.key, r.id
        else:
            differ.append(r.id)
    assert len(differ) == 2


def test_sacada_named_nets(sacada) -> None:
    names = {r.topology: t.name for r, _, t in sacada if r.topology != "aaa"}
    for name in ("srs", "ths", "bto", "eta", "etb", "lig", "pcu-h", "pbz", "pbp", "utc", "clh"):
        assert names[name] == name
    assert all(t.name in ("", r.topology) for r, _, t in sacada)
