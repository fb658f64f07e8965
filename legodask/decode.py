"""``legodask decode``: raw rows (generated, or from a file) -> decoded rows.

The per-partition kernel is ``codec.decode_frame``; this module only maps it over
a table of the run, or over an external Parquet/CSV file, and writes the result.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import dask.dataframe as dd

from . import codec
from . import schema as S
from .store import Run, StageResult


def read_input(run: Run, source: str, element: str = "C") -> dd.DataFrame:
    """A run's table by name, or a Parquet/CSV path (reference 39-column CSV too)."""
    if not Path(source).exists() and run.table_path(source).exists():
        return run.read(source)
    p = Path(source)
    if p.suffix == ".csv":
        df = dd.read_csv(p, blocksize="16MB")
        if "spg" not in df.columns:
            df = df.map_partitions(codec.from_reference_layout, element=element)
        return df
    return dd.read_parquet(str(p))


def decode(run: Run, source: str, output: str = "decoded", tol: float = 0.5,
           min_distance: float = 0.6, element: str | None = None) -> StageResult:
    """Decode every row of ``source`` into ``RUN/<output>.parquet``."""
    ddf = read_input(run, source, element or "C")
    extra = {c: str(t) for c, t in ddf.dtypes.items() if c not in S.COLUMNS}
    meta = S.empty_frame(extra)
    kernel = functools.partial(codec.decode_frame, tol=tol, min_distance=min_distance,
                               default_element=element)
    parts = ddf.map_partitions(kernel, meta=meta).to_delayed()
    return run.write(output, parts, meta, desc="decode", input=str(source))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--input", required=True, help="a table of the run, or a Parquet/CSV path")
    p.add_argument("--output", default="decoded", help="output table name")
    p.add_argument("--tol", type=float, default=0.5,
                   help="how far (Å) a site may lie from its Wyckoff position")
    p.add_argument("--min-distance", type=float, default=0.6,
                   help="atoms closer than this (Å) make a row invalid")
    p.add_argument("--element", default=None, help="element of sites that name none")


def command(args: argparse.Namespace) -> int:
    result = decode(Run(args.run), args.input, args.output, args.tol, args.min_distance,
                    args.element)
    print(result)
    return 0
