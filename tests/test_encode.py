"""Encoders: the training table round-trips through the features, in both modes.

``training_table`` (imported by the other model tests) stands in for the augmented
table: ingested SACADA structures, each with a few orbit-representative rows.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from legodask import cli
from legodask import schema as S
from legodask.crystal.convert import atoms_to_row, pyxtal_to_row, row_to_pyxtal
from legodask.crystal.frame import decode_frame, to_generators
from legodask.models import encoding as E
from legodask.models.grid import Grid
from legodask.store import Run


@functools.lru_cache(maxsize=None)
def training_table(db_path: Path, n_structures: int = 12, max_atoms: int = 24,
                   reps: int = 3) -> pd.DataFrame:
    """Small structures of the db as rows, each with up to ``reps`` orbit representatives."""
    from ase.db import connect

    rows, n = [], 0
    for r in connect(str(db_path)).select():
        if r.natoms > max_atoms:
            continue
        row = atoms_to_row(r.toatoms(), id=f"sacada-{r.id}", source="sacada")
        if not row["valid_xtal"]:
            continue
        xtal = row_to_pyxtal(row)
        mult = min(s.wp.multiplicity for s in xtal.atom_sites)
        for j in range(min(reps, mult)):
            rows.append(pyxtal_to_row(xtal, ids=[j] * len(xtal.atom_sites),
                                            id=f"sacada-{r.id}-{j}", source="sacada"))
        n += 1
        if n >= n_structures:
            break
    return S.conform(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def table(sacada_db: Path) -> pd.DataFrame:
    return training_table(sacada_db)


@pytest.fixture(scope="module")
def cont(table: pd.DataFrame) -> E.Encoder:
    return E.fit(table, "cont")


def _assert_same(a: pd.DataFrame, b: pd.DataFrame, atol: float) -> None:
    for c in ["spg", *S.WP]:
        np.testing.assert_array_equal(a[c].to_numpy(), b[c].to_numpy(), err_msg=c)
    for c in S.EL:
        assert a[c].tolist() == b[c].tolist(), c
    for c in E.CONTINUOUS:
        np.testing.assert_allclose(a[c].to_numpy(float), b[c].to_numpy(float), atol=atol,
                                   rtol=0, equal_nan=True, err_msg=c)


def test_cont_round_trip_within_1e6(table: pd.DataFrame, cont: E.Encoder) -> None:
    enc = cont
    x = enc.transform(table, dtype=np.float64)
    assert x.shape == (len(table), enc.width)
    scalars = x[:, [s.offset for s in enc.spans if s.kind == "scalar"]]
    assert np.all(np.abs(scalars) <= 1)
    onehots = [s for s in enc.spans if s.kind == "onehot"]
    assert all(np.all(x[:, s.offset:s.offset + s.dim].sum(1) == 1) for s in onehots)
    back = enc.inverse_transform(x)
    _assert_same(to_generators(table), back, atol=1e-6)   # special sites on generators
    # unused sites' coordinates have their own (NaN) mode, and come back as NaN
    assert back["x7"].isna().all() and back["wp7"].eq(-1).all()
    assert back["el0"].eq("C").all()


def test_dis_round_trip_exact_on_grid(table: pd.DataFrame) -> None:
    grid = Grid()
    on_grid = S.conform(grid.from_bins(grid.to_bins(table)))
    # as given: the generator's atom of an orbit on the grid need not be on it
    enc = E.fit(on_grid, "dis", grid=grid, sites="as-given")
    back = enc.inverse_transform(enc.transform(on_grid))
    _assert_same(on_grid, back, atol=0)
    assert all(s.kind == "onehot" for s in enc.spans)


def test_encoder_saves_and_loads(table: pd.DataFrame, cont: E.Encoder, tmp_path: Path) -> None:
    enc = cont
    enc.save(tmp_path / "encoder.json")
    again = E.Encoder.load(tmp_path / "encoder.json")
    np.testing.assert_array_equal(enc.transform(table), again.transform(table))


def test_multi_element_columns_are_one_hot(table: pd.DataFrame) -> None:
    mixed = table.copy()
    mixed.loc[mixed.index[::2], "el0"] = "Si"
    enc = E.fit(mixed, "cont")
    assert enc.element is None and "el0" in [s.column for s in enc.spans]
    back = enc.inverse_transform(enc.transform(mixed))
    assert back["el0"].tolist() == mixed["el0"].tolist()
    assert back["el7"].isna().all()


def test_inverse_transform_of_a_million_rows_is_fast(table: pd.DataFrame,
                                                     cont: E.Encoder) -> None:
    import time

    enc = cont
    x = np.tile(enc.transform(table), (200_000 // len(table) + 1, 1))[:200_000]
    t = time.perf_counter()
    back = enc.inverse_transform(x)
    # a million rows would take five times this: seconds, not minutes
    assert time.perf_counter() - t < 6
    assert len(back) == 200_000


def test_encode_stage_writes_chunked_zarr(table: pd.DataFrame, tmp_path: Path) -> None:
    run = Run(tmp_path / "run")
    bad = table.iloc[:2].assign(valid_xtal=False, id=["bad-0", "bad-1"])
    rows = pd.concat([table, bad], ignore_index=True)
    run.write_frame_table("augmented", rows, meta=S.empty_frame(), rows_per_part=7)
    enc = E.write_features(run, "cont", chunk_rows=8)
    arr, enc2 = E.open_features(run)
    assert arr.shape == (len(table), enc.width)
    assert arr.chunks == (8, enc.width)
    assert enc2.to_dict() == enc.to_dict()
    back = enc2.inverse_transform(arr[:])
    _assert_same(to_generators(table).reset_index(drop=True), back, atol=1e-5)
    # features of the same table and options are kept as they are, and so is a
    # finished table written again
    stamps = {f: f.stat().st_mtime_ns for f in run.path.rglob("*") if f.is_file()}
    assert E.write_features(run, "cont", chunk_rows=8).to_dict() == enc.to_dict()
    run.write_frame_table("augmented", rows, meta=S.empty_frame(), rows_per_part=7)
    assert {f: f.stat().st_mtime_ns for f in run.path.rglob("*") if f.is_file()} == stamps
    # the command line re-encodes in the other mode
    assert cli.main(["encode", "--run", str(run.path), "--mode", "dis"]) == 0
    arr, enc3 = E.open_features(run)
    assert enc3.mode == "dis" and arr.shape == (len(table), enc3.width)
    assert set(np.unique(arr[:])) == {0.0, 1.0}
    assert enc3.sites == "generator"
    assert cli.main(["encode", "--run", str(run.path), "--sites", "as-given"]) == 0
    assert E.open_features(run)[1].sites == "as-given"


def test_generator_sites_round_trip_and_always_decode_on_position(table: pd.DataFrame) -> None:
    """``sites="generator"``: the rows come back in the generator's form (the same
    crystals), and features whose fixed coordinates are noise still decode with every
    site on the position it names."""
    enc = E.fit(table, "cont")
    assert enc.sites == "generator" and E.Encoder.from_dict(enc.to_dict()).sites == "generator"
    x = enc.transform(table, dtype=np.float64)
    _assert_same(to_generators(table), enc.inverse_transform(x), atol=1e-6)
    # the orbit swaps of one crystal encode alike: one way of writing each site
    first = table["id"].str.rsplit("-", n=1).str[0]
    same = first == first.iloc[0]
    assert same.sum() > 1 and np.allclose(x[same.to_numpy()], x[same.to_numpy()][0], atol=1e-6)
    # noise on every scalar (the coordinates a position fixes included)
    rng = np.random.default_rng(0)
    noisy = x.copy()
    scalars = [s.offset for s in enc.spans if s.kind == "scalar"]
    noisy[:, scalars] = np.clip(noisy[:, scalars] + rng.normal(0, 0.3, (len(x), len(scalars))), -1, 1)
    as_given = E.Encoder(enc.mode, enc.columns, enc.element, enc.grid, "as-given")
    off = decode_frame(as_given.inverse_transform(noisy))["error"].fillna("")
    snapped = decode_frame(enc.inverse_transform(noisy))["error"].fillna("")
    assert off.str.contains("from Wyckoff position").any()
    assert not snapped.str.contains("from Wyckoff position").any()


def test_encoders_saved_before_the_sites_option_load_as_given(cont: E.Encoder) -> None:
    d = cont.to_dict()
    d.pop("sites")
    assert E.Encoder.from_dict(d).sites == "as-given"


def test_mixture_holds_tails_and_the_whole_tables_extent() -> None:
    """Values beyond 4 std of every fitted mode (a tail, the table's extremes outside
    the fit sample) get modes of their own instead of being clipped."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(5, 0.5, 2000), rng.normal(10, 0.3, 2000), [40.0, 42.5]])
    m = E.fit_mixture("c", x, has_nan=False, extent=(1.5, 48.0))
    probe = np.array([1.5, 5.0, 10.2, 40.0, 42.5, 48.0])
    np.testing.assert_allclose(m.decode(*m.encode(probe)), probe, rtol=0, atol=1e-9)
    assert sum(m.weights) == pytest.approx(1.0)
