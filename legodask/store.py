"""The run directory: one partitioned Parquet table per stage, written atomically.

Layout::

    RUN/<table>.parquet/part-00000.parquet   one file per partition
    RUN/<table>.parquet/_done.json           written when every partition is there
    RUN/models/<name>/                       trained models
    RUN/logs/legodask.log                    the run's log

A partition is written to a hidden temporary name and renamed into place, so a
file that exists is complete.  A stage that is rerun skips the partitions whose
files exist: a crash or a killed worker loses nothing and duplicates nothing.
Nothing but this module knows the file names in a run directory.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dask.delayed import Delayed

from . import schema as S

log = logging.getLogger("legodask")

_ARROW_OF = {
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "float32": pa.float32(), "float64": pa.float64(), "bool": pa.bool_(),
}


def arrow_schema(meta: pd.DataFrame) -> pa.Schema:
    """Arrow schema of a stage's ``meta``: structure columns keep the table's types,
    other object columns are strings."""
    known = {f.name: f.type for f in S.STRUCTURE_SCHEMA}
    fields = []
    for col, dtype in meta.dtypes.items():
        if col in known:
            fields.append(pa.field(col, known[col]))
        else:
            fields.append(pa.field(col, _ARROW_OF.get(str(dtype), pa.string())))
    return pa.schema(fields)


def write_frame(df: pd.DataFrame, path: Path, schema: pa.Schema) -> int:
    """Write one partition atomically (temporary name, then rename); return its rows."""
    df = df.reset_index(drop=True)
    for col in schema.names:
        if col not in df.columns:  # a column this partition never saw
            df[col] = None
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    table = table.replace_schema_metadata(None)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return len(df)


@dataclass
class StageResult:
    """What a stage wrote: partitions done now, skipped as already done, and rows."""

    table: str
    written: int
    skipped: int
    rows: int

    def __str__(self) -> str:
        return (f"{self.table}: {self.written} partitions written, "
                f"{self.skipped} already done, {self.rows} rows written now")


class Run:
    """A run directory: the stage tables of one run and what of them is done."""

    def __init__(self, path: str | os.PathLike, create: bool = True):
        """Open the run at ``path``, making the directory when ``create``; commands
        that only read pass ``create=False``, so that a mistyped path is an error
        (``FileNotFoundError``), not a new empty run."""
        self.path = Path(path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_dir():
            raise FileNotFoundError(f"no such run: {self.path} (check the path; a run "
                                    f"is made by the stage that writes it, e.g. ingest)")

    # -- names -------------------------------------------------------------
    def table_path(self, table: str) -> Path:
        return self.path / f"{table}.parquet"

    def part_path(self, table: str, i: int) -> Path:
        return self.table_path(table) / f"part-{i:05d}.parquet"

    def model_dir(self, name: str) -> Path:
        d = self.path / "models" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def file(self, name: str) -> Path:
        """A run-level file (``metrics.json``, ``report.html``, ``features.zarr``)."""
        return self.path / name

    @property
    def log_file(self) -> Path:
        d = self.path / "logs"
        d.mkdir(exist_ok=True)
        return d / "legodask.log"

    # -- state -------------------------------------------------------------
    def tables(self) -> list[str]:
        return sorted(p.name[: -len(".parquet")] for p in self.path.glob("*.parquet"))

    def done_parts(self, table: str) -> set[int]:
        d = self.table_path(table)
        if not d.is_dir():
            return set()
        return {int(p.stem.split("-")[1]) for p in d.glob("part-*.parquet")}

    def is_complete(self, table: str) -> bool:
        return (self.table_path(table) / "_done.json").exists()

    def info(self, table: str) -> dict[str, Any]:
        f = self.table_path(table) / "_done.json"
        return json.loads(f.read_text()) if f.exists() else {}

    def mark_complete(self, table: str, n_parts: int, **info: Any) -> None:
        f = self.table_path(table) / "_done.json"
        tmp = f.with_name(".done.tmp")
        tmp.write_text(json.dumps({"partitions": n_parts, **info}, indent=1))
        os.replace(tmp, f)

    def status(self) -> pd.DataFrame:
        """One line per table: partitions present, expected, complete, rows."""
        rows = []
        for t in self.tables():
            info = self.info(t)
            n_rows = sum(pq.ParquetFile(p).metadata.num_rows
                         for p in self.table_path(t).glob("part-*.parquet"))
            rows.append({"table": t, "partitions": len(self.done_parts(t)),
                         "expected": info.get("partitions"),
                         "complete": self.is_complete(t), "rows": n_rows})
        return pd.DataFrame(rows)

    # -- reading -----------------------------------------------------------
    def read(self, table: str, columns: list[str] | None = None) -> dd.DataFrame:
        """A stage's table as a dask DataFrame, one partition per file."""
        d = self.table_path(table)
        if not any(d.glob("part-*.parquet")):
            raise FileNotFoundError(f"table {table!r} has no partitions in {self.path}")
        _check_readable(d)
        return dd.read_parquet(str(d), columns=columns, split_row_groups=False,
                               aggregate_files=False)

    # -- writing -----------------------------------------------------------
    def write(self, table: str, parts: Sequence[Delayed], meta: pd.DataFrame,
              desc: str | None = None, **info: Any) -> StageResult:
        """Compute and write partitions ``parts[i]`` that are not done yet, then
        mark the table complete.  ``parts[i]`` produces a pandas frame like ``meta``."""
        out = self.table_path(table)
        out.mkdir(parents=True, exist_ok=True)
        schema = arrow_schema(meta)
        done = self.done_parts(table)
        todo = [i for i in range(len(parts)) if i not in done]
        tasks = [dask.delayed(write_frame)(parts[i], self.part_path(table, i), schema,
                                           dask_key_name=f"write-{table}-{i}-{uuid.uuid4().hex[:8]}")
                 for i in todo]
        from .cluster import compute

        rows = compute(tasks, desc=desc or table)
        self.mark_complete(table, len(parts), **info)
        result = StageResult(table, len(todo), len(done), int(sum(rows)))
        log.info("%s", result)
        return result

    def map_table(self, src: str, dst: str, kernel: Callable[..., pd.DataFrame],
                  meta: pd.DataFrame, desc: str | None = None,
                  annotations: dict[str, Any] | None = None, **kwargs: Any) -> StageResult:
        """Apply a per-partition ``kernel`` to table ``src`` and write table ``dst``."""
        ddf = self.read(src)
        with dask.annotate(**(annotations or {})):
            mapped = ddf.map_partitions(kernel, meta=meta, **kwargs)
        return self.write(dst, mapped.to_delayed(), meta, desc=desc or dst, source=src)

    def write_frame_table(self, table: str, df: pd.DataFrame, meta: pd.DataFrame | None = None,
                          rows_per_part: int = 50_000) -> StageResult:
        """Write a small in-memory frame (ingested structures) as a table."""
        meta = df.iloc[:0] if meta is None else meta
        n = max(1, -(-len(df) // rows_per_part))
        parts = [dask.delayed(df.iloc[i * rows_per_part:(i + 1) * rows_per_part])
                 for i in range(n)]
        return self.write(table, parts, meta)


def _check_readable(d: Path) -> None:
    """Fail with the file's name when a partition file is truncated or corrupt."""
    for p in sorted(d.glob("part-*.parquet")):
        try:
            pq.read_metadata(p)
        except Exception as exc:  # pyarrow raises several types for broken files
            raise OSError(f"partition file {p} is unreadable ({exc}); delete it and "
                          f"rerun the stage to rewrite it") from exc
