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

from .cluster import LOCAL_DASHBOARD

# subcommand -> (module, help, needs a cluster)
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "ingest": ("legodask.sources", "read known structures into RUN/ingested.parquet", True),
    "decode": ("legodask.decode", "decode raw rows: valid_xtal, natoms, n_sites, dof", True),
    "augment": ("legodask.augment", "subgroup and orbit-representative augmentation", True),
    "encode": ("legodask.encode", "fit the encoder and write RUN/features.zarr", False),
    "train": ("legodask.train", "train a GAN or VAE on the augmented table", True),
    "sample": ("legodask.sample", "sample rows from a trained model and decode them", True),
    "prerelax": ("legodask.stages.prerelax", "pre-relax towards the reference environment", True),
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
# Commands that report on a run: they never create one (a mistyped path is an error).
REPORTS = {"query", "export", "status", "stats", "metrics", "report"}
# Of those, the ones that write nothing into it, not even its log, so that they work
# on a run directory that is not theirs to write.
READ_ONLY = {"query", "export", "status"}


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


def setup_logging(verbose: bool, run_dir: str | None = None, create: bool = True) -> None:
    """Log legodask's messages to stderr and, for a run, to ``RUN/logs/legodask.log``
    (making the run when ``create``); a run whose log cannot be written is an error
    (``PermissionError``) naming it."""
    logger = logging.getLogger("legodask")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.handlers.clear()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir:
        from .store import Run

        run = Run(run_dir, create=create)
        try:
            handlers.append(logging.FileHandler(run.log_file))
        except OSError as exc:
            raise PermissionError(f"cannot write to the run {run_dir} ({exc.strerror or exc}): "
                                  f"this command writes into it; use a run you may write to, "
                                  f"or copy it") from exc
    for h in handlers:
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(h)


def message(exc: BaseException) -> str:
    """One line saying what went wrong: the innermost cause's text, and for a missing
    file its path and what to check."""
    while exc.__cause__ is not None and type(exc.__cause__) is type(exc):
        exc = exc.__cause__  # dask re-raises a stage's error with its own preamble
    text = str(exc).strip()
    path = getattr(exc, "filename", None) or (text if text and not any(c.isspace() for c in text)
                                               else None)
    if isinstance(exc, FileNotFoundError) and path:
        return f"no such file or directory: {path} (check the path)"
    return "; ".join(ln.strip() for ln in text.splitlines() if ln.strip()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", False):
        print(f"legodask {args.command}: not available in this version", file=sys.stderr)
        return 2
    try:
        run = None if args.command in READ_ONLY else getattr(args, "run", None)
        setup_logging(args.verbose, run, create=args.command not in REPORTS)
        module = importlib.import_module(args._module)
        if not args._clustered:
            return int(module.command(args) or 0)
        from .cluster import connect

        with connect(args.scheduler, args.workers, args.threads, args.memory_limit, args.gpus,
                     dashboard_address=args.dashboard_address):
            return int(module.command(args) or 0)
    except Exception as exc:  # every command's failure is one line; -v shows the traceback
        if args.verbose:
            raise
        print(f"legodask {args.command}: error: {message(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
