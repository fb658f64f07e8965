"""SQL over a run: DuckDB with one view per Parquet table (``samples``, ``ranked``, ...).

DuckDB reads the partition files directly and streams them, so a query over a
table of millions of rows needs memory for its result, not for the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from .store import Run


def table_files(run: Run, table: str) -> list[Path]:
    """The partition files of a run's table, in order."""
    return [run.part_path(table, i) for i in sorted(run.done_parts(table))]


def sql_list(files: list[Path]) -> str:
    """A list of paths as a DuckDB literal."""
    return "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"


def connect(run: Run) -> Any:
    """An in-memory DuckDB connection with a view named after each of the run's tables."""
    import duckdb

    con = duckdb.connect()
    for table in run.tables():
        files = table_files(run, table)
        if files:
            con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM '
                        f"read_parquet({sql_list(files)}, union_by_name=true)")
    return con


def has_column(con: Any, table: str, column: str) -> bool:
    """Whether a view of ``connect`` exists and has ``column``."""
    return column in columns(con, table)


def columns(con: Any, table: str) -> list[str]:
    """Column names of a view (empty when there is no such table)."""
    found = con.execute("SELECT column_name FROM information_schema.columns "
                        "WHERE table_name = ?", [table]).fetchall()
    return [c for (c,) in found]


def query(run: Run, sql: str, out: str | Path | None = None,
          max_rows: int = 50) -> pd.DataFrame:
    """Run ``sql``; write the whole result to ``out`` (``.csv`` or ``.parquet``,
    streamed by DuckDB) when given, and return at most ``max_rows`` rows."""
    con = connect(run)
    if out is not None:
        fmt = "PARQUET" if str(out).endswith(".parquet") else "CSV, HEADER"
        target = str(out).replace("'", "''")
        con.execute(f"COPY ({sql}) TO '{target}' (FORMAT {fmt})")
    return con.execute(f"SELECT * FROM ({sql}) LIMIT {int(max_rows)}").df()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory")
    p.add_argument("sql", help='SQL; each table is a view, e.g. "SELECT spg, count(*) '
                   'FROM samples GROUP BY spg"')
    p.add_argument("--out", help="write the whole result to FILE.csv or FILE.parquet")
    p.add_argument("--max-rows", type=int, default=50, help="rows to print")


def command(args: argparse.Namespace) -> int:
    run = Run(args.run)
    df = query(run, args.sql, args.out, args.max_rows)
    with pd.option_context("display.max_columns", 30, "display.width", 200):
        print(df.to_string(index=False))
    if args.out:
        print(f"wrote {args.out}")
    return 0
