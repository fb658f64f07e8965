"""``legodask run PIPELINE.toml``: every stage of a run, in order, on one cluster."""

from __future__ import annotations

import argparse

from ..cluster import add_cluster_arguments
from ..pipeline import load, run_pipeline


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="pipeline file (TOML), e.g. pipelines/quickstart.toml")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.OPTION=VALUE",
                   help="override a pipeline option (repeatable)")
    p.add_argument("--force", default="", help="comma-separated stages to rerun even if done")
    add_cluster_arguments(p)


def command(args: argparse.Namespace) -> int:
    """Run a pipeline on the cluster of its ``[cluster]`` table, unless the command
    line names one."""
    from ..cluster import connect

    spec = load(args.pipeline, args.set)
    conf = spec.get("cluster", {})
    with connect(args.scheduler or conf.get("scheduler"),
                 args.workers or conf.get("workers"),
                 conf.get("threads", args.threads),
                 conf.get("memory-limit", args.memory_limit),
                 args.gpus or conf.get("gpus", 0), slurm=conf.get("slurm"),
                 dashboard_address=conf.get("dashboard-address", args.dashboard_address)):
        seconds = run_pipeline(spec, args.run, tuple(filter(None, args.force.split(","))))
    print("stage seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    return 0
