"""Beyond the LocalCluster: separate scheduler and worker processes on loopback,
a GPU resource that receives the GPU tasks, and the SLURM job script."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dask
import pandas as pd
import pytest

from legodask import cluster
from legodask.cli import main

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def separate_cluster(tmp_path_factory):
    """``dask scheduler`` + two ``dask worker`` processes, one with a GPU resource."""
    d = tmp_path_factory.mktemp("cluster")
    sched_file = d / "scheduler.json"
    procs = [subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", ":0", "--scheduler-file", sched_file],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.time() + 60
    while not sched_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    common = ["--scheduler-file", sched_file, "--nthreads", "1", "--host", "127.0.0.1",
              "--dashboard-address", ":0"]
    procs.append(subprocess.Popen([BIN / "dask", "worker", *common, "--name", "cpu"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    procs.append(subprocess.Popen([BIN / "dask", "worker", *common, "--name", "gpu",
                                   "--resources", "GPU=1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    address = json.loads(sched_file.read_text())["address"]
    from distributed import Client

    with Client(address) as c:
        c.wait_for_workers(2, timeout=60)
    yield address
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)


def test_decode_on_a_separately_started_cluster(separate_cluster, sacada_db, tmp_path):
    run = tmp_path / "run"
    assert main(["ingest", str(sacada_db), "--run", str(run), "--scheduler", separate_cluster]) == 0
    assert main(["decode", "--run", str(run), "--input", "ingested",
                 "--scheduler", separate_cluster]) == 0
    out = pd.read_parquet(run / "decoded.parquet")
    assert len(out) == 150 and out["id"].is_unique


def test_gpu_tasks_go_to_the_gpu_worker(separate_cluster):
    from distributed import Client, get_worker

    with Client(separate_cluster):
        assert cluster.has_gpu_worker()
        with dask.annotate(resources=cluster.GPU_RESOURCE):
            tasks = [dask.delayed(lambda i: get_worker().name)(i, dask_key_name=f"g-{i}")
                     for i in range(6)]
        assert set(cluster.compute(tasks)) == {"gpu"}


def test_slurm_job_script_asks_for_the_gpu():
    c = cluster.slurm_cluster(jobs=0, gpus=1, cores=8, memory="32GB", processes=2,
                              queue="gpu", walltime="02:00:00", account="matsci",
                              scheduler_options={"dashboard_address": None})
    try:
        script = c.job_script()
    finally:
        c.close()
    for needle in ("#SBATCH -p gpu", "#SBATCH -A matsci", "--gres=gpu:1", "--resources GPU=1",
                   "#SBATCH -t 02:00:00", "--nworkers 2"):
        assert needle in script


def test_local_workers_drop_only_the_shutdown_heartbeat_error():
    """A LocalCluster's workers keep quiet about the heartbeat their closing
    scheduler no longer answers, and about nothing else."""
    from legodask.cluster import HEARTBEAT_LOST, connect

    def probe(message: str = HEARTBEAT_LOST) -> tuple[bool, bool]:
        import logging

        lg = logging.getLogger("distributed.worker")
        rec = lambda msg: lg.makeRecord(lg.name, logging.ERROR, "w.py", 1, msg, (), None)  # noqa: E731
        return bool(lg.filter(rec(message + "."))), bool(lg.filter(rec("Compute Failed")))

    with connect(n_workers=1, quiet=True) as client:
        assert list(client.run(probe).values()) == [(False, True)]
