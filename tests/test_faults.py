"""A worker process killed in the middle of each heavy stage costs nothing: the
stage ends with every row exactly once (the decode stage has its own test)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import dask
import numpy as np
import pandas as pd
import pytest

from legodask import schema as S
from legodask.analysis import dedup
from legodask.energy.relax import RelaxSettings
from legodask.stages import ingest as ingest_stage
from legodask.stages.prerelax import prerelax
from legodask.stages.rank import rank
from legodask.store import Run


@pytest.fixture(scope="module")
def decoded(sacada_db, tmp_path_factory) -> Run:
    """Small training crystals with noise, 12 partitions of 2 rows, as ``decoded``."""
    run = Run(tmp_path_factory.mktemp("faults"))
    with dask.config.set(scheduler="synchronous"):
        ingest_stage.ingest(run, sacada_db)
    df = pd.read_parquet(run.table_path("ingested"))
    df = df[df["train"] & (df["natoms"] <= 8)].head(6)
    rng = np.random.default_rng(0)
    rows = pd.concat([df] * 4, ignore_index=True)
    rows["id"] = [f"r{i}" for i in range(len(rows))]
    for c in S.XYZ_FLAT:
        rows[c] = rows[c] + rng.normal(0, 0.002, len(rows))
    parts = [dask.delayed(rows.iloc[i:i + 2]) for i in range(0, len(rows), 2)]
    run.write("decoded", parts, rows.iloc[:0])
    return run


def kill_a_worker_during(run: Run, table: str, stage: Callable[[], object]) -> pd.DataFrame:
    """Run ``stage`` on a 2-worker LocalCluster, SIGKILL one worker as soon as the
    first partition of ``table`` is written; return the table."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        pid = next(iter(client.run(os.getpid).values()))
        killed = threading.Event()

        def kill() -> None:
            deadline = time.time() + 300
            while time.time() < deadline and not run.done_parts(table):
                time.sleep(0.02)
            os.kill(pid, signal.SIGKILL)
            killed.set()

        threading.Thread(target=kill, daemon=True).start()
        stage()
        assert killed.wait(10)
    assert run.is_complete(table)
    return pd.read_parquet(run.table_path(table))


def _same_rows(out: pd.DataFrame, run: Run) -> None:
    src = pd.read_parquet(run.table_path("decoded"))
    assert len(out) == len(src) and out["id"].is_unique
    assert set(out["id"]) == set(src["id"])


def test_prerelax_survives_a_killed_worker(decoded):
    out = kill_a_worker_during(decoded, "prerelaxed",
                               lambda: prerelax(decoded, "decoded", device="cpu"))
    _same_rows(out, decoded)
    assert out["loss"].notna().all()


def test_rank_survives_a_killed_worker(decoded):
    settings = RelaxSettings(steps=10, timeout=60)
    out = kill_a_worker_during(decoded, "ranked",
                               lambda: rank(decoded, ["tersoff"], input="decoded",
                                                 output="ranked", settings=settings))
    _same_rows(out, decoded)
    assert out["energy_tersoff"].notna().all()


def test_dedup_survives_a_killed_worker(decoded):
    out = kill_a_worker_during(decoded, "fingerprints",
                               lambda: dedup.dedup(decoded, "decoded", window=4))
    _same_rows(out, decoded)
    firsts = out.loc[out["is_new"].astype(bool), "id"]
    assert 1 <= len(firsts) <= 6          # 6 crystals, 4 noisy copies each
