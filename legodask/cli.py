"""The ``legodask`` command line.

Each subcommand lives in the module of its stage, which provides
``add_arguments(parser)`` and ``command(args) -> int``.  This file only lists them,
so that a stage is added in one place and imported only when it is used.
Commands that compute run inside ``cluster.connect`` (a LocalCluster unless
``--scheduler`` is given).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# subcommand -> (module, help, needs a cluster)
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "ingest": ("legodask.sources", "read known structures into RUN/ingested.parquet", True),
    "decode": ("legodask.decode", "decode raw rows: valid_xtal, natoms, n_sites, dof", True),
    "augment": ("legodask.augment", "subgroup and orbit-representative augmentation", True),
    "encode": ("legodask.encode", "fit the encoder and write RUN/features.zarr", False),
    "train": ("legodask.train", "train a GAN or VAE on the augmented table", True),
    "sample": ("legodask.sample", "sample rows from a trained model and decode them", True),
    "prerelax": ("legodask.prerelax", "pre-relax towards the reference environment", True),
    "rank": ("legodask.rank", "relax and rank energies with force fields", True),
    "dedup": ("legodask.dedup", "fingerprint and deduplicate incrementally", True),
    "metrics": ("legodask.metrics", "the paper's counts for a run", False),
    "run": ("legodask.pipeline", "run a TOML pipeline end to end", False),
    "report": ("legodask.report", "write RUN/report.html", False),
    "query": ("legodask.query", "run SQL (DuckDB) over a run's tables", False),
    "export": ("legodask.export", "write structures as CIF / extxyz / ASE db", False),
    "stats": ("legodask.stats", "summaries of a table against the paper's", False),
    "status": ("legodask.status", "which stages and partitions of a run are done", False),
}


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="legodask", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_, clustered) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module, _clustered=clustered)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            p.set_defaults(_missing=True)
            continue
        if clustered:
            add_cluster_arguments(p)
    return parser


def setup_logging(verbose: bool, run_dir: str | None = None) -> None:
    """Log legodask's messages to stderr and, for a run, to ``RUN/logs/legodask.log``."""
    logger = logging.getLogger("legodask")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.handlers.clear()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir:
        from .store import Run

        handlers.append(logging.FileHandler(Run(run_dir).log_file))
    for h in handlers:
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(h)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", False):
        print(f"legodask {args.command}: not available in this version", file=sys.stderr)
        return 2
    setup_logging(args.verbose, getattr(args, "run", None))
    module = importlib.import_module(args._module)
    try:
        if not args._clustered:
            return int(module.command(args) or 0)
        from .cluster import connect

        with connect(args.scheduler, args.workers, args.threads, args.memory_limit, args.gpus):
            return int(module.command(args) or 0)
    except (OSError, ValueError, KeyError) as exc:
        if args.verbose:
            raise
        print(f"legodask {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
