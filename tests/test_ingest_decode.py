"""Ingest and decode as stages: counts, garbage, resumability, a killed worker."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
from ase.build import bulk
from ase.io import write

from legodask import schema as S
from legodask.cli import main
from legodask.crystal.cell import metric_tensor, symmetrize_cell
from legodask.crystal.decode import OVERLAP
from legodask.crystal.frame import decode_frame, decode_frame_rowwise
from legodask.crystal.wyckoff import group_info, project, project_many, wyckoff_ops
from legodask.sources import sacada
from legodask.stages import decode
from legodask.stages import ingest as ingest_stage
from legodask.store import Run

EXCLUDED = {1, 32, 47, 48, 49, 50, 51, 52, 130, 144}


@pytest.fixture(scope="module")
def ingested(sacada_db, tmp_path_factory) -> Run:
    run = Run(tmp_path_factory.mktemp("run"))
    with dask.config.set(scheduler="synchronous"):
        ingest_stage.ingest(run, sacada_db)
    return run


def test_ingest_sacada_gives_150_rows_140_for_training(ingested):
    df = pd.read_parquet(ingested.table_path("ingested"))
    assert len(df) == 150 and df["id"].is_unique
    assert df["train"].sum() == 140
    dropped = {int(i.split("-")[-1]) for i in df.loc[~df["train"], "id"]}
    assert dropped == EXCLUDED
    # the source's own data are columns (clashing names are prefixed)
    assert {"vasp_energy", "ff_energy", "mace_energy", "src_dof"} <= set(df.columns)
    assert (df["spg"] == df["space_group_number"]).all()


def test_sacada_checksum(sacada_db, monkeypatch, tmp_path):
    monkeypatch.setenv(sacada.SACADA_ENV, str(sacada_db))
    assert sacada.sacada_db() == sacada_db
    bad = tmp_path / "sp2_sacada.db"
    bad.write_bytes(b"not the db")
    with pytest.raises(ValueError, match="sha256"):
        sacada.sacada_db(bad)


def test_malformed_cif_is_reported_and_the_rest_ingested(tmp_path):
    folder = tmp_path / "cifs"
    folder.mkdir()
    write(folder / "diamond.cif", bulk("C", "diamond", a=3.567))
    write(folder / "graphite.cif", bulk("C", "hcp", a=2.46, c=6.7))
    (folder / "broken.cif").write_text("data_broken\n_cell_length_a 3\nloop_\n_atom_site\n???\n")
    run = Run(tmp_path / "run")
    with dask.config.set(scheduler="synchronous"):
        ingest_stage.ingest(run, folder)
    df = pd.read_parquet(run.table_path("ingested")).set_index("id")
    assert df.loc["diamond", "valid_xtal"] and df.loc["diamond", "spg"] == 227
    assert not df.loc["broken", "valid_xtal"] and "broken.cif" in df.loc["broken", "error"]


def test_extxyz_and_reference_csv(tmp_path):
    frames = [bulk("C", "diamond", a=3.567), bulk("Si", "diamond", a=5.43)]
    frames[0].info["energy"] = -7.9
    write(tmp_path / "two.extxyz", frames, format="extxyz")
    run = Run(tmp_path / "run")
    with dask.config.set(scheduler="synchronous"):
        ingest_stage.ingest(run, tmp_path / "two.extxyz")
    df = pd.read_parquet(run.table_path("ingested"))
    assert sorted(df["el0"]) == ["C", "Si"] and (df["spg"] == 227).all()
    csv = tmp_path / "ref.csv"
    pd.DataFrame([[227, 3.567, 3.567, 3.567, np.pi / 2, np.pi / 2, np.pi / 2,
                   8, 0.125, 0.125, 0.125] + [-1] * 28]).to_csv(csv, index=False)
    with dask.config.set(scheduler="synchronous"):
        ingest_stage.ingest(run, csv, table="ref")
    ref = pd.read_parquet(run.table_path("ref"))
    assert ref["valid_xtal"].all() and ref["natoms"][0] == 8


def garbage(n: int, seed: int = 0) -> pd.DataFrame:
    """Rows of nonsense: bad groups, NaN/inf, impossible Wyckoff indices, overlaps."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"id": [f"g{i}" for i in range(n)],
                       "spg": rng.integers(-3, 240, n).astype(float)})
    df.loc[rng.random(n) < 0.05, "spg"] = np.nan
    for c in S.LENGTHS:
        df[c] = rng.uniform(-2, 40, n)
    for c in S.ANGLES:
        df[c] = rng.uniform(0, 180, n)
    for k in range(S.MAX_SITES):
        df[f"wp{k}"] = rng.integers(-1, 12, n)
        df[f"el{k}"] = rng.choice(np.array(["C", "C", "C", "Xx", None], dtype=object), n)
        for c in S.XYZ[k]:
            df[c] = rng.uniform(-0.5, 1.5, n)
    df.loc[rng.random(n) < 0.05, "x0"] = np.inf
    df.loc[rng.random(n) < 0.05, "a"] = np.nan
    return df


def noisy(df: pd.DataFrame, n: int, seed: int = 0, xyz_sd: float = 0.003) -> pd.DataFrame:
    """Generated-like rows: rows of ``df`` with noise on every cell value (1 %) and
    coordinate (``xyz_sd``, fractional)."""
    rng = np.random.default_rng(seed)
    out = df.sample(n, replace=True, random_state=seed).reset_index(drop=True)
    for c in S.CELL:
        out[c] = out[c] * (1 + rng.normal(0, 0.01, n))
    for c in S.XYZ_FLAT:
        out[c] = out[c] + rng.normal(0, xyz_sd, n)
    return out


def _decoded_alike(df: pd.DataFrame, **kw) -> pd.DataFrame:
    """The vectorised decoder's frame, asserted equal to the row-wise one's in every
    structure column; other columns pass through as they came (the row-wise path
    re-infers their types from Python objects)."""
    fast = decode_frame(df, **kw)
    ref = decode_frame_rowwise(df, **kw)
    pd.testing.assert_frame_equal(fast[S.COLUMNS], ref[S.COLUMNS], check_exact=True)
    extra = [c for c in df.columns if c not in S.COLUMNS]
    assert list(fast.columns) == list(ref.columns)
    pd.testing.assert_frame_equal(fast[extra], df[extra])
    return fast


def test_vectorised_decode_equals_row_wise(ingested):
    """Every value and every reason, to the last bit: training rows (with the
    source's own columns), noisy ones, far-off ones, garbage and an empty frame."""
    table = pd.read_parquet(ingested.table_path("ingested"))
    assert _decoded_alike(table)["valid_xtal"].sum() >= 140
    train = table[table["train"]]
    assert _decoded_alike(noisy(train, 1000))["valid_xtal"].all()
    far = _decoded_alike(noisy(train, 1000, seed=1, xyz_sd=0.03))
    reasons = far["error"].dropna()
    assert reasons.str.contains("from Wyckoff position").any()
    assert reasons.str.contains(OVERLAP).any()
    assert 0.1 < far["valid_xtal"].mean() < 0.9
    few = _decoded_alike(train, max_atoms=40)
    assert few["error"].str.contains("more than 40 atoms").any()
    unnamed = train.assign(**{c: None for c in S.EL})
    assert _decoded_alike(unnamed, default_element="C")["valid_xtal"].all()
    assert not _decoded_alike(unnamed)["valid_xtal"].any()
    _decoded_alike(garbage(3000, seed=3))
    thin = _decoded_alike(small_cells(2000))
    assert 0.1 < thin["valid_xtal"].mean() < 0.9
    assert len(_decoded_alike(table.iloc[:0])) == 0


def small_cells(n: int, seed: int = 0) -> pd.DataFrame:
    """P1 / P-1 / P2/m rows in cells of 1-4 Å with skewed angles: plane spacings
    below twice the 0.6 Å cutoff, where an atom may be close to its own image."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"spg": rng.choice([1, 2, 10], n)})
    for c in S.LENGTHS:
        df[c] = rng.uniform(1, 4, n)
    for c in S.ANGLES:
        df[c] = rng.uniform(40, 140, n)
    n_sites = rng.integers(1, 4, n)
    for k in range(3):
        df[f"wp{k}"] = np.where(k < n_sites, 0, -1)
        df[f"el{k}"] = np.where(k < n_sites, "C", None)
        for c in S.XYZ[k]:
            df[c] = np.where(k < n_sites, rng.random(n), np.nan)
    return df


def test_projection_does_not_depend_on_the_batch():
    """A point projected alone or among others gives the same bits."""
    rng = np.random.default_rng(0)
    for spg, index in [(227, 1), (194, 3), (166, 2), (12, 1)]:
        ops = wyckoff_ops(spg, index)
        xyz = rng.uniform(-0.2, 1.2, (50, 3))
        G = metric_tensor(rng.uniform([3, 3, 3, 80, 80, 80], [9, 9, 9, 100, 100, 100],
                                            (50, 6)))
        point, free, moved = project_many(ops, xyz, G)
        for i in (0, 17, 49):
            p1, f1, m1 = project(ops, xyz[i], G[i])
            assert np.array_equal(p1, point[i]) and np.array_equal(f1, free[i])
            assert m1 == moved[i]


def test_projection_is_the_nearest_point_of_the_position():
    """The projected point is a point of the orbit's subspaces, ``moved`` Å from the
    input under the cell's metric, and no random point of those subspaces is nearer."""
    rng = np.random.default_rng(1)
    shifts = np.array(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij")).reshape(3, -1).T
    for spg, index in [(227, 3), (194, 2), (166, 4), (12, 2), (139, 6)]:
        ops = wyckoff_ops(spg, index)
        lattice = group_info(spg)[0]
        cell = symmetrize_cell(np.array([5.0, 5.5, 7.0, 90.0, 100.0, 90.0]), lattice)
        G = metric_tensor(cell)
        xyz = rng.uniform(0, 1, (20, 3))
        point, free, moved = project_many(ops, xyz, np.broadcast_to(G, (20, 3, 3)))

        def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            """Shortest periodic distance (Å) from each a to each b: (len(a), len(b))."""
            d = b[None, :, None, :] - a[:, None, None, :] + shifts[None, None]
            return np.sqrt(np.einsum("...i,ij,...j->...", d, G, d)).min(-1)

        members = np.einsum("jab,mb->mja", ops.A, free) + ops.t          # (20, J, 3)
        assert all(dist(point[i:i + 1], members[i]).min() < 1e-9 for i in range(20))
        assert np.allclose(np.diagonal(dist(xyz, point)), moved, atol=1e-9)
        f = rng.uniform(-1, 1, (300, 3))
        cloud = (np.einsum("jab,nb->nja", ops.A, f) + ops.t).reshape(-1, 3)
        assert np.all(moved <= dist(xyz, cloud).min(1) + 1e-9)


def test_decode_10000_garbage_rows_loses_none(tmp_path):
    src = tmp_path / "garbage.parquet"
    garbage(10_000).to_parquet(src)
    run = Run(tmp_path / "run")
    with dask.config.set(scheduler="synchronous"):
        decode.decode(run, str(src))
    out = pd.read_parquet(run.table_path("decoded"))
    assert len(out) == 10_000 and set(out["id"]) == {f"g{i}" for i in range(10_000)}
    assert (out["valid_xtal"] | out["error"].notna()).all()
    assert out.loc[~out["valid_xtal"], "error"].str.len().min() > 5


def _noisy_training_rows(ingested: Run, copies: int) -> pd.DataFrame:
    df = pd.read_parquet(ingested.table_path("ingested"))
    df = df[df["train"]]
    rng = np.random.default_rng(1)
    out = pd.concat([df] * copies, ignore_index=True)
    out["id"] = [f"n{i}" for i in range(len(out))]
    for c in S.XYZ_FLAT:
        out[c] = out[c] + rng.normal(0, 0.005, len(out))
    return out


def test_decode_resumes_and_skips_finished_partitions(ingested, tmp_path):
    import dask.dataframe as dd

    src = tmp_path / "noisy"
    dd.from_pandas(_noisy_training_rows(ingested, 1), npartitions=4).to_parquet(src)
    run = Run(tmp_path / "run")
    with dask.config.set(scheduler="synchronous"):
        first = decode.decode(run, str(src))
        os.remove(run.part_path("decoded", 2))       # as if the run had crashed
        second = decode.decode(run, str(src))
    assert (first.written, second.written, second.skipped) == (4, 1, 3)
    out = pd.read_parquet(run.table_path("decoded"))
    assert out["id"].is_unique and len(out) == 140 and out["valid_xtal"].all()


def test_truncated_partition_is_a_clear_error(ingested, tmp_path):
    run = Run(tmp_path / "run")
    part = run.table_path("t")
    part.mkdir(parents=True)
    data = ingested.part_path("ingested", 0).read_bytes()
    (part / "part-00000.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="part-00000.parquet is unreadable"):
        run.read("t")


def test_killing_a_worker_during_decode_loses_and_duplicates_nothing(ingested, tmp_path):
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    rows = _noisy_training_rows(ingested, 6)
    src = tmp_path / "noisy"
    dd.from_pandas(rows, npartitions=24).to_parquet(src)
    run = Run(tmp_path / "run")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        killed = threading.Event()

        def kill_when_started() -> None:
            deadline = time.time() + 120
            while time.time() < deadline and not run.done_parts("decoded"):
                time.sleep(0.05)
            os.kill(pids[0], signal.SIGKILL)
            killed.set()

        threading.Thread(target=kill_when_started, daemon=True).start()
        result = decode.decode(run, str(src))
        assert killed.is_set()
    out = pd.read_parquet(run.table_path("decoded"))
    assert len(out) == len(rows) and out["id"].is_unique
    assert set(out["id"]) == set(rows["id"])
    assert result.written == 24


def test_cli_ingest_and_status(sacada_db, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["ingest", str(sacada_db), "--run", str(run), "--workers", "1"]) == 0
    assert "kept" in capsys.readouterr().out
    assert main(["status", "--run", str(run)]) == 0
    assert "ingested" in capsys.readouterr().out
    assert (Path(run) / "logs" / "legodask.log").exists()
