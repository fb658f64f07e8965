"""Where stages run: a LocalCluster by default, or an existing scheduler.

``connect`` starts (or reaches) a ``distributed`` cluster and makes it the default
for dask; ``compute`` runs a list of tasks on it with a progress bar.  Workers may
advertise a ``GPU`` resource; stages that want one annotate their tasks with
``GPU_RESOURCE`` and run elsewhere only when no worker has it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import dask

log = logging.getLogger("legodask")

GPU_RESOURCE = {"GPU": 1}
# A LocalCluster listens on the loopback interface only: its scheduler, workers and
# dashboard are not reachable from other machines (a login node's other users).
LOCAL_HOST = "127.0.0.1"
LOCAL_DASHBOARD = f"{LOCAL_HOST}:0"


HEARTBEAT_LOST = "Failed to communicate with scheduler during heartbeat"


def quiet_close() -> Any:
    """A worker plugin that keeps a LocalCluster's workers from printing a traceback
    when their scheduler stops answering heartbeats: when a stage ends, the
    scheduler we close may go before a worker's last heartbeat (distributed's
    shutdown race), and nothing is wrong.  Only that message is dropped.  (Made
    here so that importing this module does not import ``distributed``.)"""
    from distributed.diagnostics.plugin import WorkerPlugin

    class QuietClose(WorkerPlugin):
        name = "legodask-quiet-close"

        def setup(self, worker: Any) -> None:
            logging.getLogger("distributed.worker").addFilter(_drop_heartbeat_lost)

    return QuietClose()


def _drop_heartbeat_lost(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(HEARTBEAT_LOST)


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def slurm_cluster(jobs: int = 1, gpus: int = 0, **options: Any) -> Any:
    """A dask-jobqueue ``SLURMCluster`` scaled to ``jobs`` batch jobs.

    ``options`` are SLURMCluster's (cores, memory, processes, walltime, queue,
    account, job_extra_directives, python, ...); what is not given comes from
    dask's ``jobqueue.slurm`` configuration (``~/.config/dask/jobqueue.yaml``).
    With ``gpus`` the workers advertise a ``GPU`` resource and ask SLURM for them.
    """
    from dask_jobqueue import SLURMCluster

    if gpus:
        options.setdefault("job_extra_directives", []).append(f"--gres=gpu:{gpus}")
        options.setdefault("worker_extra_args", []).extend(["--resources", f"GPU={gpus}"])
    cluster = SLURMCluster(**options)
    cluster.scale(jobs=jobs)
    return cluster


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--scheduler", help="address of a running dask scheduler "
                   "(tcp://host:8786), or 'slurm' for dask-jobqueue's SLURMCluster "
                   "configured in ~/.config/dask/jobqueue.yaml (default: a LocalCluster)")
    g.add_argument("--workers", type=int, default=None,
                   help="LocalCluster worker processes (SLURM: batch jobs)")
    g.add_argument("--threads", type=int, default=1, help="threads per worker")
    g.add_argument("--memory-limit", default="auto", help="memory per worker, e.g. 2GB")
    g.add_argument("--gpus", type=int, default=0,
                   help="give LocalCluster workers a GPU resource (for a local GPU)")
    g.add_argument("--dashboard-address", default=LOCAL_DASHBOARD,
                   help="where a LocalCluster serves its dashboard (default: this machine "
                   "only, a free port; e.g. 0.0.0.0:8787 to let other machines see it)")


@contextlib.contextmanager
def connect(scheduler: str | None = None, n_workers: int | None = None,
            threads_per_worker: int = 1, memory_limit: str = "auto",
            gpus: int = 0, quiet: bool = False,
            slurm: dict[str, Any] | None = None,
            dashboard_address: str = LOCAL_DASHBOARD) -> Iterator[Any]:
    """Yield a ``distributed.Client``: to the scheduler at address ``scheduler``;
    to a SLURM cluster of ``n_workers`` jobs when ``scheduler == "slurm"``; else to
    a new LocalCluster of ``n_workers`` processes (one per core up to 4 by default),
    listening on 127.0.0.1 with its dashboard at ``dashboard_address``."""
    from distributed import Client, LocalCluster

    # distributed's notes (each shuffle it runs, a worker it stops at the end) are
    # bookkeeping, not a user's business: only its errors reach the terminal
    logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler == "slurm":
        cluster = slurm_cluster(n_workers or 1, gpus, **(slurm or {}))
        client = Client(cluster)
    elif scheduler:
        client = Client(scheduler)
        cluster = None
    else:
        resources = {"GPU": 1} if gpus else None
        cluster = LocalCluster(n_workers=n_workers or _default_workers(),
                               threads_per_worker=threads_per_worker,
                               memory_limit=memory_limit, processes=True,
                               resources=resources, host=LOCAL_HOST,
                               silence_logs=logging.ERROR,
                               dashboard_address=dashboard_address)
        client = Client(cluster)
        client.register_plugin(quiet_close())
    if not quiet:
        print(f"dask cluster: {client.dashboard_link}", file=sys.stderr)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def has_gpu_worker() -> bool:
    """Whether the current cluster has a worker with a ``GPU`` resource."""
    client = _client()
    if client is None:
        return False
    info = client.scheduler_info(n_workers=-1)["workers"].values()
    return any(w.get("resources", {}).get("GPU", 0) > 0 for w in info)


def _client() -> Any:
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def compute(tasks: Sequence[Any], desc: str = "", progress: bool | None = None) -> list[Any]:
    """Compute ``tasks`` (delayed objects or small dask collections) on the current
    client (or dask's default scheduler) and return their results in order,
    showing a progress bar on a terminal."""
    if not tasks:
        return []
    show = sys.stderr.isatty() if progress is None else progress
    client = _client()
    if client is None:
        return list(dask.compute(*tasks))
    futures = client.compute(list(tasks))
    if show:
        from distributed import as_completed
        from tqdm import tqdm

        with tqdm(total=len(futures), desc=desc, unit="part") as bar:
            for _ in as_completed(futures):
                bar.update()
    return client.gather(futures)
