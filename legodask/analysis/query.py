"""SQL over a run: DuckDB with one view per Parquet table (``samples``, ``ranked``, ...).

DuckDB reads the partition files directly and streams them, so a query over a
table of millions of rows needs memory for its result, not for the table.  A query
is one SELECT statement and reaches the run's tables and nothing else (``connect``):
a run directory may come from someone else, and ``legodask query`` must not read or
write other files on their behalf.  ``query``'s ``out`` is written here, from the
result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from itertools import takewhile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..store import Run

BATCH_ROWS = 100_000  # rows of a query's result held in memory at a time


def sql_list(files: list[Path]) -> str:
    """A list of paths as a DuckDB literal."""
    return "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"


def connect(run: Run, extra: Mapping[str, Sequence[Path]] | None = None) -> Any:
    """An in-memory DuckDB connection with a view named after each of the run's tables
    (and each of ``extra``'s, over its part files: a table of another folder), that
    reaches nothing else: the views' partition files are the only files it may
    open (no other file read or written, no extension installed or loaded, no Python
    variable scanned), and its configuration is locked so that SQL cannot undo that."""
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False})
    allowed: list[str] = []
    parts = {t: run.part_files(t) for t in run.tables()} | dict(extra or {})
    for table, part_files in parts.items():
        files = [f.resolve() for f in part_files]
        if files:
            con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM '
                        f"read_parquet({sql_list(files)}, union_by_name=true)")
            allowed += map(str, files)
    con.execute(f"SET allowed_paths = {sql_list(allowed)}")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def select_statement(sql: str) -> str:
    """``sql`` when it is exactly one SELECT statement (``WITH``, ``FROM t``,
    ``DESCRIBE t`` and the like included), else a ``ValueError`` saying what it is."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ValueError(f"the SQL does not parse: {reason(exc)}") from exc
    if len(statements) != 1:
        raise ValueError(f"give one SQL statement, not {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise ValueError(f"only a query (SELECT) may run over a run's tables, not a "
                         f"{statements[0].type.name} statement")
    return statements[0].query


def condition(where: str) -> str:
    """A ``--where`` condition as DuckDB renders it after parsing it as one SQL
    expression, so that it cannot end the statement it is put into."""
    import duckdb

    try:
        return str(duckdb.SQLExpression(where))
    except duckdb.Error as exc:
        raise ValueError(f"--where is not one SQL condition: {reason(exc)}") from exc


def reason(exc: Exception) -> str:
    """A DuckDB error in one line, without the statement and caret it ends with."""
    lines = takewhile(lambda ln: not ln.startswith("LINE "), map(str.strip, str(exc).splitlines()))
    return "; ".join(ln for ln in lines if ln)


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
    """Run ``sql``, one SELECT statement over the run's tables; write the whole result
    to ``out`` (``.parquet``, else CSV; streamed in batches) when given, and return at
    most ``max_rows`` rows."""
    import duckdb

    con = connect(run)
    try:
        reader = con.sql(select_statement(sql)).to_arrow_reader(BATCH_ROWS)
    except duckdb.Error as exc:
        raise ValueError(f"the query failed: {reason(exc)}") from exc
    head: list[pa.RecordBatch] = []
    shown = 0
    with contextlib.ExitStack() as stack:
        write = None if out is None else _writer(Path(out), reader.schema, stack)
        for batch in reader:
            if shown < max_rows:
                head.append(batch.slice(0, max_rows - shown))
                shown += len(head[-1])
            if write is not None:
                write(batch)
            elif shown >= max_rows:
                break
    return pa.Table.from_batches(head, reader.schema).to_pandas()


def _writer(out: Path, schema: pa.Schema,
            stack: contextlib.ExitStack) -> Callable[[pa.RecordBatch], None]:
    """A function that appends a batch of a result to ``out``: Parquet for a
    ``.parquet`` name, else CSV with a header."""
    if out.suffix == ".parquet":
        return stack.enter_context(pq.ParquetWriter(out, schema)).write_batch
    f = stack.enter_context(out.open("w", newline=""))
    pd.DataFrame(columns=schema.names).to_csv(f, index=False)
    return lambda batch: batch.to_pandas().to_csv(f, header=False, index=False)
