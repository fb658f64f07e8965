"""``legodask decode``: raw rows (generated, or from a file) -> decoded rows.

The per-partition kernel is ``crystal.frame.decode_frame``; this module only maps it
over a table of the run, or over an external Parquet/CSV file in the table's layout or
the reference implementation's (``legodask.sources.layouts``), and writes the result.
Every row gets an id: its own, else ``<input name>-<row number>``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from . import add_overwrite
from .. import schema as S
from ..crystal.frame import decode_frame
from ..sources import layouts
from ..store import Run, StageResult

log = logging.getLogger("legodask")


def read_input(run: Run, source: str, layout: str = layouts.AUTO, element: str | None = None
               ) -> tuple[dd.DataFrame, layouts.Layout | None]:
    """A run's table by name (its rows as they are, layout ``None``), or a Parquet/CSV
    file and the layout it is read in."""
    p = Path(source)
    if not p.exists():
        if run.table_path(source).exists():
            return run.read(source), None
        raise FileNotFoundError(f"{source}: no such file, and no table {source!r} in {run.path}")
    if p.is_file() and p.suffix not in (".csv", ".parquet"):
        raise ValueError(f"{p}: expected a .csv or .parquet file, or a table of the run")
    columns = layouts.read_header(p)
    lay = layouts.choose(columns, layout, element, where=str(p))
    if p.suffix == ".csv":
        return dd.read_csv(p, blocksize="16MB", **layouts.csv_options(p, columns, lay)), lay
    return dd.read_parquet(str(p)), lay


def decode_part(df: pd.DataFrame, layout: layouts.Layout | None, name: str, offset: int,
                tol: float, min_distance: float, element: str | None) -> pd.DataFrame:
    """The kernel: rows ``offset``, ... of input ``name`` read in ``layout``, with ids,
    decoded."""
    if layout is not None:
        df = layouts.to_table(df, layout)
    return decode_frame(layouts.with_ids(df, name, offset), tol=tol,
                              min_distance=min_distance, default_element=element)


def decode(run: Run, source: str, output: str = S.DECODED, tol: float = 0.5,
           min_distance: float = 0.6, element: str | None = None,
           layout: str = layouts.AUTO, overwrite: bool = False) -> StageResult:
    """Decode every row of ``source`` into ``RUN/<output>.parquet``."""
    from ..cluster import compute

    ddf, lay = read_input(run, source, layout, element)
    if lay is not None:
        log.info("%s: read in %s", source, lay.describe())
    first = ddf._meta if lay is None else layouts.to_table(ddf._meta, lay)
    extra = {c: str(t) for c, t in first.dtypes.items() if c not in S.COLUMNS}
    meta = S.empty_frame(extra)
    parts = ddf.to_delayed()
    sizes = compute([dask.delayed(len)(p) for p in parts], desc="rows")
    offsets = np.cumsum([0, *sizes[:-1]]).tolist()
    name = Path(source).stem
    tasks = [dask.delayed(decode_part)(p, lay, name, int(o), tol, min_distance, element)
             for p, o in zip(parts, offsets)]
    return run.write(output, tasks, meta, desc="decode", source=str(source),
                     overwrite=overwrite, tol=tol, min_distance=min_distance,
                     element=element, layout=None if lay is None else lay.describe())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--input", required=True, help="a table of the run, or a Parquet/CSV path")
    p.add_argument("--output", default=S.DECODED, help="output table name")
    p.add_argument("--tol", type=float, default=0.5,
                   help="how far (Å) a site may lie from its Wyckoff position")
    p.add_argument("--min-distance", type=float, default=0.6,
                   help="atoms closer than this (Å) make a row invalid")
    p.add_argument("--element", default=None,
                   help="element of sites that name none (reference layout: default C)")
    p.add_argument("--layout", choices=layouts.LAYOUTS, default=layouts.AUTO,
                   help="columns of a file: the structure table's by name (table), "
                        "LEGO-xtal's with angles in radians (reference; by position when "
                        "the names are others), or recognised from the header (auto)")
    add_overwrite(p)


def command(args: argparse.Namespace) -> int:
    result = decode(Run(args.run), args.input, args.output, args.tol, args.min_distance,
                    args.element, args.layout, args.overwrite)
    print(result)
    return 0
