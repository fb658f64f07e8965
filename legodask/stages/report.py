"""``legodask report``: write the run's report page (plots and counts; the queries
and plots are ``analysis.report``)."""

from __future__ import annotations

import argparse

from ..analysis.metrics import WINDOW


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--window", type=float, default=WINDOW,
                   help="eV/atom window of low energy (when the metrics are computed)")
    p.add_argument("--model", help="energy model to plot (default: the last ranked)")


def command(args: argparse.Namespace) -> int:
    from .. import store
    from ..analysis.report import write_report

    run = store.Run(args.run, create=False)
    write_report(run, args.window, args.model)    # the counts are the metrics stage's output
    print(f"wrote {run.file(store.REPORT)}")
    return 0
