"""Reference environments and the environment check (CN, forbidden pairs, windows)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import write

from legodask.crystal.convert import atoms_to_row
from legodask.crystal.environment import check_atoms, coordination, get_environment


def test_graphite_reference_is_sp2():
    env = get_environment("graphite")
    assert env.cn == {"C": 3}
    assert env.cutoff("C", "C") == pytest.approx(1.872)
    assert len(env.reference) == 4
    assert env.reference.cell.cellpar()[[0, 2]] == pytest.approx([2.46, 6.70])
    assert (coordination(env.reference, env) == 3).all()
    assert check_atoms(env.reference, env) == (True, None)


def test_diamond_fails_on_coordination():
    ok, reason = check_atoms(bulk("C", "diamond", a=3.567), get_environment("graphite"))
    assert not ok and "CN 4, expected 3" in reason


def test_three_neighbours_at_60_degrees_are_not_sp2():
    # a C4 tetrahedron: every atom has 3 neighbours at 1.42 Å, 60° apart
    d = 1.42
    pos = d / np.sqrt(8) * np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    tetra = Atoms("C4", positions=pos, cell=[20, 20, 20], pbc=True)
    env = get_environment("graphite")
    assert (coordination(tetra, env) == 3).all()
    ok, reason = check_atoms(tetra, env)
    assert not ok and "not planar" in reason
    # the same bonds in a plane (a graphene sheet) pass
    sheet = Atoms("C2", scaled_positions=[[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0]],
                  cell=[[2.46, 0, 0], [-1.23, 2.46 * np.sqrt(3) / 2, 0], [0, 0, 10]], pbc=True)
    assert check_atoms(sheet, env) == (True, None)


def test_bond_length_window():
    env = get_environment("graphite")
    stretched = env.reference.copy()
    stretched.set_cell(stretched.cell * [1.3, 1.3, 1.0], scale_atoms=True)  # 1.85 Å bonds
    ok, reason = check_atoms(stretched, env)
    assert not ok and "outside 1.25-1.75 Å" in reason


def test_cristobalite_environment_and_forbidden_pairs():
    from pyxtal import pyxtal

    env = get_environment("cristobalite")
    assert env.cn == {"Si": 4, "O": 2} and env.is_forbidden("O", "O")
    assert check_atoms(env.reference, env) == (True, None)
    quartz = pyxtal()
    quartz.from_prototype("a-quartz")
    assert check_atoms(quartz.to_ase(), env) == (True, None)
    # two O atoms 1.3 Å apart (each bonded to the other): a forbidden O-O bond
    oo = Atoms("SiO2", positions=[[0, 0, 0], [1.6, 0, 0], [1.6, 1.3, 0]],
               cell=[30, 30, 30], pbc=True)
    ok, reason = check_atoms(oo, env)
    assert not ok and "forbidden O-O" in reason
    ok, reason = check_atoms(bulk("C", "diamond", a=3.567), env)
    assert not ok and "not in environment" in reason


def test_environment_from_file_and_row(tmp_path):
    env = get_environment("graphite")
    path = tmp_path / "graphite.cif"
    write(path, env.reference)
    from_file = get_environment(path)
    assert from_file.cn == {"C": 3} and from_file.name == "graphite"
    row = atoms_to_row(bulk("C", "diamond", a=3.567))
    assert get_environment(row).cn == {"C": 4}
    with pytest.raises(ValueError, match="unknown environment"):
        get_environment("no-such-prototype")


def test_training_structures_are_valid_sp2(sacada_db):
    from ase.db import connect

    env = get_environment("graphite")
    with connect(sacada_db) as db:
        bad = [(r.id, check_atoms(r.toatoms(), env)[1]) for r in db.select()
               if not check_atoms(r.toatoms(), env)[0]]
    assert bad == []
