"""``legodask query``: one SQL SELECT over a run's tables (``analysis.query``)."""

from __future__ import annotations

import argparse

from .. import schema as S


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory")
    p.add_argument("sql", help=f'SQL; each table is a view, e.g. "SELECT {S.SPG}, count(*) '
                   f'FROM {S.SAMPLES} GROUP BY {S.SPG}"')
    p.add_argument("--out", help="write the whole result to FILE.csv or FILE.parquet")
    p.add_argument("--max-rows", type=int, default=50, help="rows to print")


def command(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..analysis.query import query
    from ..store import Run

    df = query(Run(args.run, create=False), args.sql, args.out, args.max_rows)
    with pd.option_context("display.max_columns", 30, "display.width", 200):
        print(df.to_string(index=False))
    if args.out:
        print(f"wrote {args.out}")
    return 0
