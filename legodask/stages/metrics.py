"""``legodask metrics``: the paper's counts for a run (Table IV), and with
``--compare`` the overlap between runs (Table III); the queries are
``analysis.metrics``."""

from __future__ import annotations

import argparse

from ..crystal import fingerprint as F
from .. import schema as S
from ..analysis.metrics import WINDOW


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--window", type=float, default=WINDOW,
                   help="eV/atom above the ground state counted as low energy")
    p.add_argument("--matcher", choices=F.MATCHERS, default="env",
                   help="fine comparison for n_train and overlaps")
    p.add_argument("--energy-table", default=S.RANKED,
                   help=f"table with the {S.E_ABOVE}<model> columns")
    p.add_argument("--compare", action="append", default=[],
                   help="another run: print the overlap matrix (Table III) with it "
                        "(repeatable)")


def command(args: argparse.Namespace) -> int:
    from ..analysis.metrics import compute_metrics, overlap_matrix, table_iv, write_metrics
    from ..store import Run

    run = Run(args.run, create=False)
    metrics = compute_metrics(run, args.window, args.matcher, args.energy_table)
    if args.compare:
        train = run.path if S.INGESTED in run.tables() else None
        mat = overlap_matrix([run.path, *args.compare], train, args.matcher)
        metrics["overlap"] = mat.to_dict()
        print("Shared unique crystals (Table III):")
        print(mat.to_string())
    path = write_metrics(run, metrics)
    print(table_iv(metrics, run.path.name))
    for note in metrics["notes"]:
        print(f"note: {note}")
    print(f"wrote {path}")
    return 0
