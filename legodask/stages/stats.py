"""``legodask stats``: summaries of a table against its training data and the
paper's numbers, written beside the run's tables (the reductions: ``analysis.stats``)."""

from __future__ import annotations

import argparse
from typing import Any

from .. import schema as S
from .. import store
from ..analysis.stats import TRAINING_OF, Tolerance, format_stats, plot_marginals, table_stats
from ..store import Run


def stats_stage(run: Run, table: str = S.SAMPLES, training: str | None = None,
                tol: Tolerance = Tolerance(), pyxtal_rows: int = 2000) -> dict[str, Any]:
    """Compute the summary of ``table`` (against ``training``, by default the table
    it was made from), and write it as JSON and its cell marginals as a PNG."""
    if training is None:
        training = next((t for t in TRAINING_OF.get(table, ()) if t in run.tables()), None)
    stats = table_stats(run, table, training, tol, pyxtal_rows)
    store.write_json(run.file(store.stats_file(table, "json")), stats)
    plot_marginals(stats, run.file(store.stats_file(table, "png")))
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory")
    parser.add_argument("--table", default=S.SAMPLES,
                        help=f"{S.SAMPLES} | {S.AUGMENTED} | {S.INGESTED} | ...")
    parser.add_argument("--training", default=None,
                        help=f"table to compare with (default: {S.AUGMENTED}, "
                             f"else {S.INGESTED})")
    parser.add_argument("--length-tol", type=float, default=Tolerance.length, help="Å")
    parser.add_argument("--angle-tol", type=float, default=Tolerance.angle, help="degrees")
    parser.add_argument("--coord-tol", type=float, default=Tolerance.coord, help="fractional")
    parser.add_argument("--pyxtal-rows", type=int, default=2000,
                        help="rows also judged by pyxtal's decoder, the paper's validity (0: none)")


def command(args: argparse.Namespace) -> int:
    tol = Tolerance(args.length_tol, args.angle_tol, args.coord_tol)
    stats = stats_stage(Run(args.run, create=False), args.table, args.training, tol,
                        args.pyxtal_rows)
    print(format_stats(stats))
    return 0
