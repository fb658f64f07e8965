"""``legodask ingest``: known structures into a run's ingested table (the kernel is
``legodask.sources.ingest.read_items``), with the training filter's verdict."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import dask
import pandas as pd

from . import add_overwrite
from .. import schema as S
from ..sources.ingest import TrainingFilter, read_items
from ..sources.readers import db_columns, list_items, read_table
from ..sources.sacada import SACADA_ENV, sacada_db
from ..store import Run


def ingest(run: Run, source: str | os.PathLike, symprec: float = 1e-3,
           filt: TrainingFilter = TrainingFilter(), element: str = "C",
           items_per_task: int = 16, table: str = S.INGESTED, min_distance: float = 0.6,
           overwrite: bool = False) -> pd.DataFrame:
    """Read ``source`` into ``RUN/<table>.parquet``; return a summary of what the
    training filter kept and dropped, per reason.  Rows get decoding's checks (atoms
    closer than ``min_distance`` Å make a row invalid)."""
    items = list_items(source)
    name = Path(source).name
    if items[0].kind == "table":
        parts = [dask.delayed(read_table)(items[0].path, element, min_distance)]
    else:
        chunks = [items[i:i + items_per_task] for i in range(0, len(items), items_per_task)]
        parts = [dask.delayed(read_items)(c, symprec, name, min_distance) for c in chunks]
    parts = [dask.delayed(filt.apply)(p) for p in parts]
    # The source's own columns are known only once read: the first part is read
    # here and gives the meta; a db's key-value columns are scanned from all rows.
    first = parts[0].compute()
    meta = first.iloc[:0].copy()
    for col, dtype in db_columns(items).items():
        if col not in meta:
            meta[col] = pd.Series(dtype=dtype)
    parts[0] = dask.delayed(first)
    run.write(table, parts, meta, desc="ingest", source=str(source), overwrite=overwrite,
              symprec=symprec, element=element, items_per_task=items_per_task,
              min_distance=min_distance, filter=dataclasses.asdict(filt))
    from ..cluster import compute

    reasons = run.read(table, columns=[S.FILTER_REASON])[S.FILTER_REASON]
    (counts,) = compute([reasons.fillna("kept").to_frame().groupby(S.FILTER_REASON).size()])
    return counts.rename("rows").to_frame()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", default=None,
                   help="ASE db, CIF file or folder, extxyz, CSV or Parquet "
                        f"(default: the SACADA sp2 training set, ${SACADA_ENV} or fetched)")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--symprec", type=float, default=1e-3, help="spglib tolerance (Å)")
    p.add_argument("--max-atoms", type=int, default=500)
    p.add_argument("--max-sites", type=int, default=S.MAX_SITES)
    p.add_argument("--max-dof", type=int, default=24)
    p.add_argument("--element", default="C", help="element of reference-layout CSV rows")
    p.add_argument("--table", default=S.INGESTED, help="output table name")
    p.add_argument("--train-elements", default="C",
                   help="comma-separated elements the models learn; rows with others "
                        "get train = false")
    p.add_argument("--min-distance", type=float, default=0.6,
                   help="atoms closer than this (Å) make a row invalid")
    add_overwrite(p)


def command(args: argparse.Namespace) -> int:
    source = args.source or sacada_db()
    elements = tuple(e.strip() for e in args.train_elements.split(",") if e.strip())
    summary = ingest(Run(args.run), source, args.symprec,
                     TrainingFilter(args.max_atoms, args.max_sites, args.max_dof, elements),
                     args.element, table=args.table, min_distance=args.min_distance,
                     overwrite=args.overwrite)
    print(summary.to_string())
    return 0
