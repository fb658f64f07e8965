"""Readers: a source split into small items (a db row, a file, a frame, a table),
each read inside a task, and a CSV/Parquet table read in its layout."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import schema as S
from ..crystal.frame import decode_frame
from . import layouts

log = logging.getLogger("legodask")


@dataclass(frozen=True)
class Item:
    """One readable unit of a source: a db row, a file, a frame, a table."""

    kind: str          # "db", "cif", "extxyz", "table"
    path: str
    key: Any = None    # db id or frame index
    id: str = ""


def list_items(source: str | os.PathLike) -> list[Item]:
    """Split ``source`` into items without reading the structures."""
    p = Path(source)
    if p.is_dir():
        cifs = sorted(p.glob("*.cif"))
        if not cifs:
            raise ValueError(f"{p} holds no .cif files")
        return [Item("cif", str(f), None, f.stem) for f in cifs]
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".db":
        from ase.db import connect

        with connect(p) as db:
            ids = [r.id for r in db.select(include_data=False, columns=["id"])]
        return [Item("db", str(p), i, f"{p.stem}-{i}") for i in ids]
    if suffix == ".cif":
        return [Item("cif", str(p), None, p.stem)]
    if suffix in (".xyz", ".extxyz"):
        from ase.io import iread

        n = sum(1 for _ in iread(p, index=":", format="extxyz"))
        return [Item("extxyz", str(p), i, f"{p.stem}-{i}") for i in range(n)]
    if suffix in (".csv", ".parquet"):
        return [Item("table", str(p), None, p.stem)]
    raise ValueError(f"{p}: unknown source type {suffix!r} (expected .db, .cif, a folder of "
                     f"CIFs, .xyz/.extxyz, .csv or .parquet)")


_CLASHES = set(S.ALL_COLUMNS)   # a source never takes the name of a column a stage writes


def _extra(kvp: dict[str, Any]) -> dict[str, Any]:
    """A source's key-value data as columns (renamed ``src_<key>`` on a clash)."""
    out = {}
    for k, v in kvp.items():
        if isinstance(v, (np.generic,)):
            v = v.item()
        if not isinstance(v, (str, int, float, bool)):
            v = json.dumps(v, default=str)
        out[f"src_{k}" if k in _CLASHES else k] = v
    return out


def read_atoms(item: Item) -> tuple[Any, dict[str, Any]]:
    if item.kind == "db":
        from ase.db import connect

        with connect(item.path) as db:
            r = db.get(id=item.key)
        return r.toatoms(), _extra(dict(r.key_value_pairs))
    if item.kind == "cif":
        from ase.io import read

        atoms = read(item.path, format="cif")
        return atoms, {}
    from ase.io import read

    atoms = read(item.path, index=item.key, format="extxyz")
    kv = {k: v for k, v in atoms.info.items() if np.ndim(v) == 0}
    return atoms, _extra(kv)


def read_table(path: str, element: str = "C", min_distance: float = 0.6) -> pd.DataFrame:
    """A CSV/Parquet table in the table's own layout or the reference implementation's
    (``layouts.choose``), decoded; rows without an id get ``<file stem>-<row>``."""
    p = Path(path)
    columns = layouts.read_header(p)
    layout = layouts.choose(columns, element=element, where=str(p))
    log.info("%s: read in %s", p, layout.describe())
    df = pd.read_parquet(p) if p.suffix == ".parquet" else \
        pd.read_csv(p, **layouts.csv_options(p, columns, layout))
    df = layouts.with_ids(layouts.to_table(df, layout), p.stem, 0)
    df[S.SOURCE] = p.name
    return decode_frame(df, min_distance=min_distance)


def db_columns(items: list[Item]) -> dict[str, str]:
    """dtypes of the key-value columns of an ASE db source (empty for other kinds)."""
    if items[0].kind != "db":
        return {}
    from ase.db import connect

    cols: dict[str, str] = {}
    with connect(items[0].path) as db:
        for r in db.select(include_data=False):
            for k, v in _extra(dict(r.key_value_pairs)).items():
                kind = "float64" if isinstance(v, (int, float)) and not isinstance(v, bool) \
                    else "bool" if isinstance(v, bool) else "object"
                cols.setdefault(k, kind)
    return cols

