"""Decoding rows: exact round trips, projection onto Wyckoff positions, garbage rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from ase.build import bulk

from legodask.crystal.cell import metric_tensor, symmetrize_cell
from legodask.crystal.convert import (atoms_to_pyxtal, atoms_to_row, pyxtal_to_row,
                                      row_to_atoms, row_to_pyxtal, wyckoff_labels)
from legodask.crystal.decode import DecodeError, decode_row
from legodask.crystal.frame import decode_frame, to_generators
from legodask.crystal.wyckoff import generator_ops, group_info, project_many
from legodask.models.grid import Grid
from legodask import schema as S
from legodask.sources import layouts

EXCLUDED = {1, 32, 47, 48, 49, 50, 51, 52, 130, 144}


@pytest.fixture(scope="module")
def sacada_rows(sacada_db):
    from ase.db import connect

    with connect(sacada_db) as db:
        return [(r.id, r, atoms_to_row(r.toatoms())) for r in db.select()]


def test_ingest_matches_db_symmetry(sacada_rows):
    for db_id, r, row in sacada_rows:
        if row["n_sites"] > S.MAX_SITES:
            continue
        assert row["spg"] == r.space_group_number, db_id
        assert sorted(wyckoff_labels(row)) == sorted(eval(r.wps)), db_id
        assert row["natoms"] == r.natoms, db_id


def test_round_trip_is_exact(sacada_rows):
    n = 0
    for db_id, _, row in sacada_rows:
        if db_id in EXCLUDED:
            continue
        row2 = pyxtal_to_row(row_to_pyxtal(row))
        for col in S.TABULAR + ["natoms", "n_sites", "dof"]:
            v, v2 = row.get(col), row2.get(col)
            if isinstance(v, float) and math.isnan(v):
                assert v2 is None or math.isnan(v2)
            elif isinstance(v, float):
                assert v2 == pytest.approx(v, abs=1e-9), (db_id, col)
            else:
                assert v == v2, (db_id, col)
        n += 1
    assert n == 140


def test_decoded_atoms_are_the_source_structure(sacada_rows):
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    matcher = StructureMatcher(ltol=0.05, stol=0.05, angle_tol=1)
    for _, r, row in sacada_rows[:30]:
        if not row["valid_xtal"]:
            continue
        a = AseAtomsAdaptor.get_structure(r.toatoms())
        b = AseAtomsAdaptor.get_structure(row_to_atoms(row))
        assert matcher.fit(a, b)


def test_projection_moves_a_noisy_site_back():
    """Diamond 8a in Fd-3m: any point within tolerance snaps to (1/8, 1/8, 1/8)."""
    row = pyxtal_to_row(atoms_to_pyxtal(bulk("C", "diamond", a=3.567, cubic=True)))
    noisy = dict(row, x0=row["x0"] + 0.02, y0=row["y0"] - 0.01)
    dec = decode_row(noisy)
    assert dec.natoms == 8 and dec.dof == 1
    assert 0 < dec.sites[0].moved < 0.1
    assert decode_row(row).sites[0].moved == pytest.approx(0, abs=1e-12)
    # the projected point is a member of the 8a orbit of the clean row
    clean = decode_row(row).sites[0].orbit()
    assert np.min(np.abs(((clean - dec.sites[0].point) + 0.5) % 1 - 0.5).max(1)) < 1e-9


def test_site_is_never_dropped():
    """A special site far from its position is an invalid row, not a lost site."""
    row = pyxtal_to_row(atoms_to_pyxtal(bulk("C", "diamond", a=3.567, cubic=True)))
    far = dict(row, x0=0.4, y0=0.1, z0=0.3)
    out = decode_frame(pd.DataFrame([far, row]))
    assert list(out["valid_xtal"]) == [False, True]
    assert "from Wyckoff position 8a" in out["error"][0]
    assert list(out["n_sites"]) == [1, 1]


@pytest.mark.parametrize("change, reason", [
    ({"spg": 231}, "space group"),
    ({"spg": 0}, "space group"),
    ({"spg": float("nan")}, "space group"),
    ({"a": float("nan")}, "NaN"),
    ({"a": -3.0}, "cell lengths"),
    ({"alpha": 179.0}, "angles"),
    ({"wp0": 99}, "Wyckoff index"),
    ({"wp0": 2.5}, "Wyckoff index"),
    ({"x0": float("inf")}, "coordinates"),
    ({"el0": "Xx"}, "element"),
    ({"wp0": -1}, "no occupied"),
])
def test_garbage_gets_a_reason(change, reason):
    row = pyxtal_to_row(atoms_to_pyxtal(bulk("C", "diamond", a=3.567, cubic=True)))
    with pytest.raises(DecodeError, match=reason):
        decode_row({**row, **change})


def test_overlapping_atoms_are_invalid():
    # two general-position sites on top of each other
    row = {"spg": 1, "a": 4, "b": 4, "c": 4, "alpha": 90, "beta": 90, "gamma": 90,
           "wp0": 0, "el0": "C", "x0": 0.1, "y0": 0.1, "z0": 0.1,
           "wp1": 0, "el1": "C", "x1": 0.1, "y1": 0.1, "z1": 0.12}
    with pytest.raises(DecodeError, match="on top of each other"):
        decode_row(row)


def test_multi_element_rock_salt():
    xtal = atoms_to_pyxtal(bulk("NaCl", "rocksalt", a=5.64, cubic=True))
    row = pyxtal_to_row(xtal)
    assert row["spg"] == 225 and {row["el0"], row["el1"]} == {"Na", "Cl"}
    atoms = row_to_atoms(row)
    assert sorted(atoms.get_chemical_symbols()) == ["Cl"] * 4 + ["Na"] * 4


def test_discrete_grid_round_trip(sacada_rows):
    grid = Grid()
    df = S.conform(pd.DataFrame([r for i, _, r in sacada_rows if i not in EXCLUDED]))
    bins = grid.to_bins(df)
    back = grid.from_bins(bins)
    assert np.array_equal(grid.to_bins(back)[S.TABULAR].to_numpy(), bins[S.TABULAR].to_numpy())
    used = df["wp0"] >= 0
    diff = back.loc[used, "x0"] - df.loc[used, "x0"]
    assert np.all(np.abs((diff + 0.5) % 1 - 0.5) <= 0.5 / grid.n_xyz + 1e-9)


def test_reference_layout():
    """The reference CSV layout: angles in radians, -1 padding, 39 columns."""
    vals = [227, 3.567, 3.567, 3.567, math.pi / 2, math.pi / 2, math.pi / 2,
            8, 0.125, 0.125, 0.125] + [-1] * 28
    df = pd.DataFrame([vals], columns=[str(i) for i in range(39)])
    rows = decode_frame(layouts.to_table(df, layouts.Layout(layouts.REFERENCE, True, "C")))
    assert rows["valid_xtal"][0] and rows["natoms"][0] == 8 and rows["alpha"][0] == 90


def _orbits(row) -> list[np.ndarray]:
    """Each site's orbit, sorted, as fractional coordinates in [0, 1)."""
    dec = decode_row(row, check_distances=False)
    return [np.array(sorted(map(tuple, np.round(s.orbit() % 1.0, 8) % 1.0))) for s in dec.sites]


def test_generator_form_is_the_same_crystal_written_one_way(sacada_rows):
    """Rows naming any atom of each orbit all become the generator's form: the same
    orbits, and the coordinates a special position fixes the same in every row."""
    checked = 0
    for db_id, _, row in sacada_rows[:40]:
        if not row["valid_xtal"] or row["n_sites"] > S.MAX_SITES:
            continue
        xtal = row_to_pyxtal(row)
        mult = min(s.wp.multiplicity for s in xtal.atom_sites)
        swaps = pd.DataFrame([pyxtal_to_row(xtal, ids=[j] * len(xtal.atom_sites))
                              for j in range(mult)])
        gen = to_generators(swaps)
        for (_, a), (_, b) in zip(swaps.iterrows(), gen.iterrows()):
            assert all(np.allclose(p, q, atol=1e-7) for p, q in zip(_orbits(a), _orbits(b)))
        for k in range(row["n_sites"]):
            ops = generator_ops(row["spg"], row[f"wp{k}"])
            xyz = gen[S.XYZ[k]].to_numpy(float)
            G = metric_tensor(symmetrize_cell(gen[S.CELL].to_numpy(float)[0],
                                                          group_info(row["spg"])[0]))
            moved = project_many(ops, xyz, np.repeat(G[None], len(xyz), 0))[2]
            assert np.all(moved < 1e-6), (db_id, k)      # on the generator's own subspace
            if ops.dof < 3:
                fixed = ~np.any(ops.A[0] != 0, axis=1)    # components the position fixes
                assert np.allclose(xyz[:, fixed], xyz[0, fixed], atol=1e-7), (db_id, k)
        np.testing.assert_allclose(to_generators(gen)[S.XYZ_FLAT].to_numpy(float),
                                   gen[S.XYZ_FLAT].to_numpy(float), atol=1e-6)
        checked += mult > 1
    assert checked >= 10


def test_snapping_onto_the_generator_reads_fixed_coordinates_from_the_group():
    """Diamond 8a with a site far off: invalid as given, 8 atoms once snapped."""
    row = pyxtal_to_row(atoms_to_pyxtal(bulk("C", "diamond", a=3.567, cubic=True)))
    far = pd.DataFrame([dict(row, x0=0.4, y0=0.1, z0=0.3)])
    assert not decode_frame(far)["valid_xtal"][0]
    snapped = decode_frame(to_generators(far, snap=True))
    assert snapped["valid_xtal"][0] and snapped["natoms"][0] == 8
    np.testing.assert_allclose(snapped[S.XYZ[0]].to_numpy(float)[0], [row[c] for c in S.XYZ[0]],
                               atol=1e-12)
    # a garbage row passes through for the decoder to word
    bad = pd.DataFrame([dict(row, wp0=99)])
    assert to_generators(bad, snap=True)["x0"][0] == row["x0"]
