"""The augment stage: rows are the parent crystal in other settings, the paper's
diamond example, reproducibility across workers and partitions, recorded failures."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import spglib
from ase.neighborlist import neighbor_list
from pyxtal import pyxtal

from legodask import schema as S
from legodask.augment import frame as AF
from legodask.augment import params as AP
from legodask.augment import timeout as AT
from legodask.crystal.convert import pyxtal_to_row, row_to_atoms, symmetry_key
from legodask.crystal.frame import decode_frame
from legodask.sources import ingest as ingest_kernel
from legodask.sources import readers
from legodask.stages import augment as stage
from legodask.store import Run

# small SACADA structures: 8-atom I4_132 (8a), 8-atom P4_2/mmc (4i 4g), 18-atom (2 sites)
DB_IDS = [2, 19, 60]
SMALL = dict(max_per_structure=40, max_per_subgroup=8, max_per_parent=12, tries=4)


def small(**kw: object) -> AP.Params:
    return AP.Params(**{**SMALL, **kw})


@pytest.fixture(scope="module")
def train(sacada_db: Path) -> pd.DataFrame:
    items = [it for it in readers.list_items(sacada_db) if it.key in DB_IDS]
    return ingest_kernel.TrainingFilter().apply(ingest_kernel.read_items(items, 1e-3, "sacada"))


@pytest.fixture(scope="module")
def augmented(train: pd.DataFrame) -> pd.DataFrame:
    return AF.augment_frame(train, small(seed=7))


def diamond_row() -> dict:
    x = pyxtal()
    x.from_spg_wps_rep(227, ["8a"], [3.567], ["C"])
    return pyxtal_to_row(x, id="diamond", source="test")


def environments(atoms, cutoff: float = 1.9) -> np.ndarray:
    """Each atom's environment: its three nearest neighbour distances, (N, 3)."""
    i, d = neighbor_list("id", atoms, cutoff)
    return np.array([np.sort(d[i == a])[:3] for a in range(len(atoms))])


def same_environments(env: np.ndarray, env0: np.ndarray, tol: float = 0.01) -> bool:
    """Every atom's environment is one of the parent's and every parent atom's is
    found among the atoms (max difference ``tol`` Å)."""
    diff = np.abs(env[:, None, :] - env0[None, :, :]).max(axis=2)
    return bool((diff.min(axis=1) < tol).all() and (diff.min(axis=0) < tol).all())


def test_rows_are_the_parent_structure(train: pd.DataFrame, augmented: pd.DataFrame) -> None:
    decoded = decode_frame(augmented)
    assert decoded["valid_xtal"].all(), decoded["error"].dropna().tolist()[:3]
    assert set(augmented["parent_id"]) == set(train["id"])
    assert augmented["id"].is_unique
    parents = {r["id"]: row_to_atoms(r) for r in train.to_dict("records")}
    spg_of = {k: spglib.get_symmetry_dataset((a.cell[:], a.get_scaled_positions(), a.numbers),
                                             symprec=0.01).number for k, a in parents.items()}
    n_sub = 0
    for row in decoded.to_dict("records"):
        atoms, parent = row_to_atoms(row), parents[row["parent_id"]]
        # same density and the same per-atom environments (bond lengths), to 0.01
        rho, rho0 = len(atoms) / atoms.get_volume(), len(parent) / parent.get_volume()
        assert abs(rho / rho0 - 1) < 1e-3
        assert same_environments(environments(atoms), environments(parent))
        # spglib finds the parent's group: a supergroup of the representation's
        cell = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
        found = spglib.get_symmetry_dataset(cell, symprec=0.01).number
        assert found == spg_of[row["parent_id"]]
        parent_spg = int(train.set_index("id").loc[row["parent_id"], "spg"])
        path = row[S.SUBGROUP_PATH].split(">")
        assert int(path[0]) == parent_spg and int(path[-1]) == row["spg"]
        n_sub += len(path) > 1
    assert n_sub > 0


def test_swaps_and_caps(augmented: pd.DataFrame) -> None:
    for pid, rows in augmented.groupby("parent_id"):
        # at most one subgroup over the structure cap, none over its own caps
        assert len(rows) <= SMALL["max_per_structure"] + SMALL["max_per_subgroup"]
        sizes = rows.groupby(S.SUBGROUP_PATH).size()
        parent_path = rows[S.SUBGROUP_PATH].iloc[0]
        assert sizes[parent_path] <= SMALL["max_per_parent"]
        assert (sizes.drop(parent_path) <= SMALL["max_per_subgroup"]).all()
        # orbit swaps: rows of one subgroup path share the space group; no row repeats
        assert (rows.groupby(S.SUBGROUP_PATH)["spg"].nunique() == 1).all()
        assert len(rows.drop_duplicates(S.TABULAR)) == len(rows)


def test_diamond_subgroups_of_the_paper() -> None:
    out = AF.augment_frame(pd.DataFrame([diamond_row()]),
                          AP.Params(seed=3, check="none", tries=20, max_per_structure=10_000))
    keys = set(symmetry_key(out))
    # Fd-3m 8a -> F-43m 4a+4d, R-3m 6c, I4_1/amd 4a (paper Fig. 2a)
    assert {"227 8a", "216 4a 4d", "166 6c", "141 4a"} <= keys
    assert set(out.loc[symmetry_key(out) == "166 6c", S.SUBGROUP_PATH]) >= {"227>166"}
    assert (out["spg"] == 227).sum() == 8     # the 8 atoms of 8a, each once


def test_environment_check_rejects_diamond() -> None:
    out = AF.augment_frame(pd.DataFrame([diamond_row()]), small(check="env"))
    assert len(out) == 1 and not out["valid_xtal"].iloc[0]
    assert "CN 4, expected 3" in out["error"].iloc[0]


def _table_bytes(run: Run) -> list[str]:
    files = sorted(run.table_path(S.AUGMENTED).glob("part-*.parquet"))
    return [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]


def test_same_seed_same_bytes_any_workers_or_partitions(train: pd.DataFrame,
                                                        tmp_path: Path) -> None:
    p = small(seed=11, tries=2)
    digests = []
    for k, (rows_per_part, workers) in enumerate([(100, 1), (1, 3)]):
        run = Run(tmp_path / f"r{k}")
        run.write_frame_table("ingested", train, rows_per_part=rows_per_part)
        with dask.config.set(scheduler="threads", num_workers=workers):
            stage.augment(run, p)
        digests.append(_table_bytes(run))
    assert digests[0] == digests[1] and len(digests[0]) == len(train)
    other = AF.augment_frame(train.head(1), small(seed=12, tries=2))
    same = AF.augment_frame(train.head(1), p)
    assert not other[["x0", "y0", "z0"]].equals(same[["x0", "y0", "z0"]])


def test_failures_are_recorded_and_others_go_on(train: pd.DataFrame,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    bad, slow = train["id"].iloc[0], train["id"].iloc[1]
    key = [(int(r["spg"]), int(r["natoms"])) for _, r in train.iterrows()]
    original = pyxtal.subgroup_once

    def flaky(self, *args, **kwargs):
        me = (self.group.number, sum(self.numIons))
        if me == key[0]:
            raise RuntimeError("pyxtal broke")
        if me == key[1]:
            while True:       # a search that never ends
                time.sleep(0.01)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pyxtal, "subgroup_once", flaky)
    odd = train.iloc[[2]].assign(id="odd", spg=999)
    out = AF.augment_frame(pd.concat([train, odd]), small(timeout=3.0, tries=2))
    by = out.groupby("parent_id")
    # a raise inside a try is a failed try, recorded on the rows; the parent's own
    # representation remains
    broken = by.get_group(bad)
    assert broken["valid_xtal"].all() and (broken[S.SUBGROUP_PATH] == broken[S.SUBGROUP_PATH].iloc[0]).all()
    assert broken[S.AUGMENT_ERRORS].str.contains("4 subgroup tries raised.*pyxtal broke").all()
    hung = by.get_group(slow)
    assert len(hung) == 1 and "time-out" in hung["error"].iloc[0]
    odd_row = by.get_group("odd")
    assert not odd_row["valid_xtal"].iloc[0] and "space group" in odd_row["error"].iloc[0]
    third = by.get_group(train["id"].iloc[2])
    assert third["valid_xtal"].all() and third[S.SUBGROUP_PATH].str.contains(">").any()


def test_timeout_leaves_no_pending_exception() -> None:
    assert AT.call_with_timeout(lambda: 5, 0.05) == 5
    time.sleep(0.3)       # the watchdog must not fire after the call returned
    with pytest.raises(AT.AugmentTimeout):
        AT.call_with_timeout(lambda: [time.sleep(0.01) for _ in range(500)], 0.2)


def test_symmetry_key_and_presets() -> None:
    df = pd.DataFrame([diamond_row(), {**diamond_row(), "spg": 166, "wp0": 3, "wp1": -1}])
    assert symmetry_key(df).tolist() == ["227 8a", "166 18f"]
    assert set(AP.PRESETS) == {"v1", "v2", "v3", "2m"}
    sizes = [AP.preset(k).max_per_structure for k in ("v1", "v2", "v3", "2m")]
    assert sizes == sorted(sizes)
    assert AP.preset("v1", seed=5, eps=None).seed == 5
    assert AP.preset("v3", max_per_subgroup=4).max_per_parent == 12


def test_prerelax_check_filters_but_keeps_the_geometry(train: pd.DataFrame) -> None:
    one = train.head(1)
    relaxed = AF.augment_frame(one, small(check="prerelax", tries=1))
    plain = AF.augment_frame(one, small(check="env", tries=1))
    assert relaxed["valid_xtal"].all()
    parent = plain[S.SUBGROUP_PATH] == plain[S.SUBGROUP_PATH].iloc[0]
    cols = ["a", "c", *S.XYZ_FLAT[:3]]
    pd.testing.assert_frame_equal(relaxed.loc[parent, cols], plain.loc[parent, cols])


def test_command_line(train: pd.DataFrame, tmp_path: Path) -> None:
    from legodask.cli import main

    run, local = Run(tmp_path / "cli"), Run(tmp_path / "local")
    for r in (run, local):
        r.write_frame_table("ingested", train)
    assert main(["augment", "--run", str(run.path), "--preset", "v1", "--seed", "4",
                 "--max-per-structure", "20", "--tries", "1", "--workers", "2"]) == 0
    out = run.read(S.AUGMENTED).compute()
    assert set(out["parent_id"]) == set(train["id"]) and out["valid_xtal"].all()
    assert run.info(S.AUGMENTED)["params"]["seed"] == 4
    own = out[~out[S.SUBGROUP_PATH].str.contains(">")]
    assert (own.groupby("parent_id").size() <= 20).all()   # parent capped by the structure cap
    # two worker processes write the same bytes as one process
    with dask.config.set(scheduler="synchronous"):
        stage.augment(local, AP.preset("v1", seed=4, max_per_structure=20, tries=1))
    assert _table_bytes(run) == _table_bytes(local)


def test_rerun_resumes_and_refuses_other_parameters(train: pd.DataFrame, tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.write_frame_table("ingested", train.head(1))
    p = small(tries=1)
    first = stage.augment(run, p)
    again = stage.augment(run, p)
    assert first.written == 1 and again.written == 0 and again.skipped == 1
    with pytest.raises(ValueError, match="other parameters"):
        stage.augment(run, small(tries=1, seed=99))
