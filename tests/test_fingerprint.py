"""One crystal, one fingerprint: every subgroup setting, cell and orbit representative
of a training structure gets its fingerprint; different crystals do not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from ase.db import connect

from legodask.crystal.convert import atoms_to_pyxtal, pyxtal_to_row, row_to_atoms
from legodask.crystal import fingerprint as F
from legodask import schema as S
from legodask.energy.relax import atoms_to_text

# Small training structures from several crystal families:
# 2 srs (I4_132), 3 (I4_1/amd), 5 (P6_222), 19 (P4_2/mmc), 20 (Immm), 58 (P6_2).
IDS = [2, 3, 5, 19, 20, 58]


def representations(xtal) -> list[dict]:
    """Valid rows of every t- and k-subgroup representation (no distortion) of a
    crystal, each also with the last atom of every orbit as its representative."""
    rows = []
    for group_type in ("t", "k"):
        for sub in xtal.subgroup(eps=0, group_type=group_type, max_cell=4):
            row = pyxtal_to_row(sub)
            if not row["valid_xtal"]:
                continue                       # more sites than the table holds
            last = [len(site.coords) - 1 for site in sub.atom_sites]
            rows += [row, pyxtal_to_row(sub, ids=last)]
    return rows


@pytest.fixture(scope="module")
def crystals(sacada_db) -> dict[int, object]:
    db = connect(sacada_db)
    return {i: atoms_to_pyxtal(db.get(id=i).toatoms()) for i in IDS}


def test_every_subgroup_representation_has_the_parents_fingerprint(crystals):
    keys = {}
    for i, xtal in crystals.items():
        parent = F.fingerprint_atoms(xtal.to_ase())
        rows = representations(xtal)
        groups = {r["spg"] for r in rows}
        assert len(rows) >= 4 and len(groups - {xtal.group.number}) >= 1, i
        fp = F.fingerprint_frame(pd.DataFrame(rows))
        assert fp[S.FP_ERROR].isna().all(), fp[S.FP_ERROR].dropna().tolist()
        # one coarse key, volume bins within one of each other, fine match with the parent
        assert set(fp[S.FINGERPRINT]) == {parent.key}, (i, sorted(groups))
        assert (fp[S.FP_VBIN] - parent.vbin).abs().max() <= 1
        assert set(fp[S.FP_SPG]) == {xtal.group.number}
        assert all(F.same_structure(parent.data, d, "pymatgen") for d in fp[S.FP_DATA])
        keys[i] = parent.key
    assert len(set(keys.values())) == len(keys)        # the six crystals differ


def test_cell_choice_and_origin_do_not_matter(crystals):
    atoms = crystals[20].to_ase()
    ref = F.fingerprint_atoms(atoms)
    moved = atoms.repeat((2, 1, 3))
    moved.translate([0.37, -1.1, 2.0])
    moved.wrap()
    moved = moved[np.random.default_rng(0).permutation(len(moved))]
    other = F.fingerprint_atoms(moved)
    assert (other.key, other.vbin, other.natoms) == (ref.key, ref.vbin, ref.natoms)
    assert F.same_structure(ref.data, other.data, "pymatgen")


def test_same_key_different_crystals_are_told_apart(sacada_db):
    # ids 4 and 14: both P6_222 with one 6-fold carbon orbit, 3-coordinated:
    # the coarse key cannot see the difference, the fine comparison must.
    db = connect(sacada_db)
    a, b = (F.fingerprint_atoms(db.get(id=i).toatoms()) for i in (4, 14))
    assert a.key == b.key
    assert not F.same_structure(a.data, b.data, "env")
    assert not F.same_structure(a.data, b.data, "pymatgen")


def test_strained_copy_is_a_different_crystal(crystals):
    atoms = crystals[3].to_ase()
    ref = F.fingerprint_atoms(atoms)
    strained = atoms.copy()
    strained.set_cell(atoms.cell * 1.08, scale_atoms=True)
    other = F.fingerprint_atoms(strained)
    assert other.key == ref.key and abs(other.vbin - ref.vbin) > 1
    assert not F.same_structure(ref.data, other.data, "env")
    # a noisy copy (0.005 Å) of the same crystal is still the same one
    noisy = atoms.copy()
    noisy.positions += np.random.default_rng(1).normal(0, 0.005, noisy.positions.shape)
    again = F.fingerprint_atoms(noisy)
    assert again.key == ref.key and F.same_structure(ref.data, again.data, "pymatgen")


def test_relaxed_geometry_column_is_used_when_given(crystals):
    row = pyxtal_to_row(crystals[5], id="x")
    relaxed = row_to_atoms(pyxtal_to_row(crystals[2]))
    df = pd.DataFrame([row, row])
    df["relaxed_ff"] = [atoms_to_text(relaxed), None]
    fp = F.fingerprint_frame(df, geometry="ff")
    assert fp[S.FINGERPRINT].tolist() == [F.fingerprint_atoms(relaxed).key,
                                          F.fingerprint_atoms(row_to_atoms(row)).key]


def test_bad_rows_are_recorded_not_raised(crystals):
    good = pyxtal_to_row(crystals[2])
    rows = [good, {**good, "spg": 231}, {**good, "wp0": 40}, {**good, "a": float("nan")},
            {**good, "valid_env": False}]
    df = S.conform(pd.DataFrame(rows))
    df["valid_env"] = [True, True, True, True, False]
    fp = F.fingerprint_frame(df)
    assert len(fp) == 5 and fp[S.FINGERPRINT].notna().tolist() == [True, False, False, False, False]
    assert fp[S.FP_ERROR].iloc[1:4].str.contains("DecodeError").all()
    assert fp[S.FP_ERROR].iloc[4] == "skipped: valid_env is not True"
    assert fp[S.FP_VBIN].iloc[1] == -1
