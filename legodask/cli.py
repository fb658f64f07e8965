"""The ``legodask`` command line.

Its commands are the registry ``legodask.stages.STAGES``; a command's module
(``legodask.stages.<name>``, with ``add_arguments(parser)`` and ``command(args)``)
is imported only when that command runs.  Commands that compute run inside
``cluster.connect`` (a LocalCluster unless ``--scheduler`` is given).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Sequence

from .cluster import add_cluster_arguments
from .stages import STAGES


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The command line; only ``commands`` (default: all) get their options, so that
    a command imports its own module and no other."""
    parser = argparse.ArgumentParser(
        prog="legodask", description="Crystal structures generated towards a target local "
        "environment (LEGO-xtal), stage by stage over Parquet tables on Dask.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = set(STAGES) if commands is None else set(commands)
    for name, stage in STAGES.items():
        p = sub.add_parser(name, help=stage.help, description=stage.help)
        if name in wanted:
            stage.load().add_arguments(p)
            if stage.cluster:
                add_cluster_arguments(p)
    return parser


def setup_logging(verbose: bool, run_dir: str | None = None, create: bool = True) -> None:
    """Log legodask's messages to stderr and, for a run, to ``RUN/logs/legodask.log``
    (making the run when ``create``); a run whose log cannot be written is an error
    (``PermissionError``) naming it."""
    logger = logging.getLogger("legodask")
    logger.setLevel(logging.DEBUG)           # the run's log has the details ...
    logger.handlers.clear()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.INFO)  # ... the terminal a line a step
    handlers: list[logging.Handler] = [console]
    if run_dir:
        from .store import Run

        run = Run(run_dir, create=create)
        try:
            handlers.append(logging.FileHandler(run.log_file))
        except OSError as exc:
            raise PermissionError(f"cannot write to the run {run_dir} ({exc.strerror or exc}): "
                                  f"this command writes into it; use a run you may write to, "
                                  f"or copy it") from exc
    handlers[0].setFormatter(_Console())
    for h in handlers[1:]:
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for h in handlers:
        logger.addHandler(h)


class _Console(logging.Formatter):
    """The terminal's lines: a message as it is, a warning or an error named as such."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


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
    if type(exc).__name__ == "KilledWorker":   # distributed's: a task's workers all died
        return ("a task's worker process died every time it ran the task, most often out of "
                "memory: give workers more (--memory-limit, or fewer --workers) or make "
                "partitions smaller, then run the command again (finished partitions are "
                "kept)")
    return "; ".join(ln.strip() for ln in text.splitlines() if ln.strip()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in STAGES), None)
    args = build_parser([command] if command else []).parse_args(argv)
    stage = STAGES[args.command]
    try:
        run = getattr(args, "run", None) if stage.access != "read" else None
        # only a stage that reads nothing from a run may make it (ingest, known, decode)
        setup_logging(args.verbose, run, create=stage.access == "write" and not stage.reads)
        module = stage.load()
        if not stage.cluster:
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
